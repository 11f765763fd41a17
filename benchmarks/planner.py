"""The LLM planner's tool loop on a simulated trainer: what the loop costs around the training runs.

Two scripted models drive the real LLMPlanner (openai SDK, real HTTP to testing/fakes/fake_openai.py on
127.0.0.1) through a stand-in session loop that runs each proposal on testing/simtrainer.py, judges
it with agent.judge.judge (A/A noise model, 2 seeds then one more while ambiguous), and keeps the
ledger, the state digest (agent.state.build_state) and the battle plan as the real loop does:

  oracle  knows the true effects: each decision records the last verdict as a finding, then sweeps
          the untested idea with the best true effect on the current stack; finishes when none helps
  naive   takes the queue in order, reads the last run's log before each sweep, and every third
          decision first sends a sweep with an invalid name (answered with a validation error)

Figures: decisions per hour of loop overhead (everything but the trainer: planner round trips, tool
calls, digest, judge, ledger), requests and tokens per decision (tokens as the fake server counts them,
4 characters a token, prompt + completion), and the share of wall time the trainer is busy, measured
with a sleeping trainer (--run-s) and projected for 20 s runs (cpu-smoke) and 600 s runs (8xH100) with
a model that answers instantly or in 3 s a request. The simulated trainer has no model latency: a real
LLM adds its own seconds per request (see the projection).

    python benchmarks/planner.py [--reps 3] [--ideas 12] [--budget 80] [--run-s 0.05] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.judge import judge, noise_model  # noqa: E402
from agent.llm_planner import LLMPlanner  # noqa: E402
from agent.planner import Budget, ExperimentSpec, Proposal  # noqa: E402
from agent.state import build_state  # noqa: E402
from memory.battle_plan import parse_plan  # noqa: E402
from memory.ledger import Ledger  # noqa: E402
from memory.records import DecisionRecord, NoiseRecord, RunRecord, RunResult  # noqa: E402
from memory.tiers import Tier  # noqa: E402
from memory.workspace import Workspace  # noqa: E402
from testing.fakes.fake_openai import FakeOpenAI, call, tool_reply  # noqa: E402
from testing.simtrainer import NOISE_1XH100, SimTrainer, make_scenario  # noqa: E402
from tools.context import ToolContext  # noqa: E402

SCRIPT = '''import os
# === PROTECTED: METRIC BEGIN ===
BPB = 1.0
# === PROTECTED: METRIC END ===
'''


def flag(tech: str) -> str:
    return tech.upper()


def plan_text(techniques: dict[str, float], rng: np.random.Generator) -> str:
    """A plan whose notes carry a noisy 'reported' delta, as challenge.md's PR figures do."""
    lines = ["# Battle plan (benchmark)", "", "## Directives",
             "- ideas with a larger reported delta first; a win must beat the measured noise", "", "## Queue"]
    for t, d in techniques.items():
        lines.append(f"- [ ] {t}: {flag(t)}=1 — reported {d + rng.normal(0, 0.002):+.4f} bpb on a proxy")
    lines += ["", "<!-- golf:begin confirmed -->", "<!-- golf:end confirmed -->",
              "<!-- golf:begin dead_ends -->", "<!-- golf:end dead_ends -->", ""]
    return "\n".join(lines)


# -- the scripted models ------------------------------------------------------------------------------

def _decision_view(body: dict) -> tuple[list[str], str, str | None]:
    """(tool names called in this decision so far, the newest verdict text, its tool_call_id)."""
    msgs = body["messages"]
    start = max(i for i, m in enumerate(msgs) if m["role"] == "user" and m["content"].startswith("Decision "))
    done = [c["function"]["name"] for m in msgs[start:] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    for m in reversed(msgs[:start]):
        if m["role"] == "tool" and "verdict" in m["content"]:
            return done, m["content"], m["tool_call_id"]
    return done, "", None


def _get(text: str, key: str) -> str | None:
    m = re.search(rf'"{key}":\[?"?([^",\]]+)', text)
    return m.group(1) if m else None


def sweep_args(tech: str, name: str | None = None) -> dict[str, Any]:
    return {"candidates": [{"name": name or tech, "env": {flag(tech): "1"}}], "seeds": [1, 2], "technique": tech,
            "hypothesis": f"{tech} lowers val_bpb on the current stack"}


def oracle_model(sim: SimTrainer):
    stack: set[str] = set()
    tested: set[str] = set()
    seen: set[str] = set()

    def respond(body: dict, n: int):
        done, verdict, vid = _decision_view(body)
        if vid and vid not in seen:
            seen.add(vid)
            if _get(verdict, "kept") == "true":
                stack.add(_get(verdict, "technique") or "")
        tech, outcome = _get(verdict, "technique"), _get(verdict, "outcome")
        if tech and outcome in ("confirmed", "rejected", "inconclusive") and "record_finding" not in done:
            return tool_reply(call("record_finding", {"technique": tech, "status": outcome, "note": "oracle"}))
        options = [(sim.effect(stack, t), t) for t in sim.techniques if t not in tested and t not in stack]
        best = min(options, default=(0.0, None))
        if best[1] is None or best[0] >= 0:
            return tool_reply(call("finish", {"reason": "no untested idea helps"}))
        tested.add(best[1])
        return tool_reply(call("launch_local_sweep", sweep_args(best[1])))

    return respond


def naive_model(queue: list[str]):
    order = list(queue)
    state = {"decision": 0, "bad_sent": False}

    def respond(body: dict, n: int):
        done, verdict, _ = _decision_view(body)
        if not done:
            state["decision"] += 1
            state["bad_sent"] = False
        run = _get(verdict, "candidate_runs")
        if run and "read_logs" not in done:
            return tool_reply(call("read_logs", {"run_id": run, "tail_lines": 5}))
        if not order:
            return tool_reply(call("finish", {"reason": "queue exhausted"}))
        if state["decision"] % 3 == 0 and not state["bad_sent"]:
            state["bad_sent"] = True
            return tool_reply(call("launch_local_sweep", sweep_args(order[0], name=f"Bad Name {order[0]}")))
        return tool_reply(call("launch_local_sweep", sweep_args(order.pop(0))))

    return respond


# -- the stand-in session loop ---------------------------------------------------------------------------

@dataclass
class Result:
    model: str
    decisions: int
    kept: int
    kept_real: int
    true_gain: float
    runs: int
    requests: int
    tokens: int
    wall_s: float
    busy_s: float
    planner_s: float
    stopped: str


class StandInLoop:
    """The session loop's steps with the simulated trainer in place of the subprocess sweep."""

    def __init__(self, root: Path, sim: SimTrainer, plan: str, *, run_s: float, budget_runs: int,
                 noise_runs: int = 3, seeds_initial: int = 2, seeds_max: int = 4, alpha: float = 0.05):
        self.ws = Workspace.at(root)
        self.ws.script.parent.mkdir(parents=True, exist_ok=True)
        self.ws.script.write_text(SCRIPT)
        self.ws.battle_plan.write_text(plan)
        self.plan = parse_plan(plan)
        self.ledger = Ledger(self.ws.ledger)
        self.tier = Tier(name="sim", hardware="sim", seeds_initial=seeds_initial, seeds_max=seeds_max,
                         noise_runs=noise_runs, alpha=alpha, typical_noise=sim.noise_std)
        self.ctx = ToolContext(ws=self.ws, ledger=self.ledger, session="bench", tier=self.tier,
                               tiers={"sim": self.tier})
        self.sim, self.run_s, self.budget_runs = sim, run_s, budget_runs
        self.stack: frozenset[str] = frozenset()
        self.env: dict[str, str] = {}
        self.incumbent: list[float] = []
        self.groups: list[list[float]] = []
        self.seed = 0
        self.busy_s = 0.0

    def run_one(self, stack: frozenset[str], env: dict[str, str], experiment: str, candidate: str,
                technique: str | None) -> RunRecord:
        t0 = time.perf_counter()
        value = self.sim.run(stack, self.seed)
        if self.run_s:
            time.sleep(self.run_s)
        self.busy_s += time.perf_counter() - t0
        rec = RunRecord(session="bench", run_id=f"{experiment}-s{self.seed}", experiment=experiment,
                        candidate=candidate, technique=technique, tier="sim", hardware="sim", seed=self.seed,
                        env=env, script_sha="sim", result=RunResult(status="ok", val_bpb=value))
        self.seed += 1
        self.ledger.append(rec)
        return rec

    def measure_noise(self) -> None:
        runs = [self.run_one(self.stack, self.env, "aa", "incumbent", None) for _ in range(self.tier.noise_runs)]
        self.incumbent = [r.result.val_bpb for r in runs]
        self.groups.append(list(self.incumbent))
        nm = noise_model(self.groups, self.tier.typical_noise, "sim", "sim")
        self.ledger.append(NoiseRecord(session="bench", tier="sim", hardware="sim", script_sha="sim", env=self.env,
                                       values=self.incumbent, std=nm.std, mean=float(np.mean(self.incumbent))))

    def experiment(self, spec: ExperimentSpec, proposal: Proposal, k: int, tally: dict[str, int]) -> dict:
        tech = spec.technique or spec.name
        if tech not in self.sim.techniques or tech in self.stack:
            return {"outcome": "refused", "reason": f"{tech} is unknown or already in the stack"}
        exp = f"e{k:03d}-{spec.name}"
        cand_stack, cand_env = self.stack | {tech}, self.env | spec.env
        nm = noise_model(self.groups, self.tier.typical_noise, "sim", "sim")
        runs = [self.run_one(cand_stack, cand_env, exp, spec.name, tech) for _ in range(self.tier.seeds_initial)]
        look = 1
        while True:
            v = judge(self.incumbent, [r.result.val_bpb for r in runs], alpha=self.tier.alpha, noise_std=nm.std,
                      noise_df=nm.df, seeds_max=self.tier.seeds_max, looks=look)
            if not v.need_more or self.sim.runs >= self.budget_runs:
                break
            runs.append(self.run_one(cand_stack, cand_env, exp, spec.name, tech))
            look += 1
        kept = v.outcome == "confirmed"
        dec = DecisionRecord(session="bench", experiment=exp, candidate=spec.name, technique=tech,
                             hypothesis=spec.hypothesis, tier="sim", hardware="sim", outcome=v.outcome, kept=kept,
                             delta=v.delta, ci_low=v.ci_low, ci_high=v.ci_high, p_value=v.p_value,
                             n_candidate=v.n_candidate, n_incumbent=v.n_incumbent, noise_std=nm.std,
                             candidate_runs=[r.run_id for r in runs], env=cand_env, script_sha="sim",
                             reason=v.reason, planner="llm", tokens_used=proposal.tokens_used)
        self.ledger.append(dec)
        if kept:
            tally["kept"] += 1
            tally["kept_real"] += self.sim.effect(self.stack, tech) < 0
            self.stack, self.env = cand_stack, cand_env
            self.incumbent = [r.result.val_bpb for r in runs]
            self.groups.append(list(self.incumbent))
        return dec.model_dump(exclude={"session", "at", "kind"})

    def run(self, planner: LLMPlanner, model: str) -> Result:
        t0 = time.perf_counter()
        self.measure_noise()
        tally = {"kept": 0, "kept_real": 0}
        decisions, tokens, planner_s, stopped = 0, 0, 0.0, "budget"
        while self.sim.runs + self.tier.seeds_initial <= self.budget_runs:
            state = build_state(records=self.ledger.records(), plan=self.plan, session="bench", tier="sim",
                                hardware="sim", script_sha="sim",
                                budget_left=Budget(experiments=(self.budget_runs - self.sim.runs) // 2))
            p0 = time.perf_counter()
            proposal = planner.propose(state, self.ctx)
            planner_s += time.perf_counter() - p0
            tokens += proposal.tokens_used
            if proposal.action == "stop":
                stopped = proposal.reason[:80]
                break
            decisions += 1
            planner.observe(self.experiment(proposal.experiment, proposal, decisions, tally))
        wall = time.perf_counter() - t0
        gain = self.sim.true_bpb(frozenset()) - self.sim.true_bpb(self.stack)
        return Result(model=model, decisions=decisions, kept=tally["kept"], kept_real=tally["kept_real"],
                      true_gain=gain, runs=self.sim.runs, requests=0, tokens=tokens, wall_s=wall,
                      busy_s=self.busy_s, planner_s=planner_s, stopped=stopped)


def one(model: str, seed: int, args: argparse.Namespace) -> Result:
    rng = np.random.default_rng(seed)
    techniques, interactions = make_scenario(args.ideas, rng)
    sim = SimTrainer(techniques, interactions, noise_std=args.noise, seed=seed)
    plan = plan_text(techniques, rng)
    script = oracle_model(sim) if model == "oracle" else naive_model(list(techniques))
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(script) as fake:
        loop = StandInLoop(Path(tmp), sim, plan, run_s=args.run_s, budget_runs=args.budget)
        planner = LLMPlanner("scripted-" + model, base_url=fake.base_url, max_retries=0, timeout_s=30,
                             max_repeats=99)
        res = loop.run(planner, model)
        res.requests = len(fake.chat_requests())
    return res


def summarize(results: list[Result], args: argparse.Namespace) -> dict[str, Any]:
    d = sum(r.decisions for r in results) or 1
    overhead = sum(r.wall_s - r.busy_s for r in results)
    per_decision = overhead / d
    runs_per_decision = sum(r.runs for r in results) / d
    req = sum(r.requests for r in results) / d
    out = {
        "decisions": d, "runs_per_decision": runs_per_decision, "requests_per_decision": req,
        "tokens_per_decision": sum(r.tokens for r in results) / d,
        "overhead_s_per_decision": per_decision,
        "planner_s_per_decision": sum(r.planner_s for r in results) / d,
        "decisions_per_hour_of_overhead": 3600 / per_decision if per_decision else float("inf"),
        "busy_share_measured": sum(r.busy_s for r in results) / sum(r.wall_s for r in results),
        "kept": sum(r.kept for r in results), "kept_real": sum(r.kept_real for r in results),
        "true_gain_mean": statistics.fmean(r.true_gain for r in results),
        "runs_mean": statistics.fmean(r.runs for r in results),
        "stopped": sorted({r.stopped for r in results}),
    }
    for run_s, label in ((20.0, "cpu_smoke_20s"), (600.0, "h100x8_600s")):
        for latency in (0.0, 3.0):
            work = runs_per_decision * run_s
            out[f"busy_share_{label}_latency{latency:g}s"] = work / (work + per_decision + req * latency)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="scenarios per model")
    ap.add_argument("--ideas", type=int, default=12)
    ap.add_argument("--budget", type=int, default=80, help="simulated runs per session")
    ap.add_argument("--run-s", type=float, default=0.05, help="seconds the simulated trainer sleeps per run")
    ap.add_argument("--noise", type=float, default=NOISE_1XH100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = {}
    for model in ("oracle", "naive"):
        results = [one(model, 1000 + rep, args) for rep in range(args.reps)]
        report[model] = summarize(results, args)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return report
    print(f"planner benchmark: {args.reps} scenarios x {args.ideas} ideas, {args.budget} runs each, "
          f"noise {args.noise}, simulated run {args.run_s} s")
    keys = ["decisions", "runs_per_decision", "requests_per_decision", "tokens_per_decision",
            "overhead_s_per_decision", "planner_s_per_decision", "decisions_per_hour_of_overhead",
            "busy_share_measured", "busy_share_cpu_smoke_20s_latency0s", "busy_share_cpu_smoke_20s_latency3s",
            "busy_share_h100x8_600s_latency0s", "busy_share_h100x8_600s_latency3s", "kept", "kept_real",
            "true_gain_mean", "runs_mean"]
    print(f"{'':40s}{'oracle':>14s}{'naive':>14s}")
    for k in keys:
        cells = []
        for model in ("oracle", "naive"):
            v = report[model][k]
            cells.append(f"{v:14.4g}" if isinstance(v, float) else f"{v:14}")
        print(f"{k:40s}{''.join(cells)}")
    for model in ("oracle", "naive"):
        print(f"{model} stopped: {'; '.join(report[model]['stopped'])}")
    return report


if __name__ == "__main__":
    main()
