"""Overrides from files (the battle plan's queue, the branch's incumbent.json) pass the same allow-list as a
planner's: a loader variable or an unknown name is refused with a clear message, recorded, before any run."""

from __future__ import annotations

import json
import sys

import pytest

from agent.containment import QUEUE_REFUSED, check_base_env, screen_queue
from agent.experiment import ExperimentRunner
from agent.planner import ExperimentSpec, Proposal
from agent.playbook import PlaybookPlanner
from agent.progress import Progress
from agent.session import SessionError, run_session
from memory.battle_plan import load_plan
from memory.ledger import Ledger
from memory.records import EventRecord, RunRecord
from memory.tiers import load_tiers
from memory.workspace import Workspace
from testing.workspace import PLAN, ROOT, git, make_workspace
from tools.context import ToolContext

SCRIPT = (ROOT / "trainer" / "train_gpt.py").read_text()
HOSTILE = ["PYTHONPATH", "LD_PRELOAD", "BASH_ENV", "PYTHONSTARTUP", "NOT_A_KNOB"]
QUEUE = "".join(f"- [ ] evil_{n.lower()}: {n}=/tmp/planted — looks like a flag\n" for n in HOSTILE)


def plan_with_hostile_queue(tmp_path):
    path = tmp_path / "battle_plan.md"
    path.write_text(PLAN.replace("## Queue\n", "## Queue\n" + QUEUE))
    return load_plan(path)


def test_hostile_queue_items_are_dropped_and_each_refusal_is_recorded_once(tmp_path):
    plan = plan_with_hostile_queue(tmp_path)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    said: list[str] = []
    for _ in range(2):  # the plan is re-read before every decision: one record per item, not per read
        screened = screen_queue(plan, SCRIPT, ledger, "s1", say=said.append)
    assert [q.technique for q in screened.queue] == [
        q.technique for q in plan.queue if not q.technique.startswith("evil_")
    ]
    refused = [e for e in ledger.records(EventRecord) if e.event == QUEUE_REFUSED]
    assert sorted(e.detail["technique"] for e in refused) == sorted(f"evil_{n.lower()}" for n in HOSTILE)
    for e in refused:
        assert next(n for n in HOSTILE if n in e.detail["env"]) in e.detail["why"]
    assert len(said) == len(HOSTILE) and all("refused before any run" in s for s in said)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_experiment_from_the_queue_is_refused_before_any_run(tmp_path, tiny_dataset, name):
    ws = make_workspace(tmp_path, tiny_dataset)
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
    spec = ExperimentSpec(name="evil", technique="evil", env={name: "/tmp/planted"})
    out = ExperimentRunner(ctx, Progress.quiet()).run_experiment(
        Proposal(action="experiment", experiment=spec), planner="playbook"
    )
    assert out["outcome"] == "refused" and name in out["reason"]
    assert not ctx.ledger.records(RunRecord)
    assert ctx.ledger.records(EventRecord)[-1].event == "proposal_refused"


def test_an_incumbent_json_with_a_loader_variable_stops_the_session_before_any_run(tmp_path, tiny_dataset):
    ws = make_workspace(tmp_path, tiny_dataset)
    (ws / "incumbent.json").write_text(json.dumps({"env": {"NUM_LAYERS": "2", "PYTHONPATH": "/tmp/planted"}}))
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a hostile incumbent")
    with pytest.raises(SessionError, match="incumbent.json.*PYTHONPATH"):
        run_session(ws, planner=PlaybookPlanner(), tier="cpu-tiny", progress=Progress.quiet())
    ledger = Ledger(Workspace.at(ws).ledger)
    assert not ledger.records(RunRecord)
    assert any(e.event == "incumbent_env_refused" for e in ledger.records(EventRecord))


def test_an_allowed_incumbent_env_passes_and_records_nothing(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert check_base_env({"NUM_LAYERS": "2", "OMP_NUM_THREADS": "1"}, SCRIPT, ledger, "s1") == {
        "NUM_LAYERS": "2",
        "OMP_NUM_THREADS": "1",
    }
    assert ledger.records() == []
