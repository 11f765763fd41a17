"""The typed tools: schemas, validation, and the refusals that keep a planner inside the rules."""

from __future__ import annotations

import json
import subprocess

import pytest

from memory.ledger import Ledger
from memory.records import DecisionRecord, FindingRecord, RunRecord, RunResult
from memory.tiers import Tier
from memory.workspace import Workspace
from tools import registry
from tools.context import ToolContext
from tools.edit_script import PROTECTED_BEGIN, PROTECTED_END
from tools.toolbox import load_tools

SCRIPT = f"""import math

LR = 0.04
WIDTH = 512

{PROTECTED_BEGIN}
def bpb(loss, tokens, nbytes):
    return loss / math.log(2) * tokens / nbytes
{PROTECTED_END}

def train():
    return LR * WIDTH
"""

PLAN = """# Plan

## Directives
- be careful

## Queue
- [ ] smear_gate: SMEAR_GATE=1 — cheap

<!-- golf:begin confirmed -->
<!-- golf:end confirmed -->
"""


@pytest.fixture()
def ctx(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "train_gpt.py").write_text(SCRIPT)
    (tmp_path / "battle_plan.md").write_text(PLAN)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
        cwd=tmp_path,
        check=True,
    )
    load_tools()
    ws = Workspace.at(tmp_path)
    tier = Tier(name="cpu-tiny", hardware="cpu")
    return ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers={"cpu-tiny": tier})


def test_every_tool_has_an_openai_schema_generated_from_its_model():
    load_tools()
    schemas = {s["function"]["name"]: s for s in registry.openai_schemas()}
    for name in ("edit_train_script", "launch_local_sweep", "read_logs", "record_finding"):
        params = schemas[name]["function"]["parameters"]
        assert params["type"] == "object" and params["properties"]
    # long limits are validated, not exported: llama.cpp cannot compile them into a grammar
    assert "maxLength" not in json.dumps(
        schemas["launch_local_sweep"]["function"]["parameters"]["properties"]["hypothesis"]
    )
    strict = registry.openai_schemas(["edit_train_script"], strict=True)[0]["function"]
    assert strict["strict"] is True
    assert strict["parameters"]["additionalProperties"] is False
    assert set(strict["parameters"]["required"]) == set(strict["parameters"]["properties"])


def test_invalid_arguments_come_back_as_readable_errors_not_crashes(ctx):
    out = registry.call("edit_train_script", "{not json", ctx)
    assert not out.ok and "not valid JSON" in out.error
    out = registry.call("edit_train_script", {"rationale": "x", "edits": []}, ctx)
    assert not out.ok and "edits" in out.error
    out = registry.call("no_such_tool", {}, ctx)
    assert not out.ok and "unknown tool" in out.error
    out = registry.call("read_logs", "x" * (registry.MAX_ARGUMENT_CHARS + 1), ctx)
    assert not out.ok and "limit" in out.error
    out = registry.call(
        "launch_local_sweep", {"candidates": [{"name": "a", "env": {"DATA_PATH": "/etc"}}], "seeds": [1]}, ctx
    )
    assert not out.ok and "DATA_PATH" in out.error


def test_edit_applies_exact_replacement_and_returns_the_diff(ctx):
    out = registry.call(
        "edit_train_script",
        {"rationale": "a higher LR", "edits": [{"search": "LR = 0.04", "replace": "LR = 0.06"}]},
        ctx,
    )
    assert out.ok, out.error
    assert "-LR = 0.04" in out.result["diff"] and "+LR = 0.06" in out.result["diff"]
    assert "LR = 0.06" in ctx.ws.script.read_text()


@pytest.mark.parametrize(
    "edit, expect",
    [
        ({"search": "LR = 0.99", "replace": "x"}, "not found"),
        ({"search": "return", "replace": "yield"}, "ambiguous"),
        ({"search": "WIDTH = 512", "replace": "WIDTH = (512"}, "does not compile"),
        ({"search": "loss / math.log(2)", "replace": "loss / math.log(2) * 0.5"}, "protected"),
        ({"search": PROTECTED_END, "replace": ""}, "protected"),
    ],
)
def test_bad_or_hostile_edits_are_refused_and_leave_the_script_untouched(ctx, edit, expect):
    before = ctx.ws.script.read_text()
    out = registry.call("edit_train_script", {"rationale": "r", "edits": [edit]}, ctx)
    assert not out.ok and expect in out.error
    assert ctx.ws.script.read_text() == before


def test_edits_outside_the_script_are_refused(ctx):
    for path in ("battle_plan.md", "../etc/passwd", "/tmp/x.py", "trainer/prepare_data.py"):
        out = registry.call(
            "edit_train_script",
            {"rationale": "r", "path": path, "edits": [{"search": "a", "replace": "b"}]},
            ctx,
        )
        assert not out.ok and "only trainer/train_gpt.py" in out.error


def test_read_logs_is_bounded_and_finds_runs_only_through_the_ledger(ctx, tmp_path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "stdout.log").write_text("\n".join(f"line {i} " + "x" * 300 for i in range(5000)))
    (run_dir / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": i, "train_loss": 5 - i / 100}) for i in range(200))
    )
    ctx.ledger.append(
        RunRecord(
            session="s1",
            run_id="r1",
            experiment="e1",
            candidate="c",
            tier="t",
            hardware="h",
            seed=1,
            script_sha="x",
            result=RunResult(status="ok", val_bpb=1.5),
            run_dir=str(run_dir),
        )
    )
    out = registry.call("read_logs", {"run_id": "r1", "tail_lines": 40}, ctx)
    assert out.ok
    assert len(out.text()) < 8000
    assert out.result["last_metrics"][-1]["step"] == 199
    assert not registry.call("read_logs", {"run_id": "../../etc/passwd"}, ctx).ok


def test_a_finding_cannot_be_confirmed_without_the_judges_decision(ctx):
    out = registry.call("record_finding", {"technique": "smear_gate", "status": "confirmed"}, ctx)
    assert not out.ok and "no decision" in out.error
    ctx.ledger.append(
        DecisionRecord(
            session="s1",
            experiment="e001-smear_gate",
            candidate="smear_gate",
            technique="smear_gate",
            tier="cpu-tiny",
            hardware="h",
            outcome="rejected",
            kept=False,
            delta=0.01,
            ci_low=0.001,
            ci_high=0.02,
            p_value=0.9,
        )
    )
    out = registry.call("record_finding", {"technique": "smear_gate", "status": "confirmed"}, ctx)
    assert not out.ok and "'rejected'" in out.error
    out = registry.call(
        "record_finding", {"technique": "smear_gate", "status": "rejected", "note": "worse"}, ctx
    )
    assert out.ok and out.result["delta"] == 0.01  # statistics copied from the decision, not the caller
    assert [f.status for f in ctx.ledger.records(FindingRecord)] == ["rejected"]
    plan = ctx.ws.battle_plan.read_text()
    dead_ends = plan.split("<!-- golf:begin dead_ends -->")[1].split("<!-- golf:end dead_ends -->")[0]
    assert "| smear_gate |" in dead_ends and "+0.0100" in dead_ends
    assert (
        "smear_gate"
        not in plan.split("<!-- golf:begin confirmed -->")[1].split("<!-- golf:end confirmed -->")[0]
    )
    assert "- be careful" in plan  # the human's part survives


def test_an_ablation_of_the_start_preset_is_written_as_what_the_technique_is_worth_here(tmp_path):
    import shutil
    from pathlib import Path

    from memory.records import EventRecord

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "trainer").mkdir()
    shutil.copy(root / "trainer" / "train_gpt.py", tmp_path / "trainer" / "train_gpt.py")
    shutil.copy(root / "presets.toml", tmp_path / "presets.toml")
    (tmp_path / "battle_plan.md").write_text(PLAN)
    load_tools()
    ws = Workspace.at(tmp_path)
    tier = Tier(name="cpu-smoke", hardware="cpu")
    ctx = ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers={"cpu-smoke": tier})
    inc_env = {
        "TTT_ENABLE": "1",
        "TTT_MODE": "lora",
        "NUM_LOOPS": "2",
        "PARALLEL_START": "8",
        "MATRIX_BITS": "6",
    }
    ctx.ledger.append(EventRecord(session="s1", event="start_preset", detail={"name": "frontier"}))
    ctx.ledger.append(
        RunRecord(
            session="s1",
            run_id="inc",
            experiment="aa",
            candidate="incumbent",
            tier="cpu-smoke",
            hardware="cpu",
            seed=1337,
            script_sha="s0",
            env=inc_env,
            result=RunResult(status="ok", val_bpb=3.6),
        )
    )

    def decide(name: str, change: dict[str, str], delta: float, lo: float, hi: float) -> None:
        ctx.ledger.append(
            DecisionRecord(
                session="s1",
                experiment=f"e-{name}",
                candidate=name,
                technique=name,
                tier="cpu-smoke",
                hardware="cpu",
                outcome="rejected",
                kept=False,
                delta=delta,
                ci_low=lo,
                ci_high=hi,
                p_value=0.99,
                n_candidate=2,
                incumbent_runs=["inc"],
                env=inc_env | change,  # a candidate's env holds the incumbent's as well
            )
        )
        assert registry.call("record_finding", {"technique": name, "status": "rejected"}, ctx).ok

    decide("no_ttt", {"TTT_ENABLE": "0"}, 0.026, 0.0158, 0.0362)  # switched back to the trainer's default
    decide("no_recurrence", {"NUM_LOOPS": "0"}, 0.005, -0.005, 0.015)
    decide("parallel_from_3", {"PARALLEL_START": "3"}, 0.0047, 0.0039, 0.0055)  # moved, not removed
    plan = ctx.ws.battle_plan.read_text()
    worth = plan.split("<!-- golf:begin preset_worth -->")[1].split("<!-- golf:end preset_worth -->")[0]
    rows = [r for r in worth.splitlines() if r.startswith("| no_") or r.startswith("| parallel")]
    assert rows == [
        "| no_ttt | TTT_ENABLE 1->0 | cpu-smoke | -0.0260 | [-0.0362, -0.0158] | 2 | helps here: removing it is worse |",
        "| no_recurrence | NUM_LOOPS 2->0 | cpu-smoke | -0.0050 | [-0.0150, +0.0050] | 2 | no effect shown here |",
    ]
    # all three stay dead ends as experiments; the block was appended under its heading for this plan
    assert "What the start preset's techniques are worth here" in plan and "| parallel_from_3 |" in plan
