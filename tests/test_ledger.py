"""The ledger is append-only, typed, and survives a crash mid-write without losing or faking a record."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.lock import LockedError, acquire, release
from memory.ledger import Ledger, LedgerError
from memory.records import DecisionRecord, EventRecord, RunRecord, RunResult


def run(i: int) -> RunRecord:
    return RunRecord(
        session="s",
        run_id=f"r{i}",
        experiment="e",
        candidate="c",
        tier="t",
        hardware="h",
        seed=i,
        script_sha="x",
        result=RunResult(status="ok", val_bpb=1.0 + i / 100),
    )


def test_records_come_back_typed_and_in_order(tmp_path):
    led = Ledger(tmp_path / "l.jsonl")
    led.append(run(1))
    led.append(EventRecord(session="s", event="hello"))
    led.append(
        DecisionRecord(
            session="s", experiment="e", candidate="c", tier="t", hardware="h", outcome="rejected", kept=False
        )
    )
    recs = Ledger(tmp_path / "l.jsonl").records()
    assert [type(r) for r in recs] == [RunRecord, EventRecord, DecisionRecord]
    assert [r.run_id for r in led.records(RunRecord)] == ["r1"]


def test_a_torn_last_line_is_set_aside_not_dropped_and_not_fatal(tmp_path):
    path = tmp_path / "l.jsonl"
    led = Ledger(path)
    led.append(run(1))
    led.append(run(2))
    with open(path, "a") as f:
        f.write(run(3).model_dump_json()[:40])  # the process died mid-write
    led = Ledger(path)
    assert [r.run_id for r in led.records()] == ["r1", "r2"]
    assert len(led.torn_lines()) == 1 and led.torn_lines()[0].startswith('{"kind":"run"')
    led.append(run(4))  # appendable again, on a fresh line
    assert [r.run_id for r in Ledger(path).records()] == ["r1", "r2", "r4"]


def test_a_corrupt_line_in_the_middle_is_an_error_that_names_the_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text(run(1).model_dump_json() + '\n{"kind": "nonsense"}\n' + run(2).model_dump_json() + "\n")
    with pytest.raises(LedgerError, match=r"l.jsonl:2"):
        Ledger(path).records()


def test_one_session_per_workspace_and_a_dead_holder_does_not_block(tmp_path):
    lock = tmp_path / "session.lock"
    acquire(lock, "a")
    with pytest.raises(LockedError, match="session a"):
        acquire(lock, "b")
    release(lock)
    # a lock left by a process that died
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    lock.write_text(f'{{"pid": {p.pid}, "session": "dead", "host": "{os.uname().nodename}", "started": "x"}}')
    info = acquire(lock, "c")
    assert info["session"] == "c"
