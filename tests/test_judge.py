"""The judge as a specification: noise model, sequential Welch decisions, the challenge's record rule.

Monte-Carlo checks use fixed seeds; each states its sample size and the slack it allows (three
binomial standard errors), so a rule that is really off fails and luck does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from agent.judge import (
    PRIOR_DF,
    SP1024_BYTES_PER_TOKEN,
    judge,
    judge_record,
    look_alpha,
    nats_to_bpb,
    noise_model,
)
from testing.decision_rules import LOOP, rule_loop, rule_oracle, rule_single_run
from testing.simtrainer import NOISE_1XH100, SimTrainer, make_scenario

SIGMA = NOISE_1XH100
BASE = 1.2244


def sequential(
    effect: float,
    n_exp: int,
    *,
    seed: int,
    n_inc: int = 3,
    seeds_initial: int = 2,
    seeds_max: int = 5,
    alpha: float = 0.05,
    prior: float = SIGMA,
    naive: bool = False,
    known_noise: bool = False,
):
    """Run n_exp experiments the way the session loop does: A/A runs -> noise model, then candidate
    seeds one at a time while the judge asks for more. Returns outcome counts and mean runs spent.
    naive: peek at full alpha after every seed until significant (no alpha spending, no futility
    stop), the mistake the sequential design exists to avoid. known_noise: the judge is told the
    true std with many degrees of freedom instead of a 3-run measurement."""
    rng = np.random.default_rng(seed)
    inc_all = BASE + SIGMA * rng.standard_normal((n_exp, n_inc))
    cand_all = BASE + effect + SIGMA * rng.standard_normal((n_exp, seeds_max))
    counts = {"confirmed": 0, "rejected": 0, "inconclusive": 0}
    runs = 0
    for inc, cand in zip(inc_all, cand_all, strict=True):
        nm = noise_model(list(inc), prior, "t", "h")
        std, df = (SIGMA, 1e6) if known_noise else (nm.std, nm.df)
        n, look = seeds_initial, 1
        while True:
            v = judge(
                list(inc),
                list(cand[:n]),
                alpha=alpha,
                noise_std=std,
                noise_df=df,
                seeds_max=n if naive else seeds_max,
                looks=None if naive else look,
            )
            more = v.need_more or (naive and v.outcome != "confirmed" and n < seeds_max)
            if not more:
                break
            n, look = n + 1, look + 1
        counts[v.outcome] += 1
        runs += n
    return {k: c / n_exp for k, c in counts.items()}, runs / n_exp


def slack(p: float, n: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------ sequential decisions


N_NULL = 2000


@pytest.fixture(scope="module")
def null_experiments():
    return {
        "loop": sequential(0.0, N_NULL, seed=1),  # 3 A/A runs -> noise model, seeds 2..5
        "known": sequential(0.0, N_NULL, seed=1, known_noise=True, seeds_initial=1),  # 5 looks, exact law
        "peeking": sequential(0.0, N_NULL, seed=1, known_noise=True, seeds_initial=1, naive=True),
    }


def test_no_true_effect_false_win_rate_stays_at_alpha_over_sequential_looks(null_experiments):
    rates, runs = null_experiments["loop"]
    assert rates["confirmed"] <= 0.05 + slack(0.05, N_NULL)  # 0.065; measured 0.028
    assert runs < 5  # futility stops save seeds on a null
    known, _ = null_experiments["known"]
    assert known["confirmed"] <= 0.05 + slack(0.05, N_NULL)  # measured 0.051: Pocock spends alpha exactly


def test_peeking_at_full_alpha_after_every_seed_would_inflate_false_wins(null_experiments):
    # the control that shows the test above can fail: the same data, no alpha spending
    naive, _ = null_experiments["peeking"]
    spent, _ = null_experiments["known"]
    assert naive["confirmed"] > 0.05 + slack(0.05, N_NULL)  # measured 0.10
    assert spent["confirmed"] < naive["confirmed"]


def test_a_prior_that_overstates_noise_keeps_false_wins_down():
    n = 1000
    rates, _ = sequential(0.0, n, seed=2, prior=2 * SIGMA)
    assert rates["confirmed"] <= 0.05 + slack(0.05, n)


def test_effect_twice_the_noise_is_found():
    # 5 A/A runs of the incumbent (its runs are reused by every comparison), candidate 2..5 seeds
    n = 1000
    rates, runs = sequential(-2 * SIGMA, n, seed=3, n_inc=5)
    assert rates["confirmed"] >= 0.80  # measured about 0.85
    assert rates["rejected"] <= 0.01
    assert runs < 4  # most wins are called before seeds_max


def test_clearly_worse_candidate_is_rejected_at_the_first_look():
    inc = [1.2240, 1.2270, 1.2215]
    cand = [1.2400, 1.2390]  # +0.015, about four noise stds worse
    v = judge(inc, cand, alpha=0.05, noise_std=SIGMA, noise_df=4, seeds_max=5, looks=1)
    assert v.outcome == "rejected" and not v.need_more
    assert v.ci_low > 0 and "significantly worse" in v.reason
    assert v.delta == pytest.approx(np.mean(cand) - np.mean(inc))


def test_two_agreeing_seeds_do_not_make_a_small_delta_significant():
    inc = [1.22400, 1.22401, 1.22399]
    cand = [1.22300, 1.22301]  # -0.001 with a spread of 1e-5
    plain = judge(inc, cand, alpha=0.05, seeds_max=2)
    assert plain.outcome == "confirmed"  # bare Welch believes the lucky spread
    v = judge(inc, cand, alpha=0.05, noise_std=SIGMA, noise_df=4, seeds_max=5, looks=1)
    assert v.outcome == "inconclusive" and v.need_more
    assert v.p_value > 0.2


def test_an_incumbent_outside_the_noise_measurement_brings_its_own_spread():
    inc = [1.2200, 1.2300, 1.2250]  # spread 0.005, far above the noise model's 0.001
    cand = [1.2215, 1.2225]  # -0.003
    kw = dict(alpha=0.05, noise_std=0.001, noise_df=4, seeds_max=5, looks=1)
    inside = judge(inc, cand, **kw)  # its runs are the A/A runs: already in noise_std
    outside = judge(inc, cand, incumbent_in_noise=False, **kw)
    assert outside.ci_high - outside.ci_low > inside.ci_high - inside.ci_low
    assert inside.outcome == "confirmed" and outside.outcome == "inconclusive"


def test_ambiguous_candidate_asks_for_more_seeds_then_ends_inconclusive_at_the_cap():
    inc = [1.2244 + d for d in (-0.003, 0.0, 0.003)]
    base = 1.2244 - 0.0015
    early = judge(
        inc, [base - 0.002, base + 0.002], alpha=0.05, noise_std=SIGMA, noise_df=4, seeds_max=5, looks=1
    )
    assert early.outcome == "inconclusive" and early.need_more
    cand = [base + d for d in (-0.004, -0.002, 0.0, 0.002, 0.004)]
    last = judge(inc, cand, alpha=0.05, noise_std=SIGMA, noise_df=4, seeds_max=5, looks=4)
    assert last.outcome == "inconclusive" and not last.need_more
    assert last.delta < 0 and last.p_value > last.alpha_look


def test_no_improvement_at_the_cap_is_rejected_for_futility():
    inc = [1.2244 + d for d in (-0.003, 0.0, 0.003)]
    cand = [1.2246 + d for d in (-0.004, -0.002, 0.0, 0.002, 0.004)]
    v = judge(inc, cand, alpha=0.05, noise_std=SIGMA, noise_df=4, seeds_max=5, looks=4)
    assert v.outcome == "rejected" and "futility" in v.reason


def test_min_effect_requires_the_improvement_to_clear_it():
    inc = [1.2244 + d for d in (-0.0005, 0.0, 0.0005)]
    cand = [1.2224 + d for d in (-0.0005, 0.0, 0.0005)]  # -0.002, tight
    kw = dict(alpha=0.05, noise_std=0.0005, noise_df=10, seeds_max=3, looks=1)
    assert judge(inc, cand, **kw).outcome == "confirmed"
    v = judge(inc, cand, min_effect=0.003, **kw)
    assert v.outcome == "rejected" and v.ci_low > -0.003


def test_confirmed_exactly_when_the_interval_clears_the_margin():
    rng = np.random.default_rng(4)
    for _ in range(200):
        inc = list(BASE + SIGMA * rng.standard_normal(3))
        cand = list(BASE + rng.uniform(-3, 1) * SIGMA + SIGMA * rng.standard_normal(int(rng.integers(1, 6))))
        m = float(rng.choice([0.0, 0.001]))
        v = judge(
            inc,
            cand,
            alpha=0.05,
            min_effect=m,
            noise_std=SIGMA,
            noise_df=5,
            seeds_max=5,
            looks=max(1, len(cand) - 1),
        )
        assert (v.outcome == "confirmed") == (v.ci_high < -m)
        assert v.ci_low < v.delta < v.ci_high


def test_without_a_noise_model_it_is_scipys_welch():
    rng = np.random.default_rng(5)
    inc, cand = BASE + SIGMA * rng.standard_normal(4), BASE - 0.002 + 2 * SIGMA * rng.standard_normal(3)
    v = judge(list(inc), list(cand), alpha=0.05, seeds_max=3)
    ref = stats.ttest_ind(cand, inc, equal_var=False, alternative="less")
    assert v.p_value == pytest.approx(ref.pvalue)
    assert v.df == pytest.approx(ref.df)
    one = judge([BASE], [BASE - 0.01], alpha=0.05, seeds_max=3)
    assert one.outcome == "inconclusive" and one.need_more and one.p_value is None


def test_look_alpha_spends_between_bonferroni_and_nothing():
    assert look_alpha(0.05, (5,), 3) == 0.05
    a4 = look_alpha(0.05, (2, 3, 4, 5), 3)
    assert 0.05 / 4 < a4 < 0.05
    assert look_alpha(0.05, (1, 2, 3, 4, 5), 3) < a4  # more looks, less per look
    assert look_alpha(0.05, (2, 3, 4, 5), 3) == a4  # deterministic


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        judge([1.0, float("nan")], [1.0], alpha=0.05, seeds_max=3)
    with pytest.raises(ValueError):
        judge([1.0], [], alpha=0.05, seeds_max=3)
    with pytest.raises(ValueError):
        judge([1.0, 1.1], [1.0, 1.1], alpha=0.7, seeds_max=3)


# ------------------------------------------------------------------------------ record rule


FRONTIER = 1.0611


def test_nats_to_bpb_matches_the_challenge_figures():
    assert nats_to_bpb(0.005, 1, SP1024_BYTES_PER_TOKEN) == pytest.approx(0.0030, abs=0.0001)
    # the baseline's exact log line: val_loss 2.07269931 nats <-> val_bpb 1.22436570
    assert nats_to_bpb(2.07269931, 1, SP1024_BYTES_PER_TOKEN) == pytest.approx(1.22436570, abs=1e-8)
    assert nats_to_bpb(1.0, 100, 250) == pytest.approx(0.4 / math.log(2))


def test_record_three_seeds_clearly_below_by_0_004_is_a_record():
    v = judge_record([FRONTIER - 0.0041, FRONTIER - 0.0040, FRONTIER - 0.0039], FRONTIER)
    assert v.outcome == "confirmed" and v.p_value < 0.01
    assert v.margin == pytest.approx(0.00295, abs=0.00002)


def test_record_only_0_001_below_is_not_a_record():
    v = judge_record([FRONTIER - 0.0011, FRONTIER - 0.0010, FRONTIER - 0.0009], FRONTIER)
    assert v.outcome == "rejected" and v.p_value > 0.5


def test_record_at_8xh100_noise_three_seeds_0_004_below_are_not_enough_at_p_001():
    cand = [FRONTIER - 0.004 + d for d in (-0.00054, 0.0, 0.00054)]
    v = judge_record(cand, FRONTIER)
    assert v.outcome == "inconclusive" and 0.01 < v.p_value < 0.05
    assert judge_record(cand, FRONTIER, p_threshold=0.25).outcome == "confirmed"  # late-April practice


def test_record_against_frontier_seeds_is_scipys_welch_on_the_shifted_frontier():
    cand = [FRONTIER - 0.005 + d for d in (-0.0004, 0.0, 0.0004)]
    front = [FRONTIER - 0.0003, FRONTIER, FRONTIER + 0.0003]
    bpt = 2.5
    v = judge_record(cand, front, bytes_per_token=bpt)
    margin = nats_to_bpb(0.005, 1, bpt)
    ref = stats.ttest_ind(cand, np.array(front) - margin, equal_var=False, alternative="less")
    assert v.p_value == pytest.approx(ref.pvalue) and v.df == pytest.approx(ref.df)
    summary = judge_record(
        cand,
        float(np.mean(front)),
        frontier_std=float(np.std(front, ddof=1)),
        frontier_n=3,
        bytes_per_token=bpt,
    )
    assert summary.p_value == pytest.approx(ref.pvalue)
    single = judge_record(cand, [FRONTIER], bytes_per_token=bpt)
    assert single.p_value == pytest.approx(judge_record(cand, FRONTIER, bytes_per_token=bpt).p_value)


# ------------------------------------------------------------------------------ noise model


def test_no_measurement_means_the_prior():
    nm = noise_model([[1.22]], 0.003, "h100x1", "h100x1")
    assert nm.source == "prior" and nm.std == 0.003 and nm.df == PRIOR_DF and nm.n == 1
    with pytest.raises(ValueError):
        noise_model([1.22], None, "t", "h")


def test_two_lucky_runs_are_shrunk_toward_the_prior():
    nm = noise_model([1.22400, 1.22401], 0.003, "t", "h")
    assert nm.source == "pooled" and nm.df == PRIOR_DF + 1
    assert nm.measured_std < 1e-4
    assert 0.002 < nm.std < 0.003  # mostly prior: one measured df against two
    assert nm.std == pytest.approx(math.sqrt(PRIOR_DF / (PRIOR_DF + 1)) * 0.003, rel=1e-3)


def test_many_runs_override_the_prior():
    rng = np.random.default_rng(6)
    runs = [list(1.22 + 0.001 * rng.standard_normal(5)) for _ in range(6)]  # 24 within-group df
    nm = noise_model(runs, 0.003, "t", "h")
    assert nm.source == "measured" and nm.groups == 6 and nm.n == 30
    assert abs(nm.std - 0.001) < abs(nm.std - 0.003)
    expected = math.sqrt((PRIOR_DF * 0.003**2 + 24 * nm.measured_std**2) / (PRIOR_DF + 24))
    assert nm.std == pytest.approx(expected) and nm.df == PRIOR_DF + 24


def test_groups_pool_their_spread_not_their_means():
    g1, g2 = [1.20, 1.202, 1.204], [1.30, 1.302, 1.304]  # two incumbents 0.1 apart, spread 0.002
    nm = noise_model([g1, g2], None, "t", "h")
    assert nm.source == "measured" and nm.std == pytest.approx(0.002) and nm.df == 4


def test_diverged_runs_are_not_noise():
    with pytest.raises(ValueError):
        noise_model([1.2, float("inf")], 0.003, "t", "h")


def test_shrinkage_beats_the_raw_std_of_few_runs():
    rng = np.random.default_rng(7)
    sims = SIGMA * rng.standard_normal((2000, 3))
    raw = sims.std(axis=1, ddof=1)
    shrunk = np.array([noise_model(list(r), SIGMA, "t", "h").std for r in sims])
    assert np.mean((shrunk - SIGMA) ** 2) < 0.5 * np.mean((raw - SIGMA) ** 2)


# ------------------------------------------------------------------------------ the simulated trainer


def test_simtrainer_truth_interactions_and_noise():
    sim = SimTrainer(
        {"a": -0.004, "b": -0.002, "c": 0.003}, {frozenset({"a", "b"}): 0.001}, noise_std=SIGMA, seed=0
    )
    assert sim.true_bpb({"a", "b"}) == pytest.approx(sim.baseline - 0.005)
    assert sim.effect(frozenset({"a"}), "b") == pytest.approx(-0.001)
    assert sim.run(frozenset({"a"}), 3) == sim.run(frozenset({"a"}), 3)  # seeded runs repeat
    draws = np.array([sim.run(frozenset(), s) for s in range(400)])
    assert draws.std(ddof=1) == pytest.approx(SIGMA, rel=0.15)
    assert sim.runs == 402 and sim.device_seconds == 402 * sim.run_seconds
    with pytest.raises(ValueError):
        SimTrainer({"a": 0.0}, {frozenset({"a", "z"}): 0.1})


def test_benchmark_rules_never_beat_the_oracle_and_the_loop_keeps_fewer_false_wins():
    loop_false = auto_false = 0
    for rep in range(4):
        techniques, interactions = make_scenario(20, np.random.default_rng(rep))
        ideas = list(techniques)

        def fresh(rep=rep, techniques=techniques, interactions=interactions):
            return SimTrainer(techniques, interactions, noise_std=SIGMA, seed=rep)

        oracle = rule_oracle(fresh(), ideas, 60)
        loop = rule_loop(fresh(), ideas, 60, LOOP, repeat=True)
        auto = rule_single_run(fresh(), ideas, 60, repeat=True)
        for t in (loop, auto):
            assert t.true_gain <= oracle.true_gain + 1e-12
            assert t.runs <= 60
        loop_false += loop.kept_null
        auto_false += auto.kept_null
    assert loop_false < auto_false
