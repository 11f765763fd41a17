"""The session's budget holds inside an experiment: a further seed is bought only with what is left."""

from __future__ import annotations

import sys

from agent.experiment import ExperimentRunner
from agent.planner import Budget, ExperimentSpec, Proposal
from agent.playbook import PlaybookPlanner
from agent.progress import Progress
from agent.session import Session
from memory import git_records
from memory.ledger import Ledger
from memory.records import Cost, DecisionRecord, RunRecord, RunResult
from memory.tiers import load_tiers
from memory.workspace import Workspace
from testing.workspace import make_workspace
from tools.context import ToolContext
from tools.sweep import hardware_id

PRICED = "price_per_hour = 3600.0  # test: $1 a second of wall time\n"


def runner_on(tmp_path, dataset) -> ExperimentRunner:
    ws = Workspace.at(make_workspace(tmp_path, dataset))
    git_records.start_session(ws.root, "s1")  # experiments are committed on the session's branch
    tiers = load_tiers(ws.tiers_file)
    tier = tiers["cpu-tiny"].model_copy(update={"seeds_initial": 1, "seeds_max": 3})
    ctx = ToolContext(
        ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers=tiers, python=sys.executable
    )
    runner = ExperimentRunner(ctx, Progress.quiet())
    runner.hardware = hardware_id(ctx, tier.hardware)  # as the session names the machine
    return runner


def experiment(runner: ExperimentRunner) -> DecisionRecord:
    spec = ExperimentSpec(name="lr", technique="matrix_lr", env={"MATRIX_LR": "0.045"})
    runner.run_experiment(Proposal(action="experiment", experiment=spec), planner="playbook")
    return runner.ctx.ledger.records(DecisionRecord)[-1]


def test_a_further_seed_is_not_started_when_the_budget_cannot_pay_for_it(tmp_path, tiny_dataset):
    free = experiment(runner_on(tmp_path / "free", tiny_dataset))
    assert free.n_candidate > 1  # the judge wanted more than its first look on this change
    asked: list[int] = []
    runner = runner_on(tmp_path / "spent", tiny_dataset)
    runner.afford = lambda n: asked.append(n) or f"{n} more run(s) cost more than is left"
    spent = experiment(runner)
    assert spent.n_candidate == 1 and asked  # the first look only: it was paid for when it started
    assert spent.outcome == "inconclusive" and "no further seed" in spent.reason, spent.reason
    assert len([r for r in runner.ctx.ledger.records(RunRecord) if r.candidate == "lr"]) == 1


def test_the_session_pays_for_a_look_only_with_money_that_is_left(tmp_path, tiny_dataset):
    ws = Workspace.at(make_workspace(tmp_path, tiny_dataset))
    text = ws.tiers_file.read_text()
    ws.tiers_file.write_text(text.replace("[tier.cpu-tiny]\n", "[tier.cpu-tiny]\n" + PRICED, 1))
    ledger = Ledger(ws.ledger)

    def run(session: str, i: int, dollars: float | None = None) -> RunRecord:
        return RunRecord(
            session=session,
            run_id=f"{session}-{i}",
            experiment="e",
            candidate="c",
            tier="cpu-tiny",
            hardware="cpu",
            seed=i,
            script_sha="s",
            cost=Cost(device_seconds=10.0, dollars=dollars),
            result=RunResult(status="ok", val_bpb=3.0),
        )

    for i in range(3):  # an earlier session's runs: 10 s of wall each, $10 at this tier's price
        ledger.append(run("old", i, 10.0))
    s = Session(
        ws,
        planner=PlaybookPlanner(),
        tier="cpu-tiny",
        budget=Budget(dollars=35.0),
        session="s1",
        resume=False,
        allow_dirty=True,
        progress=Progress.quiet(),
    )
    assert s.runner.afford == s.afford  # what the experiment asks before each further seed
    assert s.afford(3) is None
    assert s.afford(4) == "4 more run(s) cost ~$40.00, $35.00 of the budget is left"
    assert s.out_of_budget() is None  # a first look (2 seeds, ~$20) fits
    ledger.append(run("s1", 0, 20.0))  # this session has spent $20: $15 cannot pay for a first look
    assert s.out_of_budget() == "dollar budget spent ($15.00 left, a first look costs ~$20.00)"
