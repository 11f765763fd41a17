"""Cost-aware choice: options are priced in expected full-scale bpb per dollar, best first, within budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.calibration import calibrations_from_ledger
from agent.costs import (
    CostInputs,
    Evidence,
    Queued,
    adopted_gain,
    dollars_spent_on_finals,
    final_seed_seconds,
    inputs_from_ledger,
    options_for_session,
    rank_options,
)
from agent.report import read_records
from memory.battle_plan import BattlePlan, PlanBudget, QueueItem
from memory.tiers import load_tiers

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "ledger_report.jsonl"
TIERS = load_tiers(ROOT / "tiers.toml")


def inputs(**kw) -> CostInputs:
    base = dict(
        local_tier=TIERS["cpu-smoke"],
        final_tier=TIERS["h100x8-final"],
        calibrations=calibrations_from_ledger([], "cpu-smoke"),
        noise_std=0.006,
        incumbent_n=3,
        local_run_s=30.0,
    )
    return CostInputs(**(base | kw))


def test_tests_rank_by_expected_gain_per_dollar():
    opts = rank_options(
        inputs(
            queue=[
                Queued(technique="small", expected_proxy_delta=-0.01),
                Queued(technique="big", expected_proxy_delta=-0.03),
                Queued(technique="lr", kind="training", expected_proxy_delta=-0.03),
            ]
        )
    )
    tests = [o for o in opts if o.action == "test"]
    assert [o.technique for o in tests] == ["big", "small", "lr"]
    assert tests[0].expected_gain_bpb > tests[1].expected_gain_bpb > 0
    # the published training pair flips sign at full scale: a local win there is expected to hurt
    assert tests[2].expected_gain_bpb == 0.0
    for o in tests:
        assert o.notional and o.real_dollars == 0.0
        assert o.dollars == pytest.approx(2 * 30.0 / 3600 * 0.05)  # two seeds at the tier's notional price
        assert o.gain_per_dollar == pytest.approx(o.expected_gain_bpb / o.dollars)


def test_promotion_is_priced_at_the_final_tier_and_ranked_by_gain_per_dollar():
    stack = [Evidence(technique="gate", delta=-0.03, se=0.004, n_candidate=3, n_incumbent=3)]
    opts = rank_options(inputs(unpromoted=stack, final_budget_dollars=100.0))
    assert [o.action for o in opts] == ["promote", "remeasure_incumbent"]  # nothing ambiguous to sharpen
    promote = opts[0]
    final = TIERS["h100x8-final"]
    hours = (3 * final_seed_seconds(final) + final.startup_s) / 3600
    assert promote.wall_hours == pytest.approx(hours)
    assert promote.real_dollars == pytest.approx(hours * 24.0) and not promote.notional
    assert promote.device_hours == pytest.approx(8 * hours)
    assert promote.expected_gain_bpb > 0
    # cheap local tests come first when the queue has them: their gain per dollar is far higher
    opts = rank_options(
        inputs(
            unpromoted=stack,
            final_budget_dollars=100.0,
            queue=[Queued(technique="t", expected_proxy_delta=-0.02)],
        )
    )
    assert opts[0].action == "test" and opts[1].action == "promote"


def test_budget_is_respected():
    stack = [Evidence(technique="gate", delta=-0.03, se=0.004, n_candidate=3, n_incumbent=3)]
    queue = [Queued(technique="t", expected_proxy_delta=-0.02)]
    opts = rank_options(inputs(unpromoted=stack, queue=queue, final_budget_dollars=5.0))
    assert "promote" not in [o.action for o in opts]
    everything = rank_options(
        inputs(unpromoted=stack, queue=queue, final_budget_dollars=5.0), include_unaffordable=True
    )
    assert everything[-1].action == "promote" and not everything[-1].fits_budget
    assert all(o.fits_budget for o in everything[:-1])
    # wall time binds too: a test is two 30 s seeds, a re-measure three 30 s incumbent runs
    short = rank_options(inputs(queue=queue, budget_hours=50 / 3600, incumbent_n=3))
    assert [o.action for o in short] == []
    roomy = rank_options(inputs(queue=queue, budget_hours=70 / 3600, incumbent_n=3))
    assert [o.action for o in roomy] == ["test"]


def test_paid_local_tier_is_bounded_by_real_dollars():
    q = [Queued(technique="t", expected_proxy_delta=-0.005)]
    h100 = dict(
        local_tier=TIERS["h100x1"], calibrations=calibrations_from_ledger([], "h100x1"), local_run_s=900.0
    )
    opts = rank_options(inputs(queue=q, **h100), include_unaffordable=True)
    test = next(o for o in opts if o.action == "test")
    seeds = TIERS["h100x1"].seeds_initial  # one since the tier screens (tiers.toml, triage)
    assert not test.notional and test.real_dollars == pytest.approx((seeds * 900 + 300) / 3600 * 3.0)
    short = 0.5 * test.real_dollars  # a budget below one test's real cost buys no test
    assert not any(o.action == "test" for o in rank_options(inputs(queue=q, budget_dollars=short, **h100)))


def test_more_seeds_are_worth_most_where_a_win_is_close():
    close = Evidence(technique="close", delta=-0.008, se=0.0055, n_candidate=2, n_incumbent=3)
    wrong = Evidence(technique="wrong", delta=0.004, se=0.0055, n_candidate=2, n_incumbent=3)
    full = Evidence(technique="full", delta=-0.008, se=0.004, n_candidate=4, n_incumbent=4)  # at seeds_max
    opts = rank_options(inputs(ambiguous=[close, wrong, full]))
    seeds = {o.technique: o for o in opts if o.action == "add_seeds"}
    assert set(seeds) == {"close", "wrong"}
    assert seeds["close"].expected_gain_bpb > 5 * seeds["wrong"].expected_gain_bpb
    remeasure = next(o for o in opts if o.action == "remeasure_incumbent")
    assert remeasure.expected_gain_bpb > 0
    assert rank_options(inputs())[0].expected_gain_bpb == 0.0  # nothing ambiguous: re-measuring gains nothing


def test_on_matched_seeds_a_close_call_is_worth_more_pairs_and_no_incumbent_reruns():
    unpaired = Evidence(technique="close", delta=-0.004, se=0.003, n_candidate=2, n_incumbent=2)
    paired = unpaired.model_copy(update={"paired": True})
    opts = {o.action: o for o in rank_options(inputs(ambiguous=[paired]))}
    # incumbent runs on seeds the candidate never ran are no pairs: re-measuring cannot sharpen it
    assert opts["remeasure_incumbent"].expected_gain_bpb == 0.0 and opts["add_seeds"].expected_gain_bpb > 0
    # two more pairs halve the variance of a 2-pair mean; two more candidate runs against 2 fixed
    # incumbent runs shrink an unpaired one less, so the paired call is more likely to be settled
    p_paired = float(opts["add_seeds"].why.rsplit("P ", 1)[1])
    other = next(o for o in rank_options(inputs(ambiguous=[unpaired])) if o.action == "add_seeds")
    assert p_paired > float(other.why.rsplit("P ", 1)[1])


def test_a_new_test_is_sized_by_the_spread_of_differences_the_judge_sees():
    # the same A/A noise; a tier whose paired differences are tight detects (and so predicts) smaller wins
    wide = next(o for o in rank_options(inputs(queue=[Queued(technique="t")])) if o.action == "test")
    tight = next(
        o for o in rank_options(inputs(queue=[Queued(technique="t")], paired_sd=0.001)) if o.action == "test"
    )
    assert float(tight.why.split("win of ")[1].split()[0]) > float(wide.why.split("win of ")[1].split()[0])


def test_the_ledger_gives_the_paired_spread_else_the_tier_figure_else_the_independent_bound():
    from memory.records import DecisionRecord, PairedNoise

    records = read_records(FIXTURE)
    # the tier's figure when no paired decision is recorded (cpu-smoke's is not set: the sqrt(2) bound)
    bare = inputs_from_ledger(records, TIERS, "cpu-smoke")
    assert bare.paired_sd == pytest.approx(np.sqrt(2) * bare.noise_std)
    h100 = TIERS["h100x1"]
    assert inputs_from_ledger([], TIERS, "h100x1").paired_sd == pytest.approx(h100.paired_noise)
    paired = [
        DecisionRecord(
            session="s",
            experiment=f"e{i}",
            candidate=f"c{i}",
            tier="cpu-smoke",
            hardware="cpu",
            outcome="rejected",
            kept=False,
            delta=0.001,
            test="paired",
            seed_diffs=[0.001, 0.002],
            paired_noise=PairedNoise(
                std=sd, df=4, pool_kind="architecture", pool_std=sd, pool_df=3, pool_source="kind"
            ),
        )
        for i, sd in enumerate([0.003, 0.004])
    ]
    inp = inputs_from_ledger([*records, *paired], TIERS, "cpu-smoke")
    assert inp.paired_sd == pytest.approx(np.sqrt((0.003**2 + 0.004**2) / 2))


def test_adopted_gain_matches_simulation():
    rng = np.random.default_rng(0)
    for mean, sd, measure in [(-0.001, 0.002, 0.0005), (0.0005, 0.001, 0.0), (-0.003, 0.0005, 0.002)]:
        d = rng.normal(mean, sd, 400_000)
        seen = d + rng.normal(0.0, measure, d.size)
        mc = float(np.mean(np.where(seen < 0, -d, 0.0)))
        assert adopted_gain(mean, sd, measure) == pytest.approx(mc, abs=2e-5)


def test_inputs_from_the_ledger_fixture():
    records = read_records(FIXTURE)
    inp = inputs_from_ledger(records, TIERS, "cpu-smoke", final_budget_dollars=50.0)
    assert {e.technique: e.kind for e in inp.ambiguous} == {"matrix_lr": "training", "ema": "training"}
    assert [e.technique for e in inp.unpromoted] == ["xsa"]  # kept after the last final
    assert inp.p_win == pytest.approx((3 + 1) / (4 + 4))  # 3 wins in 4 decided, Beta(1, 3) prior
    assert inp.local_run_s == pytest.approx(25.0)
    assert inp.noise_std == pytest.approx(np.std([2.3100, 2.3180, 2.3050], ddof=1))
    assert inp.calibrations["architecture"].n == 1
    assert inp.win_delta == pytest.approx(np.mean([-0.021, -0.009333, -0.010333]), abs=1e-5)
    actions = {(o.action, o.technique) for o in rank_options(inp)}
    assert ("promote", None) in actions and ("add_seeds", "matrix_lr") in actions


def test_session_options_follow_the_plan_budget():
    records = read_records(FIXTURE)
    queue = [
        QueueItem(technique="value_residual", line=1),
        QueueItem(technique="xsa", line=2),
        QueueItem(technique="partial_rope", state="done", line=3),
    ]
    plan = BattlePlan(queue=queue, budget=PlanBudget(final_dollars=100.0, approve_finals=False))
    opts = options_for_session(records, plan, TIERS["cpu-smoke"], TIERS)
    assert [o["technique"] for o in opts if o["action"] == "test"] == [
        "value_residual"
    ]  # xsa decided, rope done
    promote = next(o for o in opts if o["action"] == "promote")
    assert promote["fits_budget"] is False  # finals not approved
    plan.budget.approve_finals = True
    assert dollars_spent_on_finals(records) == pytest.approx(
        22.0 + 23.5
    )  # spend increments, summed per final
    # against the real frontier (1.0611) the projected score is no record: no final is proposed
    opts = options_for_session(records, plan, TIERS["cpu-smoke"], TIERS)
    promote = next(o for o in opts if o["action"] == "promote")
    assert promote["fits_budget"] is False and "not proposed: projected" in promote["why"]
    # a frontier the projection beats by far more than the record margin: proposed, within the budget
    weak = (1.30, "a weak frontier")
    opts = options_for_session(records, plan, TIERS["cpu-smoke"], TIERS, frontier=weak)
    promote = next(o for o in opts if o["action"] == "promote")
    assert promote["fits_budget"] is True  # 54.50 left
    plan.budget.final_dollars = 45.5 + promote["real_dollars"] - 1.0
    opts = options_for_session(records, plan, TIERS["cpu-smoke"], TIERS, frontier=weak)
    assert next(o for o in opts if o["action"] == "promote")["fits_budget"] is False  # a dollar short
