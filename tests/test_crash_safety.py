"""Crash-safe records: killed anywhere, a resumed session leaves nothing lost, doubled or contradictory.

Each test kills the real `golf` command (real trainer at the cpu-tiny tier, a real git repository) at
a named fault point (memory/faults.py) or at a random moment, resumes it, and checks the records
as a whole: every decision has its finding, plan blocks and git commit, and they all agree.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memory.ledger import Ledger
from memory.records import DecisionRecord, EventRecord
from testing.invariants import check_records
from testing.workspace import golf, golf_env, make_workspace

SESSION = "crash"
ARGS = ["--tier", "cpu-tiny", "--session", SESSION, "--planner", "playbook"]


@pytest.fixture
def ws(tmp_path, tiny_dataset) -> Path:
    return make_workspace(tmp_path, tiny_dataset)


def crash_then_resume(ws: Path, point: str, experiments: int) -> tuple[list, Ledger]:
    died = golf(ws, "run", *ARGS, "--experiments", str(experiments), env={"PGOLF_CRASH_AT": point})
    assert died.returncode == -signal.SIGKILL, died.stdout[-2000:] + died.stderr[-2000:]
    before = Ledger(ws / ".golf" / "ledger.jsonl").records()
    resumed = golf(ws, "resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    ledger = check_records(ws, SESSION)
    assert ledger.records()[: len(before)] == before, "resume rewrote what was recorded"
    return before, ledger


def test_a_finding_lost_after_its_decision_is_rebuilt_on_resume_and_reaches_the_plan(ws):
    """The decision and its finding are two appends: killed between them, the plan lost the result."""
    before, ledger = crash_then_resume(ws, "ledger_write:finding#1", experiments=1)
    assert [d.kind for d in before].count("decision") == 1 and [d.kind for d in before].count("finding") == 0
    assert len(ledger.torn_lines()) == 1  # the half-written finding was set aside, then rebuilt
    resumes = [e for e in ledger.records(EventRecord) if e.event == "session_resume"]
    assert resumes[0].detail["findings_rebuilt"] and not resumes[0].detail["decisions_rebuilt"]


def test_a_verdict_committed_before_a_crash_is_the_verdict_the_ledger_records(ws):
    """The experiment's own extra incumbent runs must not re-decide it on resume (they join the noise
    model): the commit already carries a verdict, and the ledger takes that one."""
    before, ledger = crash_then_resume(ws, "after_commit#1", experiments=1)
    assert not [d for d in before if isinstance(d, DecisionRecord)]
    decisions = [d for d in ledger.records(DecisionRecord) if d.session == SESSION]
    resumes = [e for e in ledger.records(EventRecord) if e.event == "session_resume"]
    assert resumes[0].detail["decisions_rebuilt"] == [d.experiment for d in decisions]


def test_a_torn_decision_and_the_locks_of_a_killed_git_are_recovered_on_resume(ws):
    locks = [".git/index.lock", ".git/refs/heads/golf/crash.lock", ".git/HEAD.lock"]
    died = golf(ws, "run", *ARGS, "--experiments", "1", env={"PGOLF_CRASH_AT": "ledger_write:decision"})
    assert died.returncode == -signal.SIGKILL, died.stdout[-2000:] + died.stderr[-2000:]
    for lock in locks:  # what git leaves when it is killed holding its locks
        (ws / lock).write_text("")
    resumed = golf(ws, "resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    ledger = check_records(ws, SESSION)
    assert len(ledger.torn_lines()) == 1  # the half-written decision was set aside, then rebuilt from git
    events = [e for e in ledger.records(EventRecord) if e.event == "git_locks_cleared"]
    assert [sorted(e.detail["locks"]) for e in events] == [
        sorted(lock.removeprefix(".git/") for lock in locks)
    ]


def test_a_lock_held_by_a_live_git_in_the_repository_is_never_removed(ws):
    (ws / ".git/index.lock").write_text("")
    # a git still working in this repository (it waits on stdin for as long as we like)
    live = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=ws, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        refused = golf(ws, "run", *ARGS, "--experiments", "1")
    finally:
        live.stdin.close()
        live.wait(timeout=30)
    assert refused.returncode == 2
    assert "index.lock" in refused.stderr and f"pid {live.pid}" in refused.stderr
    assert (ws / ".git/index.lock").exists()
    assert not (ws / ".golf" / "session.lock").exists()  # the refused session let go of the workspace


# ------------------------------------------------------------------------------------------ chaos

FAULTS = [
    "during_run",
    "after_commit",
    "ledger_write:run",
    "ledger_write:decision",
    "ledger_write:finding",
    "ledger_write:noise",
    "ledger_write:event",
    "git:update-ref",
    "git:update-index",
    "git:read-tree",
    "git:commit-tree",
    "git:commit",
    "git:symbolic-ref",
]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def chaos(ws: Path, *, kills: int, experiments: int, seed: int) -> list[str]:
    """Kill a session until `kills` kills have landed, resuming after each, then let it finish.

    Each attempt dies at a random fault point (memory/faults.py) when it gets there, or else is killed,
    the whole process group at once (trainer and git children included), at a random moment after it
    has written 1-4 more ledger lines: so every kill falls inside work still to do, at any speed."""
    rng = random.Random(seed)
    ledger_path = ws / ".golf" / "ledger.jsonl"
    history: list[str] = []
    landed = 0
    while True:
        started = any(
            e.session == SESSION and e.event == "session_start"
            for e in Ledger(ledger_path).records(EventRecord)
        )
        cmd = ["resume"] if started else ["run", *ARGS, "--experiments", str(experiments)]
        before = Ledger(ledger_path).records()
        env, grow, extra = {}, None, 0.0
        if landed < kills:
            grow, extra = rng.randint(1, 4), rng.uniform(0.0, 1.5)
            if rng.random() < 0.5:
                env = {"PGOLF_CRASH_AT": f"{rng.choice(FAULTS)}#{rng.randint(1, 3)}"}
        out_path = ws.parent / f"golf-{len(history)}.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--workspace", str(ws), *cmd],
                env=golf_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        lines0, deadline = _lines(ledger_path), time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if grow is not None and _lines(ledger_path) >= lines0 + grow:
                time.sleep(extra)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        rc = proc.wait(timeout=600)
        what = " ".join(
            filter(
                None,
                [
                    env.get("PGOLF_CRASH_AT"),
                    grow and f"else kill {extra:.1f}s after {grow} new ledger line(s)",
                ],
            )
        )
        history.append(f"{len(history)}: {cmd[0]} {what or 'to the end'} -> {rc}")
        tail = out_path.read_text()[-3000:]
        assert rc in (0, -signal.SIGKILL), "\n".join(history) + "\n" + tail
        after = Ledger(ledger_path).records()
        assert after[: len(before)] == before, "recorded history was rewritten:\n" + "\n".join(history)
        if rc == 0:
            break
        landed += 1
    assert landed == kills, "the session finished before every kill landed:\n" + "\n".join(history)
    ledger = check_records(ws, SESSION)
    decided = [d for d in ledger.records(DecisionRecord) if d.session == SESSION]
    assert len(decided) == experiments, "\n".join(history)
    print("\n".join(history))  # shown with `pytest -rP`: where each kill fell
    return history


def test_a_session_killed_at_random_points_loses_nothing_and_records_nothing_twice(ws):
    chaos(ws, kills=4, experiments=1, seed=15)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [int(os.environ.get("PGOLF_CHAOS_SEED", "2026"))])
def test_twenty_kills_at_random_points_lose_nothing_and_record_nothing_twice(ws, seed):
    chaos(ws, kills=20, experiments=4, seed=seed)
