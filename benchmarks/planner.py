"""What one LLM decision costs: input tokens (a real o200k tokenizer), requests, and how many decisions are
real code edits, at 10 and at 500 experiments.

A scripted researcher (testing/fakes/researcher.py) drives the real LLMPlanner (openai SDK, real HTTP to
testing/fakes/fake_openai.py) on a copy of the real trainer/train_gpt.py, the repository's battle plan,
tiers.toml and the shipped frontier snapshot. Every other decision it greps, views and edits the script
(some first tries drift and are corrected from the nearest region the tool shows) before launching; in
between it runs the queue's flags. The session's part is stood in for: each proposal gets a verdict
drawn at random and recorded in the ledger as the real loop would (runs, decision), the state digest is
built from that ledger by agent.state.build_state with the cost model's options, the research context
carries the tier's fidelity and projection (as LLMPlanner.from_env wires them for a session), and a
discarded edit is reverted.

Input tokens are counted on the exact request bodies the server received: every message's content and
tool calls (plus 4 tokens a message for the chat framing) and the tool schemas. Tools are plain by
default, as a local OpenAI-compatible server gets them, and counted as JSON (what chat templates such as
llama.cpp's paste into the prompt). --strict sends them as OpenAI gets them (strict, with the knob-name
enum in launch_local_sweep) and counts them as OpenAI's models read them: the TypeScript-like
`namespace functions { ... }` block of OpenAI's published harmony format (openai_tool_text below); the
same requests with the tools counted as JSON are reported beside it. With --tokenizer chars, 4
characters a token.

    python benchmarks/planner.py [--decisions 500] [--seed 0] [--strict] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.costs import options_for_session  # noqa: E402
from agent.fidelity import context_lines  # noqa: E402
from agent.llm_planner import LLMPlanner  # noqa: E402
from agent.planner import Budget  # noqa: E402
from agent.state import build_state  # noqa: E402
from memory.battle_plan import load_plan  # noqa: E402
from memory.frontier import diff, frontier_digest, shipped_snapshot  # noqa: E402
from memory.ledger import Ledger  # noqa: E402
from memory.records import DecisionRecord, NoiseRecord, RunRecord, RunResult  # noqa: E402
from memory.tiers import load_tiers  # noqa: E402
from memory.workspace import Workspace  # noqa: E402
from testing.fakes.fake_openai import FakeOpenAI  # noqa: E402
from testing.fakes.researcher import Researcher, trainer_ideas  # noqa: E402
from tools.context import ToolContext  # noqa: E402


def tokenizer(kind: str):
    """(name, count function). o200k_base from bpe-openai (ships the table: works offline)."""
    if kind in ("auto", "o200k"):
        try:
            import bpe_openai

            enc = bpe_openai.get_encoding("o200k_base")
            return "o200k_base (bpe-openai)", lambda text: len(enc.encode(text))
        except ImportError:
            if kind == "o200k":
                raise SystemExit("pip install bpe-openai (or --tokenizer chars)") from None
    return "4 characters a token", lambda text: len(text) // 4 + 1


def _ts_type(schema: dict[str, Any], depth: int) -> str:
    if "anyOf" in schema:
        return " | ".join(_ts_type(s, depth) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts_type({**schema, "type": k}, depth) for k in kind)
    if kind == "array":
        inner = _ts_type(schema.get("items", {}), depth)
        return f"Array<{inner}>" if " | " in inner else inner + "[]"
    if kind == "object":
        return "{\n" + _ts_fields(schema, depth + 1) + "\n" + "  " * depth + "}"
    return {"integer": "number"}.get(str(kind), str(kind or "any"))


def _ts_fields(schema: dict[str, Any], depth: int) -> str:
    required, pad, out = set(schema.get("required", [])), "  " * depth, []
    for name, prop in schema.get("properties", {}).items():
        if prop.get("description"):
            out.append(f"{pad}// {prop['description']}")
        out.append(f"{pad}{name}{'' if name in required else '?'}: {_ts_type(prop, depth)},")
    return "\n".join(out)


def openai_tool_text(tools: list[dict[str, Any]]) -> str:
    """The tools as OpenAI's models read them: a `namespace functions` block of TypeScript-like types, one
    `// description` line and one `type name = (_: {...}) => any;` per tool (the harmony format OpenAI
    published with gpt-oss). Property descriptions become comments; enums, unions and arrays are TS types."""
    parts = ["namespace functions {", ""]
    for t in tools:
        fn = t["function"]
        if fn.get("description"):
            parts.append(f"// {fn['description']}")
        parts += [f"type {fn['name']} = (_: {{\n{_ts_fields(fn.get('parameters', {}), 0)}\n}}) => any;", ""]
    return "\n".join([*parts, "} // namespace functions"])


def request_tokens(body: dict[str, Any], count, tools_as: str = "json") -> int:
    """Input tokens of one request; tools_as "openai" counts the schemas as OpenAI renders them."""
    n = 0
    for m in body.get("messages", []):
        n += 4 + count(str(m.get("content") or ""))
        if m.get("tool_calls"):
            n += count(json.dumps(m["tool_calls"]))
    tools = body.get("tools", [])
    if not tools:
        return n
    return n + count(openai_tool_text(tools) if tools_as == "openai" else json.dumps(tools))


class StandIn:
    """The session's bookkeeping around each proposal: a random verdict, the ledger, the revert."""

    def __init__(self, root: Path, seed: int):
        self.ws = Workspace.at(root)
        self.ws.script.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "trainer" / "train_gpt.py", self.ws.script)
        shutil.copy(ROOT / "battle_plan.md", self.ws.battle_plan)
        self.plan = load_plan(self.ws.battle_plan)
        tiers = load_tiers(ROOT / "tiers.toml")
        self.tier = tiers["cpu-smoke"]
        self.tiers = tiers
        self.ledger = Ledger(self.ws.ledger)
        self.ctx = ToolContext(ws=self.ws, ledger=self.ledger, session="bench", tier=self.tier, tiers=tiers)
        self.incumbent = self.ws.script.read_text()
        self.rng = np.random.default_rng(seed)
        queue = [q.technique for q in self.plan.queue]
        self.frontier = frontier_digest(diff(None, shipped_snapshot(), queue), max_chars=1500)
        self.ledger.append(
            NoiseRecord(
                session="bench",
                tier=self.tier.name,
                hardware="cpu",
                script_sha="s0",
                values=[2.41, 2.42, 2.40],
                std=0.004,
                mean=2.41,
            )
        )

    def state(self, k: int, total: int):
        records = self.ledger.records()
        return build_state(
            records=records,
            plan=self.plan,
            session="bench",
            tier=self.tier.name,
            hardware="cpu",
            script_sha="s0",
            budget_left=Budget(experiments=total - k),
            frontier=self.frontier,
            options=options_for_session(records, self.plan, self.tier, self.tiers),  # as the session's
            script_dirty=self.ws.script.read_text() != self.incumbent,
        )

    def verdict(self, k: int, spec) -> dict[str, Any]:
        outcome = str(self.rng.choice(["rejected", "inconclusive", "confirmed"], p=[0.6, 0.3, 0.1]))
        delta = float(self.rng.normal(-0.002 if outcome == "confirmed" else 0.001, 0.002))
        exp = f"e{k:03d}-{spec.name}"[:60]
        runs = [f"{exp}-s{s}" for s in range(3)]
        for s, run in enumerate(runs):
            self.ledger.append(
                RunRecord(
                    session="bench",
                    run_id=run,
                    experiment=exp,
                    candidate=spec.name,
                    technique=spec.technique,
                    tier=self.tier.name,
                    hardware="cpu",
                    seed=s,
                    script_sha="s1",
                    env=spec.env,
                    hypothesis=spec.hypothesis,
                    result=RunResult(status="ok", val_bpb=2.41 + delta),
                )
            )
        dec = DecisionRecord(
            session="bench",
            experiment=exp,
            candidate=spec.name,
            technique=spec.technique,
            hypothesis=spec.hypothesis,
            tier=self.tier.name,
            hardware="cpu",
            outcome=outcome,
            kept=outcome == "confirmed",
            delta=delta,
            ci_low=delta - 0.004,
            ci_high=delta + 0.004,
            p_value=float(self.rng.uniform(0.001, 0.5)),
            n_candidate=3,
            n_incumbent=3,
            noise_std=0.004,
            candidate_runs=runs,
            env=spec.env,
            script_sha="s1",
            planner="llm",
            reason="one-sided Welch test against the incumbent's runs",
        )
        self.ledger.append(dec)
        if dec.kept:
            self.incumbent = self.ws.script.read_text()
        else:  # the session reverts a discarded edit
            self.ws.script.write_text(self.incumbent)
        return dec.model_dump(exclude={"session", "at", "kind"})


def run(decisions: int, seed: int, count, strict: bool = False) -> list[dict[str, Any]]:
    rows = []
    model = Researcher(ideas=trainer_ideas(decisions), code_every=2, drift_every=3)
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(model) as fake:
        loop = StandIn(Path(tmp), seed)
        # as LLMPlanner.from_env builds it for a session: the tier's fidelity and projection in the context
        planner = LLMPlanner(
            "scripted-researcher",
            base_url=fake.base_url,
            max_retries=0,
            timeout_s=30,
            max_repeats=99,
            fidelity=context_lines,
            strict_tools=strict,
        )
        for k in range(decisions):
            before = len(fake.chat_requests())
            t0 = time.perf_counter()
            p = planner.propose(loop.state(k, decisions), loop.ctx)
            wall = time.perf_counter() - t0
            bodies = fake.chat_requests()[before:]
            if p.action == "stop":
                rows.append({"decision": k + 1, "stopped": p.reason})
                break
            edited = loop.ws.script.read_text() != loop.incumbent
            # strict tools go to OpenAI: counted as its models read them (plain: as JSON, and the same)
            tokens = [request_tokens(b, count, "openai" if strict else "json") for b in bodies]
            as_json = [request_tokens(b, count) for b in bodies]
            rows.append(
                {
                    "decision": k + 1,
                    "requests": len(bodies),
                    "input_tokens": sum(tokens),
                    "first_request_tokens": tokens[0] if tokens else 0,
                    "max_request_tokens": max(tokens or [0]),
                    "request_tokens": tokens,
                    "max_request_tokens_tools_as_json": max(as_json or [0]),
                    "code_edit": edited,
                    "fallback": p.reason.startswith("playbook fallback"),
                    "planner_s": wall,
                }
            )
            planner.observe(loop.verdict(k + 1, p.experiment))
    return rows


def summarize(rows: list[dict[str, Any]], lo: int, hi: int) -> dict[str, Any]:
    part = [r for r in rows if lo <= r["decision"] <= hi and "requests" in r]
    if not part:
        return {}
    edits = [r for r in part if r["code_edit"]]
    flags = [r for r in part if not r["code_edit"]]
    return {
        "decisions": len(part),
        "input_tokens_per_decision": statistics.fmean(r["input_tokens"] for r in part),
        "first_request_tokens": statistics.fmean(r["first_request_tokens"] for r in part),
        "p95_request_tokens": float(np.percentile([t for r in part for t in r["request_tokens"]], 95)),
        "max_request_tokens": max(r["max_request_tokens"] for r in part),
        "max_request_tokens_tools_as_json": max(r["max_request_tokens_tools_as_json"] for r in part),
        "input_tokens_per_flag_decision": statistics.fmean(r["input_tokens"] for r in flags)
        if flags
        else 0.0,
        "input_tokens_per_edit_decision": statistics.fmean(r["input_tokens"] for r in edits)
        if edits
        else 0.0,
        "requests_per_decision": statistics.fmean(r["requests"] for r in part),
        "code_edit_share": len(edits) / len(part),
        "fallbacks": sum(r["fallback"] for r in part),
        "planner_ms_per_decision": 1000 * statistics.fmean(r["planner_s"] for r in part),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", choices=["auto", "o200k", "chars"], default="auto")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="strict tool schemas, as sent to OpenAI (adds the knob-name enum to launch_local_sweep)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    name, count = tokenizer(args.tokenizer)
    rows = run(args.decisions, args.seed, count, strict=args.strict)
    n = len([r for r in rows if "requests" in r])
    report = {
        "tokenizer": name,
        "strict_tools": args.strict,
        "decisions_run": n,
        "stopped": next((r["stopped"] for r in rows if "stopped" in r), ""),
        "first_10": summarize(rows, 1, 10),
        f"last_10_of_{n}": summarize(rows, max(1, n - 9), n),
        "all": summarize(rows, 1, n),
        "session_input_tokens": sum(r.get("input_tokens", 0) for r in rows),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return report
    print(
        f"LLM planner, scripted researcher on the real trainer: {n} decisions, tokens by {name}"
        + (
            ", strict tool schemas (tools counted as OpenAI renders them)"
            if args.strict
            else ", tools counted as JSON"
        )
    )
    cols = ["first_10", f"last_10_of_{n}", "all"]
    print(f"{'':34s}" + "".join(f"{c:>16s}" for c in cols))
    for key in report["all"]:
        cells = []
        for c in cols:
            v = report[c].get(key, "")
            cells.append(f"{v:16.3g}" if isinstance(v, float) else f"{v!s:>16s}")
        print(f"{key:34s}{''.join(cells)}")
    print(f"session input tokens: {report['session_input_tokens']}")
    if report["stopped"]:
        print(f"stopped: {report['stopped']}")
    return report


if __name__ == "__main__":
    main()
