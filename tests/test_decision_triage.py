"""Triage, the one-seed paired screen (tiers.toml's h100x1; benchmarks/decisions.py, "triage"), as a spec.

Each idea runs one seed against the incumbent's run on the same seed; the difference is judged against the
tier's paired_noise (the sd of per-seed differences from earlier ledgers), so a clear win or loss is
decided at that first look, a close one takes more seeds, and seeds are spent only from the runs the
untested ideas leave over. Runs are drawn as  true bpb + seed effect (shared by both arms) + run noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agent.experiment import SEED_BASE, ExperimentRunner
from agent.judge import affordable_seeds, paired_prior, sequential_experiment
from agent.planner import ExperimentSpec, PlannerState, QueueRow
from agent.playbook import PlaybookPlanner
from agent.progress import Progress
from memory.ledger import Ledger
from memory.records import DecisionRecord
from memory.tiers import load_tiers
from memory.workspace import Workspace
from tools.context import ToolContext

TIER = load_tiers(Path(__file__).resolve().parents[1] / "tiers.toml")["h100x1"]
SEED_SD = 0.0033  # the shared seed effect of 1xH100 (testing/simtrainer.py, split_noise)
RUN_SD = TIER.paired_noise / math.sqrt(2)  # the run noise the tier's paired_noise stands for


def experiment(effect, rng, *, seed_fx, incumbent, pool, seeds_max=TIER.seeds_max, run_sd=RUN_SD):
    """One triage experiment as the session runs it (sequential_experiment with the tier's knobs): the
    candidate runs seed 0, 1, ...; the incumbent runs any seed it lacks (and keeps it for later ones)."""
    cand: dict[int, float] = {}

    def measure(seeds):
        for s in seeds:
            incumbent.setdefault(s, seed_fx[s] + run_sd * rng.standard_normal())
            cand[s] = seed_fx[s] + effect + run_sd * rng.standard_normal()
        return {s: incumbent[s] for s in cand}, dict(cand)

    prior = paired_prior(
        pool, 0.0034, 2.0, "architecture", tier_std=TIER.paired_noise, tier_df=TIER.paired_noise_df
    )
    v = sequential_experiment(
        measure,
        seeds=range(seeds_max),
        seeds_initial=TIER.seeds_initial,
        seeds_max=seeds_max,
        alpha=TIER.alpha,
        diff_prior=prior,
        futility_p=TIER.futility_p,
    )
    assert v is not None and not v.need_more and v.test == "paired"
    if len(v.seed_diffs) >= 2:
        pool.append(v.seed_diffs)
    return v


def test_the_h100x1_tier_triages():
    assert TIER.seeds_initial == 1 and TIER.noise_runs == 1 and TIER.adaptive_seeds
    assert TIER.paired_noise is not None and TIER.paired_noise < TIER.typical_noise / 2
    prior = paired_prior([], TIER.typical_noise, 2.0, "architecture", tier_std=TIER.paired_noise)
    assert prior.pool_source == "tier" and prior.std == pytest.approx(TIER.paired_noise)
    # the kind's own pool then moves it: twenty differences twice as wide as the tier's figure
    wide = [[d, -d] for d in [2 * TIER.paired_noise / math.sqrt(2)] * 20]
    moved = paired_prior(wide, TIER.typical_noise, 2.0, "architecture", tier_std=TIER.paired_noise)
    assert moved.pool_source == "kind" and moved.std > 1.6 * TIER.paired_noise


@pytest.mark.parametrize(("effect", "outcome"), [(-0.005, "confirmed"), (0.004, "rejected")])
def test_a_clear_win_or_loss_is_decided_at_the_first_look(effect, outcome):
    rng = np.random.default_rng(1)
    seed_fx = SEED_SD * rng.standard_normal(16)
    verdicts = [experiment(effect, rng, seed_fx=seed_fx, incumbent={}, pool=[]) for _ in range(200)]
    assert all(v.outcome == outcome for v in verdicts)
    assert np.mean([v.n_candidate == 1 for v in verdicts]) >= 0.9


def test_a_close_difference_takes_another_seed_and_a_crowded_queue_does_not_pay_for_it():
    rng = np.random.default_rng(2)
    seed_fx = SEED_SD * rng.standard_normal(16)
    roomy = [experiment(-0.0012, rng, seed_fx=seed_fx, incumbent={}, pool=[]) for _ in range(200)]
    assert np.mean([v.n_candidate >= 2 for v in roomy]) > 0.5  # about 1.4 sd: close, so it looks again
    assert np.mean([v.outcome == "confirmed" for v in roomy]) > 0.5
    # where ideas outnumber the runs left, one seed each: the close ones wait (inconclusive), never cost more
    one = affordable_seeds(40, 60, seeds_initial=1, seeds_max=TIER.seeds_max)
    crowded = [
        experiment(-0.0012, rng, seed_fx=seed_fx, incumbent={}, pool=[], seeds_max=one) for _ in range(50)
    ]
    assert one == 1 and all(v.n_candidate == 1 for v in crowded)


def test_affordable_seeds_spends_only_what_the_untested_ideas_leave_over():
    kw = dict(seeds_initial=1, seeds_max=8)
    assert affordable_seeds(99, 150, **kw) == 1  # an idea stream: every run buys a fresh idea
    assert affordable_seeds(99, 20, **kw) == 8  # a short queue: seeds for the close ones
    assert 1 < affordable_seeds(30, 20, **kw) < 8
    assert affordable_seeds(None, None, **kw) == 8  # unknown budget: the tier's cap


@pytest.mark.parametrize("seeds_max", [1, TIER.seeds_max])
def test_2000_null_experiments_with_a_shared_seed_effect_keep_false_wins_at_or_below_alpha(seeds_max):
    """A new incumbent every 10 experiments (its run's luck is shared by the ones compared with it); the
    pool of differences grows from the experiments that took more seeds, as in a session."""
    rng = np.random.default_rng(30 + seeds_max)
    seed_fx = SEED_SD * rng.standard_normal(64)
    pool: list[list[float]] = []
    wins = 0
    for i in range(2000):
        if i % 10 == 0:
            incumbent: dict[int, float] = {}
        v = experiment(0.0, rng, seed_fx=seed_fx, incumbent=incumbent, pool=pool, seeds_max=seeds_max)
        wins += v.outcome == "confirmed"
    assert wins / 2000 <= TIER.alpha, wins / 2000


def test_a_tier_figure_that_understates_the_spread_is_corrected_by_the_pool():
    """The tier's paired_noise is half the real spread. Judged on the figure alone, nulls win more often
    than alpha; with the pool of differences from the experiments that looked twice (as a session keeps
    it), they are back under alpha."""
    rng = np.random.default_rng(5)
    seed_fx = SEED_SD * rng.standard_normal(64)
    pool: list[list[float]] = []
    alone = pooled = 0
    for i in range(2000):
        wide = dict(seed_fx=seed_fx, incumbent={}, run_sd=2 * RUN_SD)
        alone += experiment(0.0, rng, pool=[], **wide).outcome == "confirmed"
        v = experiment(0.0, rng, pool=pool, **wide)
        pooled += i >= 500 and v.outcome == "confirmed"
    assert alone / 2000 > TIER.alpha, alone / 2000
    assert pooled / 1500 <= TIER.alpha, pooled / 1500


def test_the_playbook_gives_a_near_miss_rejection_one_more_look_once_the_queue_is_done():
    def row(tech, decided, tries, ci_low):
        return QueueRow(technique=tech, env={"X": tech}, decided=decided, tries=tries, ci_low=ci_low)

    queue = [
        row("near", "rejected", 1, -0.0015),  # a 0.0005 win is inside its interval
        row("far", "rejected", 1, -0.0002),  # ruled out
        row("twice", "rejected", 2, -0.0015),  # had its second look
    ]
    state = PlannerState(session="s", tier="h100x1", hardware="h", budget_left={}, queue=queue)
    ctx = type("Ctx", (), {"tier": TIER})()
    pb = PlaybookPlanner()
    p = pb.propose(state, ctx)
    assert p.action == "experiment" and p.experiment.technique == "near" and "rejection" in p.reason
    assert pb.ideas_left(state, ctx) == 1
    # a tier without retest_effect keeps rejections final
    assert pb.propose(state, None).action == "stop"
    # and an untested line comes first
    first = pb.propose(state.model_copy(update={"queue": [*queue, row("new", None, 0, None)]}), ctx)
    assert first.experiment.technique == "new"


def test_a_further_look_runs_on_seeds_the_earlier_look_did_not(tmp_path):
    ws = Workspace.at(tmp_path)
    ctx = ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s", tier=TIER)
    runner = ExperimentRunner(ctx, Progress.quiet())
    spec = ExperimentSpec(name="xsa", technique="xsa")
    assert runner.first_seed(spec) == SEED_BASE
    ctx.ledger.append(
        DecisionRecord(
            session="s",
            experiment="e001-xsa",
            candidate="xsa",
            technique="xsa",
            tier=TIER.name,
            hardware="",
            outcome="rejected",
            kept=False,
        )
    )
    assert runner.first_seed(spec) == SEED_BASE + TIER.seeds_max
    # a tier that does not triage keeps its fixed seed set
    runner.tier = TIER.model_copy(update={"adaptive_seeds": False})
    assert runner.first_seed(spec) == SEED_BASE
