"""The paired judge as a specification: per-seed differences, a kind-pooled noise model, sequential looks.

Both arms of an experiment run the same seeds, so each seed's luck (initial weights, data order) is
shared. The simulations draw every run as  true bpb + seed effect (shared by both arms) + run noise,
sized like the cpu-smoke ledger (A/A std about 0.012, per-seed differences about 0.003). They run the
session loop's own seed schedule (agent.judge.sequential_experiment) with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.judge import (
    PAIRED_POOL_DF_CAP,
    judge_matched,
    judge_paired,
    noise_kind,
    noise_model,
    paired_pool,
    paired_prior,
    sequential_experiment,
)
from memory.records import DecisionRecord

BASE = 1.75
SEED_SD = 0.012  # shared per-seed effect (cpu-smoke A/A std 0.009-0.015)
RUN_SD = 0.002  # per-run noise: per-seed differences sd about sqrt(2) x 0.002 = 0.0028


def loop(
    effects,
    *,
    seed,
    seeds_initial=2,
    seeds_max=4,
    run_sd=RUN_SD,
    paired=True,
    alpha=0.05,
    kinds=None,
    run_sds=None,
    pool_by_kind=True,
    per_incumbent=10,
):
    """Experiments the way the session loop runs them: 3 A/A runs of the incumbent on seeds 0..2 give the
    noise model (a new incumbent every per_incumbent experiments: its runs' luck is shared by all the
    experiments compared against it, so a false-win rate is only meaningful over many incumbents); each candidate runs seeds 0, 1, ... through sequential_experiment; the incumbent gets a
    run on any seed it lacks. Per-seed differences of paired decisions feed later experiments' prior.
    Returns the outcome and the number of candidate runs of every experiment."""
    rng = np.random.default_rng(seed)
    seed_fx = SEED_SD * rng.standard_normal(64)
    pools: dict[str, list[list[float]]] = {}
    out = []
    for i, effect in enumerate(effects):
        if i % per_incumbent == 0:  # a new incumbent (a kept change, a new session): fresh A/A runs
            inc = {s: BASE + seed_fx[s] + RUN_SD * rng.standard_normal() for s in range(3)}
            nm = noise_model(list(inc.values()), 0.006, "t", "h")
        kind = kinds[i] if kinds else "architecture"
        sd = run_sds[i] if run_sds else run_sd
        key = kind if pool_by_kind else "all"
        prior = paired_prior(pools.get(key, []), nm.std, nm.df, kind) if paired else None
        # a candidate's runs share the seed effect with the incumbent's on the same seed; its own noise
        # is fresh
        cand_noise = sd * rng.standard_normal(seeds_max)

        measure = make_measure(rng, seed_fx, dict(inc), effect, cand_noise, kind, paired)
        v = sequential_experiment(
            measure,
            seeds=range(seeds_max),
            seeds_initial=seeds_initial,
            seeds_max=seeds_max,
            alpha=alpha,
            noise_std=nm.std,
            noise_df=nm.df,
            diff_prior=prior,
        )
        assert v is not None and not v.need_more
        if v.test == "paired":
            pools.setdefault(key, []).append(v.seed_diffs)
        out.append((v.outcome, v.n_candidate, v.test))
    return out


def make_measure(rng, seed_fx, incumbent, effect, cand_noise, kind, paired):
    cand: dict[int, float] = {}

    def measure(seeds):
        for s in seeds:
            incumbent.setdefault(s, BASE + seed_fx[s] + RUN_SD * rng.standard_normal())
            # an eval-only change scores the incumbent's own weights: only its scoring noise is new
            cand[s] = (incumbent[s] if kind == "eval" else BASE + seed_fx[s]) + effect + cand_noise[s]
        return (
            {s: incumbent[s] for s in cand} if paired else {s: v for s, v in incumbent.items() if s < 3}
        ), dict(cand)

    return measure


def rate(out, outcome="confirmed"):
    return sum(o == outcome for o, _, _ in out) / len(out)


@pytest.mark.parametrize("seeds_initial", [1, 2])
def test_2000_null_experiments_with_a_shared_seed_effect_keep_false_wins_at_or_below_alpha(seeds_initial):
    out = loop([0.0] * 2000, seed=7 + seeds_initial, seeds_initial=seeds_initial)
    assert all(t == "paired" for _, _, t in out)
    assert rate(out) <= 0.05, rate(out)


def test_peeking_without_alpha_spending_would_break_the_bound():
    """The Pocock level is what holds the bound: at full alpha on every look the same nulls win more often."""
    rng = np.random.default_rng(3)
    prior = paired_prior([], SEED_SD, 2.0, "architecture").model_copy(
        update=dict(pool_std=RUN_SD * math.sqrt(2), pool_df=1e6)
    )
    wins_spent = wins_naive = 0
    for _ in range(2000):
        d = RUN_SD * math.sqrt(2) * rng.standard_normal(4)
        spent = naive = False
        for n in range(1, 5):
            spent |= (
                judge_paired(d[:n], prior=prior, alpha=0.05, seeds_max=4, looks=n, futility_p=None).outcome
                == "confirmed"
            )
            naive |= (
                judge_paired(d[:n], prior=prior, alpha=0.05, seeds_max=n, looks=1, futility_p=None).outcome
                == "confirmed"
            )
        wins_spent += spent
        wins_naive += naive
    assert wins_spent / 2000 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)
    assert wins_naive / 2000 > 0.08


def test_pairing_finds_an_effect_the_unpaired_test_misses():
    effects = [-0.005] * 200
    paired = loop(effects, seed=11)
    unpaired = loop(effects, seed=11, paired=False)
    assert all(t == "welch" for _, _, t in unpaired)
    assert rate(paired) >= 0.8, rate(paired)
    assert rate(unpaired) <= 0.25, rate(unpaired)


def test_an_eval_only_changes_tiny_spread_cannot_vouch_for_an_architecture_change():
    """Eval-only changes (differences sd 0.0003) interleaved with null architecture changes (0.004):
    pooled by kind, the architecture nulls stay at alpha; one pool for all would let them win far more."""
    n = 1200
    kinds = ["eval" if i % 2 == 0 else "architecture" for i in range(n)]
    run_sds = [0.0002 if k == "eval" else 0.003 for k in kinds]
    effects = [0.0] * n
    by_kind = loop(effects, seed=5, kinds=kinds, run_sds=run_sds, seeds_initial=1)
    one_pool = loop(effects, seed=5, kinds=kinds, run_sds=run_sds, seeds_initial=1, pool_by_kind=False)
    arch = [o for o, k in zip(by_kind, kinds, strict=True) if k == "architecture"]
    arch_one = [o for o, k in zip(one_pool, kinds, strict=True) if k == "architecture"]
    assert rate(arch) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(arch)), rate(arch)
    assert rate(arch_one) > 2 * rate(arch)


def test_the_prior_starts_at_the_unpaired_spread_and_caps_the_pools_weight():
    fresh = paired_prior([], 0.01, 4.0, "architecture")
    assert fresh.pool_source == "aa" and fresh.std == pytest.approx(0.01 * math.sqrt(2))
    many = paired_prior([[0.001, 0.003, 0.002, 0.0025]] * 30, 0.01, 4.0, "architecture")
    assert many.pool_source == "kind" and many.pool_experiments == 30
    assert many.pool_df == PAIRED_POOL_DF_CAP
    assert many.std < 0.001  # ninety pooled df of sd ~0.0009 replace the A/A fallback (0.014)
    # an experiment that scatters far more than its kind's pool is not hidden by it
    v = judge_paired([-0.02, 0.015, -0.03, 0.01], prior=many, alpha=0.05, seeds_max=4, looks=3)
    assert v.paired_noise.own_std > 0.015 and v.paired_noise.std > 0.01
    assert v.outcome != "confirmed"


def test_unmatched_seeds_fall_back_to_welch_and_say_so():
    prior = paired_prior([], 0.01, 4.0, "architecture")
    inc = {1337: 1.70, 1338: 1.71, 1339: 1.72}
    v = judge_matched(
        inc,
        {1337: 1.69, 1400: 1.695},
        alpha=0.05,
        seeds_max=4,
        diff_prior=prior,
        noise_std=0.01,
        noise_df=4.0,
    )
    assert v.test == "welch" and v.seed_diffs == []
    p = judge_matched(
        inc, {1337: 1.69, 1338: 1.70}, alpha=0.05, seeds_max=4, diff_prior=prior, noise_std=0.01, noise_df=4.0
    )
    assert p.test == "paired" and p.seeds == [1337, 1338]
    assert p.seed_diffs == pytest.approx([-0.01, -0.01]) and p.paired_noise is not None


def test_eval_only_env_changes_are_their_own_kind():
    assert noise_kind(None, ["EVAL_STRIDE"], script_changed=False) == "eval"
    assert noise_kind("ttt", ["TTT_ENABLE"], script_changed=False) == "eval"
    assert noise_kind(None, ["EVAL_STRIDE", "MLP_MULT"], script_changed=False) == "architecture"
    assert noise_kind(None, ["MATRIX_LR"], script_changed=False) == "training"


def test_the_pool_reads_paired_decisions_of_the_same_kind_tier_and_hardware():
    def dec(exp, kind, tier="cpu-smoke", diffs=(0.001, 0.002)):
        nm = paired_prior([], 0.01, 4.0, kind)
        return DecisionRecord(
            session="s",
            experiment=exp,
            candidate="c",
            tier=tier,
            hardware="cpu",
            outcome="rejected",
            kept=False,
            test="paired",
            seed_diffs=list(diffs),
            paired_noise=nm,
        )

    ds = [
        dec("a", "eval"),
        dec("b", "architecture"),
        dec("c", "architecture", tier="cpu-tiny"),
        dec("d", "architecture", diffs=(0.001,)),
    ]
    assert paired_pool(ds, tier="cpu-smoke", hardware="cpu", kind="architecture") == [[0.001, 0.002]]
    assert paired_pool(ds, tier="cpu-smoke", hardware="cpu", kind="architecture", exclude="b") == []


def test_the_first_experiment_of_a_kind_is_judged_on_its_own_spread_not_swamped_by_the_aa_bound():
    """cpu-smoke ledger, sliding_eval (eval only) on 4 matched seeds with an A/A std of 0.0151: the differences
    agree to 0.0007, so the change is a win; the sqrt(2) x A/A bound (0.021) would have hidden it."""
    prior = paired_prior([], 0.0151, 5.0, "eval")
    diffs = [-0.0028, -0.00237, -0.00223, -0.00118]
    looks = [judge_paired(diffs[:n], prior=prior, alpha=0.05, seeds_max=4, looks=n - 1) for n in (2, 3, 4)]
    assert looks[0].outcome != "confirmed"  # two differences: only the bound speaks
    assert looks[-1].outcome == "confirmed" and looks[-1].paired_noise.df == 3


def test_2000_first_of_their_kind_null_experiments_keep_false_wins_at_or_below_alpha():
    rng = np.random.default_rng(17)
    wins = 0
    for _ in range(2000):
        prior = paired_prior([], 0.012, 5.0, "architecture")
        d = RUN_SD * math.sqrt(2) * rng.standard_normal(4)
        for look, n in enumerate((2, 3, 4), start=1):
            v = judge_paired(d[:n], prior=prior, alpha=0.05, seeds_max=4, looks=look)
            if not v.need_more:
                break
        wins += v.outcome == "confirmed"
    assert wins / 2000 <= 0.05, wins / 2000
