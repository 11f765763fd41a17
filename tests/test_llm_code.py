"""The code interface: a planner can read trainer/train_gpt.py, edit it with feedback it can act on, and
launch the edit; every exported tool schema is one OpenAI accepts in strict mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.llm_planner import LLMPlanner
from memory.knobs import read_knobs
from memory.ledger import Ledger
from memory.tiers import Tier
from memory.workspace import Workspace
from testing.fakes.fake_openai import FakeOpenAI, call, tool_reply
from testing.fakes.researcher import CodeIdea, Researcher
from tests.test_llm_planner import state, user_prompt
from tools import registry
from tools.context import ToolContext
from tools.toolbox import load_tools

TRAINER = Path(__file__).resolve().parent.parent / "trainer" / "train_gpt.py"


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    load_tools()
    ws = Workspace.at(tmp_path)
    ws.script.parent.mkdir(parents=True)
    shutil.copy(TRAINER, ws.script)
    tier = Tier(name="cpu-tiny", hardware="cpu")
    return ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers={"cpu-tiny": tier})


def test_view_and_grep_answer_with_numbered_lines_of_the_working_script(ctx):
    lines = TRAINER.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines, 1) if ln.startswith("def mlp_activation"))
    found = registry.call("grep_script", {"pattern": r"def mlp_activation", "ignore_case": None}, ctx)
    assert (
        found.ok and found.result["matches"] == 1 and f"{at:5d}| def mlp_activation" in found.result["text"]
    )
    view = registry.call("view_script", {"start_line": at, "end_line": at + 1}, ctx)
    assert view.ok and view.result["shown"] == f"{at}-{at + 1}"
    assert view.result["text"].splitlines()[1] == f"{at + 1:5d}| {lines[at]}"
    big = registry.call("view_script", {"start_line": 1, "end_line": 5000}, ctx)
    assert big.result["shown"] == "1-120" and big.result["total_lines"] == len(lines)
    bad = registry.call("grep_script", {"pattern": "(unclosed", "ignore_case": None}, ctx)
    assert not bad.ok and "regular expression" in bad.error


def test_a_missed_edit_shows_the_nearest_region_to_copy_from(ctx):
    drifted = (
        "return (F.leaky_relu(x, slope) if slope else F.relu( x)).square()"  # indentation lost, a space added
    )
    out = registry.call(
        "edit_train_script", {"rationale": "r", "edits": [{"search": drifted, "replace": "x"}]}, ctx
    )
    assert not out.ok and "search text not found" in out.error
    region = out.error[out.error.index("nearest region") :]
    real = "    return (F.leaky_relu(x, slope) if slope else F.relu(x)).square()"
    assert real in region and "def mlp_activation" in region  # the line itself and its context, numbered
    assert ctx.ws.script.read_text() == TRAINER.read_text()


@pytest.mark.parametrize(
    "replace, expect",
    [
        ("    from memory.knobs import read_knobs\n    return x", "may not import memory.knobs"),
        ("    from . import helpers\n    return x", "may not import a relative import"),
        ("    return x\n" + "\n" * 400, "the budget is"),
        ("    return (x", "does not compile"),
    ],
)
def test_an_edited_script_must_compile_stay_one_file_and_fit_the_budget(ctx, replace, expect):
    search = "    return (F.leaky_relu(x, slope) if slope else F.relu(x)).square()"
    out = registry.call(
        "edit_train_script", {"rationale": "r", "edits": [{"search": search, "replace": replace}]}, ctx
    )
    assert not out.ok and expect in out.error
    assert ctx.ws.script.read_text() == TRAINER.read_text()


def parse_knob_list(system: str) -> dict[str, tuple[str | None, str]]:
    """The knob list as a model reads it: {full name: (default or None for 0, meaning)}. Lines are
    "NAME=default (meaning)" or "PREFIX_: A=1 (meaning), B (meaning)" (names A and B are PREFIX_A, PREFIX_B)."""
    import re

    out: dict[str, tuple[str | None, str]] = {}
    for line in system[system.index("Trainer knobs") :].splitlines()[1:]:
        m = re.match(r"^([A-Z][A-Z0-9]*_): (.*)$", line)
        prefix, body = (m.group(1), m.group(2)) if m else ("", line)
        items, depth, start = [], 0, 0
        for i, ch in enumerate(body):  # split at ", " outside parentheses, before the next name
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and body.startswith(", ", i) and re.match(r"[A-Z]", body[i + 2 : i + 3]):
                items.append(body[start:i])
                start = i + 2
        items.append(body[start:])
        for item in items:
            k = re.match(r"^([A-Z][A-Z0-9_]*)(?:=(.+?))?(?: \((.*)\))?$", item)
            assert k, f"unreadable knob entry {item!r} in {line!r}"
            out[prefix + k.group(1)] = (k.group(2), k.group(3) or "")
    return out


def test_the_knob_list_is_in_the_static_system_prompt(ctx):
    with FakeOpenAI(
        [tool_reply(call("finish", {"reason": "x"})), tool_reply(call("finish", {"reason": "y"}))]
    ) as fake:
        pl = LLMPlanner("m", base_url=fake.base_url, max_retries=0)
        pl.propose(state(), ctx)
        pl.propose(state(decisions_so_far=1), ctx)
    first, second = (b["messages"][0]["content"] for b in fake.chat_requests())
    assert first == second  # static: the provider can cache it
    from memory.knobs import HARNESS_ENV, RUN_SHAPE, TIER_FIXED

    listed = parse_knob_list(first)
    knobs = read_knobs(TRAINER.read_text())
    # every knob that changes what a run learns: the harness's, what the tier fixes and how the tier's
    # machine executes a run are not the model's
    assert set(listed) == {k.name for k in knobs} - HARNESS_ENV - TIER_FIXED - RUN_SHAPE
    for k in knobs:
        if k.name in HARNESS_ENV | TIER_FIXED | RUN_SHAPE:
            continue
        default, meaning = listed[k.name]
        if default is None:  # left out: the header says an omitted default is 0
            assert float(k.default) == 0, k
        else:
            assert k.default.split(" ")[0].strip("'")[:10] in default, (k, default)
        assert k.meaning.startswith(meaning.split(" ")[0]) or k.meaning.startswith("0 = off"), (k, meaning)
    assert listed["MLP_ACT_SLOPE"] == (None, "LeakyReLU slope")
    assert listed["TTT_LORA_RANK"][0] == "80" and listed["ROPE_DIMS"][1].startswith("rotary dims")


def test_a_scripted_model_views_the_script_edits_a_new_activation_and_launches_it(ctx):
    idea = CodeIdea(
        "act_silu2",
        r"def mlp_activation",
        r"^    return ",
        "    return F.silu(x).square()",
        "a smooth squared activation",
    )
    model = Researcher(ideas=[idea], code_every=1, drift_every=1, max_env_ideas=0)
    with FakeOpenAI(model) as fake:
        pl = LLMPlanner("m", base_url=fake.base_url, max_retries=0)
        p = pl.propose(state(), ctx)
        pl.observe(
            {
                "experiment": "e001-act_silu2",
                "outcome": "inconclusive",
                "kept": False,
                "delta": -0.0021,
                "p_value": 0.08,
                "n_candidate": 4,
                "candidate_runs": ["e001-s1", "e001-s2"],
            }
        )
        nxt = pl.propose(state(decisions_so_far=1), ctx)
    assert [name for name, _ in model.log] == [
        "grep_script",
        "view_script",
        "edit_train_script",
        "edit_train_script",
        "launch_local_sweep",
        "launch_local_sweep",
    ]
    assert p.action == "experiment" and p.experiment.name == "act_silu2" and p.experiment.env == {}
    edited = ctx.ws.script.read_text()
    assert "    return F.silu(x).square()" in edited and edited != TRAINER.read_text()
    compile(edited, "train_gpt.py", "exec")
    bodies = fake.chat_requests()
    assert "nearest region" in bodies[3]["messages"][-1]["content"]  # the drifted first try, answered
    prompt = user_prompt(bodies[-1])
    assert "d1 act_silu2 edit +1/-1 lines: a smooth squared activation -> see Last result" in prompt
    assert "inconclusive; delta -0.0021" in prompt[prompt.index("## Last result") :]
    assert nxt.action == "experiment" and nxt.experiment.name == "smear_gate"  # then the queue's flag idea


# -- strict schemas ----------------------------------------------------------------------------------------


def test_every_exported_tool_schema_is_in_openais_strict_subset(ctx):
    exported = registry.openai_schemas(strict=True)
    assert {t["function"]["name"] for t in exported} >= {
        "edit_train_script",
        "launch_local_sweep",
        "view_script",
        "grep_script",
        "query_findings",
        "record_finding",
        "read_logs",
    }
    with FakeOpenAI([tool_reply(call("finish", {"reason": "x"}))]) as fake:
        LLMPlanner("m", base_url=fake.base_url, max_retries=0, strict_tools=True).propose(state(), ctx)
    sent = fake.chat_requests()[0]["tools"]
    for t in exported + sent:
        problems = registry.strict_subset_problems(t["function"]["parameters"])
        assert problems == [], (t["function"]["name"], problems)
        assert t["function"]["strict"] is True and t["function"]["parameters"]["type"] == "object"
    text = json.dumps(exported + sent)
    for banned in ('"default"', '"minLength"', '"maxLength"', '"$ref"', '"$defs"', '"title"'):
        assert banned not in text

    # a nullable list or object is a union with null, never a type list: grammar builders (llama.cpp's)
    # read {"type": ["array", "null"]} as any array and would let a model send [1, 2] for the env pairs
    def shapes(node):
        if isinstance(node, dict):
            kind = node.get("type")
            if isinstance(kind, list):
                yield kind
            for v in node.values():
                yield from shapes(v)
        elif isinstance(node, list):
            for v in node:
                yield from shapes(v)

    assert not [k for k in shapes(exported + sent) if {"array", "object"} & set(k)]


def test_the_strict_subset_check_catches_what_openai_refuses():
    from tools.sweep import SweepArgs

    raw = SweepArgs.model_json_schema()  # pydantic's own: defaults, limits, optional fields, $refs
    problems = " ".join(registry.strict_subset_problems(raw))
    assert "'default'" in problems and "every property must be required" in problems and "'$defs'" in problems
    loose = {
        "type": "object",
        "properties": {"env": {"type": "object", "additionalProperties": {"type": "string"}}},
        "required": ["env"],
        "additionalProperties": False,
    }
    assert "additionalProperties must be false" in " ".join(registry.strict_subset_problems(loose))


def test_null_means_the_default_for_an_optional_field(ctx):
    out = registry.call(
        "query_findings", {"technique": None, "outcome": None, "tier": None, "newest": None}, ctx
    )
    assert out.ok and out.result == {"matches": 0, "rows": []}
    sweep = registry.call(
        "launch_local_sweep",
        {
            "candidates": [
                {"name": "a", "env": [{"name": "PYTHONPATH", "value": "/x"}], "script_revision": None}
            ],
            "seeds": [1],
            "tier": None,
            "experiment": None,
            "hypothesis": None,
            "technique": None,
        },
        ctx,
    )
    assert not sweep.ok and "PYTHONPATH" in sweep.error  # the pairs arrive as the env the allow-list checks


def test_query_findings_finds_every_past_verdict_by_technique_outcome_and_tier(ctx):
    from memory.records import DecisionRecord

    for i in range(60):
        ctx.ledger.append(
            DecisionRecord(
                session="s0",
                experiment=f"e{i:03d}",
                candidate=f"idea_{i}",
                technique="ema" if i % 20 == 0 else f"idea_{i}",
                tier="cpu-tiny",
                hardware="cpu",
                outcome="rejected" if i % 2 else "inconclusive",
                kept=False,
                delta=0.0012345678 * i,
                p_value=0.5,
                n_candidate=3,
            )
        )
    out = registry.call(
        "query_findings", {"technique": "ema", "outcome": None, "tier": "cpu-tiny", "newest": None}, ctx
    )
    assert out.ok and out.result["matches"] == 3
    assert out.result["rows"][0].startswith("e040 ema inconclusive d=0.0494 ")  # newest first, 3 digits
    rejected = registry.call(
        "query_findings", {"technique": None, "outcome": "rejected", "tier": None, "newest": 25}, ctx
    )
    assert rejected.result["matches"] == 30 and len(rejected.result["rows"]) == 25
