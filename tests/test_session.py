"""The research loop end to end on the real trainer at the tiny CPU tier, and its recovery from SIGKILL."""

from __future__ import annotations

import json
import signal

import pytest

from agent.planner import Budget
from agent.playbook import PlaybookPlanner
from agent.progress import Progress
from agent.session import run_session
from memory.ledger import Ledger
from memory.records import DecisionRecord, EventRecord, NoiseRecord, RunRecord
from testing.invariants import check_records
from testing.workspace import git, golf, make_workspace


def test_a_session_tests_the_queue_records_every_experiment_and_keeps_only_judged_wins(
    tmp_path, tiny_dataset
):
    ws = make_workspace(tmp_path, tiny_dataset)
    summary = run_session(
        ws,
        planner=PlaybookPlanner(),
        tier="cpu-tiny",
        budget=Budget(experiments=4),
        session="e2e",
        progress=Progress.quiet(),
    )
    assert summary.decisions == 4
    ledger = check_records(ws, "e2e")
    decisions = ledger.records(DecisionRecord)
    # every untested queue item once (in queue or cost order), the banned one never
    by_tech = {d.technique: d for d in decisions}
    assert sorted(by_tech) == ["bad_lr", "leaky_relu2", "lzma", "mlp3x"]
    # a ruinous learning rate is never kept; on a CPU tier a training change the tier may not see is held as
    # "needs a GPU tier" instead of rejected (agent/fidelity.py), which depends on the pairs measured so far
    bad_lr = by_tech["bad_lr"]
    assert not bad_lr.kept and (
        bad_lr.outcome == "rejected"
        or (bad_lr.outcome == "inconclusive" and bad_lr.reason.startswith("needs a GPU tier"))
    ), (bad_lr.outcome, bad_lr.reason)
    # a compressor cannot move the score: matched seeds give identical bpb, and the verdict says why
    assert by_tech["lzma"].outcome == "rejected" and "bytes-only" in by_tech["lzma"].reason
    noise = ledger.records(NoiseRecord)
    assert noise and noise[0].std > 0 and len(noise[0].values) >= 2
    # both arms ran the same seeds, so the judge tested per-seed differences and recorded them
    runs = {r.run_id: r for r in ledger.records(RunRecord)}
    for d in decisions:
        if d.delta is None:
            continue
        assert d.test == "paired" and d.paired_noise is not None and d.paired_noise.std > 0
        cand = {runs[i].seed: runs[i].result.val_bpb for i in d.candidate_runs}
        inc = {runs[i].seed: runs[i].result.val_bpb for i in d.incumbent_runs}
        assert d.seed_diffs == pytest.approx([cand[s] - inc[s] for s in d.seeds])
    assert not any(r.candidate == "ttt_prescore" for r in ledger.records(RunRecord)), "a banned item ran"
    # git: one ref per experiment; kept ones are on the branch, discarded ones only under refs/golf
    branch_log = git(ws, "log", "--format=%H", "golf/e2e")
    for d in decisions:
        assert (d.git_commit in branch_log) == d.kept
        note = git(ws, "log", "-1", "--format=%B", d.git_commit)
        assert "Hypothesis:" in note and "Result:" in note and "Decision:" in note
    # the branch's script is the incumbent: the committed script equals the worktree's, and the branch's
    # incumbent.json holds the env of the last kept candidate (or none)
    assert git(ws, "show", "HEAD:trainer/train_gpt.py") == (ws / "trainer/train_gpt.py").read_text().rstrip(
        "\n"
    )
    kept = [d for d in decisions if d.kept]
    committed = git(ws, "show", "HEAD:incumbent.json") if kept else "{}"
    assert json.loads(committed).get("env", {}) == (kept[-1].env if kept else {})
    plan = (ws / "battle_plan.md").read_text()
    assert "- test the cheap flags first" in plan
    dead = plan.split("<!-- golf:begin dead_ends -->")[1].split("<!-- golf:end dead_ends -->")[0]
    assert "lzma" in dead and ("bad_lr" in dead) == (bad_lr.outcome == "rejected")
    assert "golf:begin queue_status" in plan
    assert summary.trainer_busy_s > 0


# a torn decision and a kill after the commit: tests/test_crash_safety.py
@pytest.mark.parametrize("point", ["during_run"])
def test_sigkill_at_any_point_then_resume_loses_nothing_and_records_nothing_twice(
    tmp_path, tiny_dataset, point
):
    ws = make_workspace(tmp_path, tiny_dataset)
    args = ["--tier", "cpu-tiny", "--experiments", "1", "--session", "crash", "--planner", "playbook"]
    died = golf(ws, "run", *args, env={"PGOLF_CRASH_AT": point})
    assert died.returncode == -signal.SIGKILL, died.stdout[-2000:] + died.stderr[-2000:]
    before = Ledger(ws / ".golf" / "ledger.jsonl").records()
    resumed = golf(ws, "resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    ledger = check_records(ws, "crash")
    after = ledger.records()
    assert after[: len(before)] == before, "resume rewrote what was recorded"
    assert len([d for d in ledger.records(DecisionRecord) if d.session == "crash"]) == 1
    assert any(e.event == "session_resume" for e in ledger.records(EventRecord))
    if point == "during_run":
        aborted = [r for r in ledger.records(RunRecord) if r.result.status == "aborted"]
        assert len(aborted) == 1
