"""What must hold after any session, finished, crashed or resumed: nothing lost, doubled or contradictory.

Read from the records themselves (the ledger, the git repository, battle_plan.md, /proc), never from
how they were produced, so the same checks serve the end-to-end tests, the crash tests and the chaos run.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from memory import incumbent
from memory.battle_plan import load_plan
from memory.ledger import Ledger
from memory.records import DecisionRecord, FindingRecord, RunRecord
from testing.workspace import git


def trainer_processes(ws: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"train_gpt.py" in cmd and str(ws).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def check_consistent(ws: Path, session: str) -> Ledger:
    """What must hold after any session, finished or resumed: nothing lost, nothing twice."""
    ledger = Ledger(ws / ".golf" / "ledger.jsonl")
    runs = [r for r in ledger.records(RunRecord) if r.session == session and r.result.status != "aborted"]
    keys = collections.Counter(
        (r.experiment, r.candidate, r.seed, r.script_sha, tuple(sorted(r.env.items()))) for r in runs
    )
    assert all(n == 1 for n in keys.values()), f"a run was recorded twice: {keys.most_common(2)}"
    decisions = [d for d in ledger.records(DecisionRecord) if d.session == session]
    assert len({d.experiment for d in decisions}) == len(decisions), "an experiment was decided twice"
    branch = set(git(ws, "rev-list", f"golf/{session}").split())
    assert all(r.git_commit in branch for r in runs), "a run does not name the branch commit it ran on"
    run_ids = {r.run_id for r in runs}
    for d in decisions:
        assert set(d.candidate_runs) <= run_ids
        assert git(ws, "rev-parse", f"refs/golf/{session}/{d.experiment}") == d.git_commit
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == f"golf/{session}"
    assert git(ws, "status", "--porcelain", "--untracked-files=no") == ""
    assert not trainer_processes(ws), "a trainer process outlived its session"
    return ledger


def block(plan: str, name: str) -> str:
    return plan.split(f"<!-- golf:begin {name} -->")[1].split(f"<!-- golf:end {name} -->")[0]


def check_records(ws: Path, session: str) -> Ledger:
    """Everything derived from a decision is there, once, and agrees with it."""
    ledger = check_consistent(ws, session)
    records = ledger.records()
    decisions = [d for d in records if isinstance(d, DecisionRecord) and d.session == session]
    findings = [f for f in records if isinstance(f, FindingRecord)]
    # git: every experiment commit of the session has its decision (no orphan verdict), and the commit's
    # research note says what the ledger says (one verdict, not two)
    refs = git(ws, "for-each-ref", "--format=%(refname:lstrip=3)", f"refs/golf/{session}/").split()
    assert sorted(refs) == sorted(d.experiment for d in decisions), "an experiment commit has no decision"
    branch = git(ws, "rev-list", f"golf/{session}").split()
    for d in decisions:
        note = git(ws, "log", "-1", "--format=%B", str(d.git_commit))
        assert note.startswith(f"{d.experiment}: {d.candidate} -> {d.outcome} ")
        if d.p_value is not None:
            stats = re.search(
                r"^Result: delta (\S+) bpb .*p=(\S+), n=(\d+) vs (\d+), "
                r"(?:\w+ test, )?(?:noise std|sd of differences) (\S+)$",
                note,
                re.M,
            )
            assert stats, note
            # a paired verdict states the spread of its per-seed differences, an unpaired one the A/A noise
            spread = d.paired_noise.std if d.test == "paired" and d.paired_noise else d.noise_std
            assert stats.groups() == (
                f"{d.delta:+.5f}",
                f"{d.p_value:.3g}",
                str(d.n_candidate),
                str(d.n_incumbent),
                f"{spread:.5f}",
            ), f"{d.experiment}: the commit and the ledger disagree on the verdict"
        assert (d.git_commit in branch) == d.kept, (
            f"{d.experiment}: kept={d.kept} but the branch says otherwise"
        )
        # the finding derived from the decision: exactly one, with the decision's outcome
        if d.technique:
            mine = [f for f in findings if f.experiment == d.experiment]
            assert len(mine) == 1, f"{d.experiment}: {len(mine)} findings"
            assert (mine[0].status, mine[0].delta, mine[0].p_value) == (d.outcome, d.delta, d.p_value)
    # the plan's blocks show every decided technique where its latest finding puts it
    plan = (ws / "battle_plan.md").read_text()
    latest = {f.technique: f for f in findings}
    for tech, f in latest.items():
        shown = {"confirmed": "confirmed", "rejected": "dead_ends"}.get(f.status)  # inconclusive: neither
        for name in ("confirmed", "dead_ends"):
            assert (f"| {tech} |" in block(plan, name)) == (name == shown), f"{tech} ({f.status}) in {name}?"
    queue_status = block(plan, "queue_status")
    for d in decisions:
        if d.technique and load_plan(ws / "battle_plan.md").item(d.technique):
            assert f"| {d.technique} |" in queue_status
    # the branch's incumbent.json is the env of the last kept decision
    kept = [d for d in decisions if d.kept]
    if kept:
        committed = incumbent.committed_env(ws, f"golf/{session}")
        assert committed == kept[-1].env
    assert not list((ws / ".git").rglob("*.lock")), "a git lock was left behind"
    return ledger
