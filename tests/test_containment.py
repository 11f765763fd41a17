"""Containment end to end, on real trainer runs: what a run sees of our environment, and a score the
candidate cannot write (trusted totals, a trusted re-score of its artifact before any keep, quarantine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.experiment import ExperimentRunner
from agent.judge import Verdict
from agent.planner import ExperimentSpec, Proposal
from agent.progress import Progress
from memory import git_records
from memory.knobs import SAFE_RUNTIME_ENV, allowed_override_names
from memory.ledger import Ledger
from memory.records import EventRecord, NoiseRecord
from memory.tiers import load_tiers
from memory.workspace import Workspace
from testing.workspace import make_workspace
from tools import cleanroom, registry
from tools.context import ToolContext
from tools.rescore import check_totals, expected_totals, rescore_run, verify_before_keep
from tools.sweep import Candidate, SweepArgs, sweep
from tools.toolbox import load_tools

SECRETS = {
    "OPENAI_API_KEY": "sk-test-contain-0123456789",
    "RUNPOD_API_KEY": "rp-test-contain-42",
    "MY_CLOUD_TOKEN": "cloud-test-contain-7",
    "PYTHONPATH": "/tmp/planted",
}


@pytest.fixture(scope="module")
def honest(tmp_path_factory, tiny_dataset):
    """One real cpu-tiny run of the incumbent, swept while our own environment holds keys and strays."""
    ws = make_workspace(tmp_path_factory.mktemp("contain"), tiny_dataset)
    load_tools()
    w = Workspace.at(ws)
    tiers = load_tiers(w.tiers_file)
    ctx = ToolContext(
        ws=w,
        ledger=Ledger(w.ledger),
        session="s1",
        tier=tiers["cpu-tiny"],
        tiers=tiers,
        python=sys.executable,
    )
    git_records.start_session(ws, "s1")
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try:
        _, recs = sweep(
            SweepArgs(
                candidates=[Candidate(name="base", script_revision="incumbent")], seeds=[1], experiment="base"
            ),
            ctx,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert recs[0].result.status == "ok", recs[0].result.error
    return ctx, recs[0], w.script.read_text()


def test_env_json_holds_only_allow_listed_names_and_no_secret(honest):
    ctx, run, script = honest
    env = json.loads((ctx.ws.runs_dir / "s1" / run.run_id / "env.json").read_text())
    allowed = (
        set(allowed_override_names(script))
        | SAFE_RUNTIME_ENV
        | set(cleanroom.HOST_ENV)
        | set(cleanroom.ROOM_ENV)
        | {"DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "RUN_DIR", "SEED"}
    )
    assert set(env) <= allowed, set(env) - allowed
    assert not any(s in json.dumps(env) for s in SECRETS.values())
    assert env["HOME"].startswith(run.run_dir)


def test_the_isolation_in_force_is_in_the_ledger(honest):
    ctx, _, _ = honest
    events = [e for e in ctx.ledger.records(EventRecord) if e.event in ("cleanroom", "cleanroom_degraded")]
    assert len(events) == 1 and events[0].detail["mode"] == cleanroom.probe(sys.executable).mode


def test_trusted_totals_agree_with_an_honest_run(honest):
    ctx, run, script = honest
    env = json.loads((ctx.ws.runs_dir / "s1" / run.run_id / "env.json").read_text())
    assert expected_totals(env, script) == (run.result.val_tokens, run.result.val_bytes)
    assert check_totals(run.result, env, script, script, ctx.ws.runs_dir / "s1" / run.run_id).status == "ok"


@pytest.mark.parametrize(
    "field, value", [("val_bytes", 1), ("val_tokens", 7), ("bytes_model", 10), ("bytes_total", 15_000)]
)
def test_a_result_whose_totals_disagree_with_trusted_counts_is_invalid(honest, field, value):
    ctx, run, script = honest
    env = json.loads((ctx.ws.runs_dir / "s1" / run.run_id / "env.json").read_text())
    faked = run.result.model_copy(update={field: value})
    checked = check_totals(faked, env, script, script, ctx.ws.runs_dir / "s1" / run.run_id)
    assert checked.status == "invalid" and "trusted" in checked.error


def test_the_trusted_rescore_reproduces_an_honest_score_from_the_artifact(honest):
    ctx, run, script = honest
    got = rescore_run(run, script, script, sys.executable)  # env-only: no candidate code runs at all
    assert got.get("mode") == "incumbent-model", got
    assert got["val_bpb"] == pytest.approx(run.result.val_bpb, abs=1e-6)
    assert (got["tokens"], got["bytes"]) == (run.result.val_tokens, run.result.val_bytes)
    edited = script.replace("def rms_norm(", "# an honest script change\ndef rms_norm(", 1)
    got = rescore_run(run, edited, script, sys.executable)  # script change: its logits, our loss and bytes
    assert got.get("mode") == "candidate-logits", got
    assert got["val_bpb"] == pytest.approx(run.result.val_bpb, abs=1e-4)


def test_the_candidates_model_host_cannot_read_the_validation_data(honest):
    ctx, run, script = honest
    if not cleanroom.probe(sys.executable).read_only_fs:
        pytest.skip("this machine cannot give the model host a filesystem view of its own")
    env = json.loads((ctx.ws.runs_dir / "s1" / run.run_id / "env.json").read_text())
    val = os.path.join(env["DATA_PATH"], "fineweb_val_000000.bin")
    assert os.path.exists(val)
    looking = script.replace(  # a model that would look its targets up in the data it is scored on
        "def build_model(args: Hyperparameters, device: torch.device, bos_id: int = 1) -> GPT:\n",
        "def build_model(args: Hyperparameters, device: torch.device, bos_id: int = 1) -> GPT:\n"
        f"    assert not os.path.exists({val!r}), 'the validation data is readable'\n",
        1,
    )
    assert looking != script
    got = rescore_run(run, looking, script, sys.executable)
    assert got.get("mode") == "candidate-logits", got
    assert got["val_bpb"] == pytest.approx(run.result.val_bpb, abs=1e-4)


def test_a_model_that_peeks_at_its_targets_is_caught_by_the_causality_probe(honest):
    ctx, run, script = honest
    peeking = script.replace(
        "        z = self.project(ids).float()\n",
        "        z = self.project(ids).float()\n"
        "        z = z + 5.0 * F.one_hot(torch.roll(ids, -1, dims=1), z.shape[-1]).float()\n",
        1,
    )
    assert peeking != script
    got = rescore_run(run, peeking, script, sys.executable)
    assert "sees its targets" in got.get("error", ""), got


def test_a_run_reporting_a_better_score_than_its_artifact_is_invalid_and_never_kept(honest):
    ctx, run, script = honest
    cheat = run.model_copy(
        update={"result": run.result.model_copy(update={"val_bpb": run.result.val_bpb - 0.05})}
    )
    runner = ExperimentRunner(ctx, Progress.quiet())
    head = git_records.head_sha(ctx.ws.root)
    spec = ExperimentSpec(name="cheat", env={"MLP_ACT_SLOPE": "0.5"})
    verdict = Verdict(
        outcome="confirmed",
        need_more=False,
        delta=-0.05,
        ci_low=-0.06,
        ci_high=-0.04,
        p_value=1e-4,
        n_candidate=1,
        n_incumbent=1,
        noise_std=0.005,
        reason="the judge is fooled",
    )
    noise = NoiseRecord(
        session="s1",
        tier="cpu-tiny",
        hardware="x",
        script_sha="x",
        values=[run.result.val_bpb],
        std=0.005,
        mean=run.result.val_bpb,
    )
    out = runner.decide(
        spec,
        Proposal(action="experiment", experiment=spec),
        "test",
        "e001-cheat",
        [cheat],
        verdict,
        [run.result.val_bpb],
        [run.run_id],
        noise,
        script,
        script,
        {"MLP_ACT_SLOPE": "0.5"},
    )
    assert out["kept"] is False and out["outcome"] == "rejected" and "invalid" in out["reason"]

    def show(rev: str) -> str:
        return subprocess.run(
            ["git", "show", f"{rev}:incumbent.json"], cwd=ctx.ws.root, capture_output=True, text=True
        ).stdout

    assert "MLP_ACT_SLOPE" in show(out["git_ref"])  # the candidate is recorded on its own ref...
    assert "MLP_ACT_SLOPE" not in show("HEAD")  # ...and the branch's incumbent did not take it
    assert head != out["git_commit"]
    assert any(
        e.event == "run_invalid" and e.detail["run_id"] == run.run_id for e in ctx.ledger.records(EventRecord)
    )


def test_an_honest_confirmed_result_passes_the_keep_check(honest):
    ctx, run, script = honest
    ok, reason = verify_before_keep(ctx, [run], [run.result.val_bpb + 0.01], script, script, "confirmed")
    assert ok and reason == "confirmed"


@pytest.mark.parametrize("reported", [0.03, "quarter"])
def test_an_implausible_score_is_quarantined_before_any_rescore(honest, reported):
    ctx, run, script = honest
    value = 0.03 if reported == 0.03 else run.result.val_bpb * 0.7  # below the floor / far beyond any gain
    fake = run.model_copy(update={"result": run.result.model_copy(update={"val_bpb": value})})
    ok, reason = verify_before_keep(ctx, [fake], [run.result.val_bpb], script, script, "confirmed")
    assert not ok and reason.startswith("quarantined")
    assert ctx.ledger.records(EventRecord)[-1].event == "result_quarantined"


def test_a_planted_interpreter_variable_never_reaches_a_run(honest):
    ctx, _, _ = honest
    for name in ("PYTHONPATH", "LD_PRELOAD", "BASH_ENV", "PYTHONSTARTUP", "NOT_A_KNOB"):
        out = registry.call(
            "launch_local_sweep",
            {"candidates": [{"name": "x", "env": {name: "/tmp/planted"}}], "seeds": [2]},
            ctx,
        )
        assert not out.ok and name in out.error
    assert not any((ctx.ws.runs_dir / "s1").glob("adhoc-x*"))


@pytest.mark.parametrize(
    "tier, env",
    [
        ("cpu-tiny", {"VAL_MAX_TOKENS": "1024"}),  # scored on fewer tokens: not the same measurement
        ("cpu-tiny", {"MAX_WALLCLOCK_SECONDS": "3000"}),  # a bigger training budget
        ("cpu-tiny", {"ARTIFACT_CAP_BYTES": "99000000"}),
        ("cpu-smoke", {"ITERATIONS": "400"}),  # ten times the steps of a step-matched tier
        ("cpu-smoke", {"TRAIN_BATCH_TOKENS": "8192"}),  # four times the tokens per step
    ],
)
def test_an_override_cannot_buy_a_win_by_moving_the_tiers_budget_or_what_is_scored(honest, tier, env):
    ctx, _, _ = honest
    name = next(iter(env))
    out = registry.call(
        "launch_local_sweep",
        {"candidates": [{"name": "budget", "env": env}], "seeds": [2], "tier": tier},
        ctx,
    )
    assert not out.ok and "fixed by the tier" in out.error and name in out.error
    assert not any((ctx.ws.runs_dir / "s1").glob("adhoc-budget*"))


def test_the_tiers_own_value_and_a_time_capped_tiers_step_count_are_allowed():
    from memory.knobs import check_tier_fixed

    check_tier_fixed({"VAL_MAX_TOKENS": "4096"}, {"VAL_MAX_TOKENS": 4096}, step_matched=False)
    # on a wallclock tier the clock is the budget; ITERATIONS only shapes the schedule
    check_tier_fixed({"ITERATIONS": "9000"}, {"MAX_WALLCLOCK_SECONDS": 600}, step_matched=False)
    with pytest.raises(ValueError, match="ITERATIONS=9000"):
        check_tier_fixed({"ITERATIONS": "9000"}, {"ITERATIONS": 40}, step_matched=True)


def test_a_queue_item_that_moves_the_tiers_budget_is_refused_and_recorded(tmp_path):
    from agent.containment import QUEUE_REFUSED, screen_queue
    from memory.battle_plan import parse_plan

    root = Path(__file__).resolve().parents[1]
    tiers = load_tiers(root / "tiers.toml")
    plan = parse_plan(
        "# Plan\n\n## Queue\n- [ ] more_steps: ITERATIONS=400\n- [ ] leaky_relu2: MLP_ACT_SLOPE=0.5\n"
    )
    ledger = Ledger(tmp_path / "ledger.jsonl")
    script = (root / "trainer" / "train_gpt.py").read_text()
    left = screen_queue(plan, script, ledger, "s1", tier=tiers["cpu-smoke"])
    assert [q.technique for q in left.queue] == ["leaky_relu2"]
    (refusal,) = [e for e in ledger.records(EventRecord) if e.event == QUEUE_REFUSED]
    assert refusal.detail["technique"] == "more_steps" and "fixed by the tier" in refusal.detail["why"]
