"""The decision rules benchmarks/decisions.py compares, on the simulated trainer (testing/simtrainer.py).

Shared by the benchmark and tests/test_judge.py so neither imports the other; the benchmark's docstring
says what each rule is and how it is scored. The loop rules run the session's own code (agent.judge).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.judge import (
    PAIRED_POOL_DF_CAP,
    affordable_seeds,
    noise_model,
    paired_prior,
    sequential_experiment,
)
from testing.simtrainer import SimTrainer


@dataclass
class LoopConfig:
    name: str = "unpaired"
    paired: bool = False
    noise_runs: int = 3
    seeds_initial: int = 2
    seeds_max: int = 5
    alpha: float = 0.05
    min_effect: float = 0.0
    futility_p: float | None = 0.8
    prior_std: float | None = None  # the tier's typical_noise; None: the trainer's true total seed std
    # the tier's paired_noise (sd of per-seed differences from earlier ledgers): None, no figure (the
    # sqrt(2) x A/A bound until the pool has data); "ledger": the figure an earlier ledger of this
    # trainer gives, sqrt(2) x run noise, times paired_noise_scale (1: right; >1 a ledger that
    # over-states the spread, <1 one that under-states it)
    paired_noise: str | None = None
    paired_noise_scale: float = 1.0
    paired_noise_df: float = PAIRED_POOL_DF_CAP
    adaptive_seeds: bool = False  # seeds_max from agent.judge.affordable_seeds (runs and ideas left)
    # once the queue is done, a rejected idea whose interval still admits a win this large (bpb) gets one
    # more look (agent/playbook.py); None: rejections are final. An adaptive tier runs every further
    # look of an idea on seeds it has not run (agent/experiment.py, first_seed)
    retest_effect: float | None = None


# The tier defaults (tiers.toml: 3 A/A runs, 2..5 seeds, alpha 0.05), unpaired and paired; and paired
# screening (tiers.toml keys seeds_initial, seeds_max, alpha, futility_p, noise_runs): one first seed
# (the incumbent's run on it is shared by every idea, so an idea costs one run like a greedy rule's), a
# second only while the evidence is close (p between alpha and 0.2), alpha 0.02 so that the kept
# changes stay true wins. Chosen on a grid (futility 0.2/0.35/0.5 x seeds_max 2/3/4 x alpha 0.02/0.03,
# 12 repetitions): the highest true gain at >= 95% kept real on both noise levels.
LOOP = LoopConfig()
PAIRED = LoopConfig(name="paired", paired=True)
SCREEN = LoopConfig(
    name="screen", paired=True, noise_runs=2, seeds_initial=1, seeds_max=2, alpha=0.02, futility_p=0.2
)
TRIAGE = LoopConfig(
    name="triage",
    paired=True,
    noise_runs=1,
    seeds_initial=1,
    seeds_max=8,
    alpha=0.04,
    futility_p=0.5,
    paired_noise="ledger",
    adaptive_seeds=True,
    retest_effect=0.0005,
)


@dataclass
class Tally:
    kept: int = 0
    kept_real: int = 0
    kept_harmful: int = 0
    tests: int = 0
    tested_null: int = 0  # tests of ideas whose true effect on the stack they met is >= 0
    kept_null: int = 0
    ideas: set = field(default_factory=set)
    runs: int = 0
    true_gain: float = 0.0  # baseline true bpb - final stack true bpb (positive is better)
    claimed_gain: float = 0.0  # what the rule's own measurements say it gained
    stack: frozenset = field(default_factory=frozenset)

    def consider(self, sim: SimTrainer, stack: frozenset, idea: str, keep: bool) -> frozenset:
        effect = sim.effect(stack, idea)
        self.tests += 1
        self.ideas.add(idea)
        self.tested_null += effect >= 0
        if not keep:
            return stack
        self.kept += 1
        self.kept_real += effect < 0
        self.kept_harmful += effect > 0
        self.kept_null += effect >= 0
        return stack | {idea}

    def close(self, sim: SimTrainer, stack: frozenset, claimed: float) -> Tally:
        self.runs, self.stack, self.claimed_gain = sim.runs, stack, claimed
        self.true_gain = sim.true_bpb(frozenset()) - sim.true_bpb(stack)
        return self


def rule_loop(sim: SimTrainer, ideas: list[str], budget: int, cfg: LoopConfig, repeat: bool) -> Tally:
    """The session loop's decisions; with `repeat`, inconclusive ideas are re-tested (the playbook does)."""
    tally, stack = Tally(), frozenset()
    prior = float(np.hypot(sim.noise_std, sim.seed_sd)) if cfg.prior_std is None else cfg.prior_std
    pool: list[list[float]] = []  # per-seed differences of earlier paired experiments (one kind here)
    tier_std = (
        float(np.sqrt(2) * sim.noise_std * cfg.paired_noise_scale) if cfg.paired_noise == "ledger" else None
    )

    def measure_incumbent(st: frozenset) -> dict[int, float]:
        # ensure_noise: A/A runs of the (new) incumbent on the first noise_runs seeds
        return {s: sim.run(st, s) for s in range(min(cfg.noise_runs, max(0, budget - sim.runs)))}

    incumbent = measure_incumbent(stack)
    if not incumbent:
        return tally.close(sim, stack, 0.0)
    baseline_measured = float(np.mean(list(incumbent.values())))
    pending = list(ideas)
    tries: dict[str, int] = {}
    second_look: list[str] = []  # rejected, but a worthwhile win is not ruled out
    while pending:
        retry = []
        for k, idea in enumerate(pending):
            if sim.runs + cfg.seeds_initial > budget:
                return tally.close(sim, stack, baseline_measured - float(np.mean(list(incumbent.values()))))
            nm = noise_model(list(incumbent.values()), prior, "sim", "sim")
            cand_stack = stack | {idea}
            cand: dict[int, float] = {}

            def measure(seeds: list[int], cand=cand, cand_stack=cand_stack, inc=incumbent, st=stack):
                missing = [s for s in seeds if s not in inc]
                if sim.runs + len(seeds) + len(missing) > budget:
                    return None
                for s in seeds:
                    cand[s] = sim.run(cand_stack, s)
                for s in missing:  # matched_incumbent: the incumbent runs the seeds it lacks
                    inc[s] = sim.run(st, s)
                return {s: inc[s] for s in cand}, dict(cand)

            first = cfg.seeds_max * tries.get(idea, 0) if cfg.adaptive_seeds else 0
            diff_prior = (
                paired_prior(
                    pool, nm.std, nm.df, "architecture", tier_std=tier_std, tier_df=cfg.paired_noise_df
                )
                if cfg.paired
                else None
            )
            seeds_max = (
                affordable_seeds(
                    budget - sim.runs,
                    len(pending) - k,
                    seeds_initial=cfg.seeds_initial,
                    seeds_max=cfg.seeds_max,
                )
                if cfg.adaptive_seeds
                else cfg.seeds_max
            )
            v = sequential_experiment(
                measure,
                seeds=range(first, first + seeds_max),
                seeds_initial=cfg.seeds_initial,
                seeds_max=seeds_max,
                alpha=cfg.alpha,
                min_effect=cfg.min_effect,
                noise_std=nm.std,
                noise_df=nm.df,
                diff_prior=diff_prior,
                futility_p=cfg.futility_p,
            )
            if v is None or v.need_more:  # ran out of budget mid-experiment: no decision
                pending = []
                break
            if v.test == "paired" and len(v.seed_diffs) >= 2:
                pool.append(v.seed_diffs)
            keep = v.outcome == "confirmed"
            tries[idea] = tries.get(idea, 0) + 1
            stack = tally.consider(sim, stack, idea, keep)
            if keep:  # the incumbent changed: its winning runs serve on their seeds, A/A runs top up to
                # noise_runs (agent/experiment.py, incumbent_runs and ensure_noise)
                incumbent = dict(cand)
                incumbent |= {
                    s: sim.run(stack, s)
                    for s in range(cfg.noise_runs)
                    if s not in incumbent and sim.runs < budget
                }
                if not incumbent:
                    break
            elif v.outcome == "inconclusive":
                retry.append(idea)
            elif (
                cfg.retest_effect is not None
                and tries[idea] == 1
                and v.ci_low is not None
                and v.ci_low < -cfg.retest_effect
            ):
                second_look.append(idea)
        pending = retry if repeat and pending else []
        if not pending and repeat:  # the playbook's last group: one more look at near-miss rejections
            pending, second_look = [i for i in second_look if i not in stack], []
    return tally.close(sim, stack, baseline_measured - float(np.mean(list(incumbent.values()))))


def rule_single_run(
    sim: SimTrainer,
    ideas: list[str],
    budget: int,
    repeat: bool,
    coin: np.random.Generator | None = None,
    fixed_seed: bool = True,
    margin: float = 0.0,
) -> Tally:
    """One run per idea. Autoresearch keeps it if lower than the incumbent's single run; with `coin`,
    a fair coin decides instead (random choice). With `repeat`, ideas not kept are proposed again.
    fixed_seed: every run on seed 0, as autoresearch's train.py does (the greedy rule's best case: the
    seed effect cancels); otherwise a new seed per run. margin: keep only when lower by more than this."""
    tally, stack = Tally(), frozenset()
    first = best = sim.run(stack, 0)
    pending = list(ideas)
    while pending and sim.runs < budget:
        for idea in pending:
            if sim.runs >= budget:
                break
            value = sim.run(stack | {idea}, 0 if fixed_seed else tally.tests + 1)
            keep = value < best - margin if coin is None else bool(coin.random() < 0.5)
            stack = tally.consider(sim, stack, idea, keep)
            best = value if keep else best
        pending = [i for i in ideas if i not in stack] if repeat else []
    return tally.close(sim, stack, first - best)


def rule_oracle(sim: SimTrainer, ideas: list[str], budget: int) -> Tally:
    """One run per idea (the cost), keeps exactly the true wins: the ceiling for that compute."""
    tally, stack = Tally(), frozenset()
    sim.run(stack, 0)
    for idea in ideas:
        if sim.runs >= budget:
            break
        sim.run(stack | {idea}, 0)
        stack = tally.consider(sim, stack, idea, sim.effect(stack, idea) < 0)
    gain = sim.true_bpb(frozenset()) - sim.true_bpb(stack)
    return tally.close(sim, stack, gain)


def rule_threshold(sim: SimTrainer, ideas: list[str], budget: int, z: float, repeat: bool = False) -> Tally:
    """The ceiling of one-look rules: one run per idea on seed 0 against the incumbent's run on seed 0, kept
    when the difference is below -z times its true sd (sqrt(2) x run noise, which no real rule knows).

    With one noisy difference per idea, the chance that an idea is a true win falls as the difference
    grows (wins, nulls and harms are location shifts of one normal noise), so under a cap on the share
    of false keeps the best keep rule is a threshold on the difference: sweeping z traces the best true
    gain a one-run-per-idea rule can reach at each precision.
    """
    return rule_single_run(sim, ideas, budget, repeat, margin=z * float(np.sqrt(2) * sim.noise_std))
