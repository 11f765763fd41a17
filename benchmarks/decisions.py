"""Decision rules at equal compute on a simulated trainer whose truth is known.

Rules compared, each given the same ideas and the same cap on runs:
  loop        this project: A/A runs of the incumbent -> noise model, 2 seeds per candidate, one more
              seed at a time while ambiguous (up to 5), sequential Welch via agent.judge.judge, confirmed
              wins stacked and the new incumbent re-measured (tiers.toml defaults)
  loop-fast   the same rule set for screening: 5 A/A runs, 1 first seed, early futility stop, alpha 0.1
  autoresearch one seed per idea, keep if lower than the incumbent's single run
  random      one run per idea (spent), keep with probability 1/2
  oracle      one run per idea, keeps exactly the true wins (the ceiling at that compute)

Scored with the truth: share of kept changes that really help (on the stack they were added to), true
improvement of the final stack over the baseline, what the rule believed it gained, false-win rate
(kept / tested among ideas that do not help), harmful keeps, runs spent, ideas tested.

    python benchmarks/decisions.py [--reps 60] [--budget 100] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.judge import judge, noise_model  # noqa: E402
from testing.simtrainer import NOISE_1XH100, NOISE_8XH100, SimTrainer, make_scenario  # noqa: E402


@dataclass
class LoopConfig:
    name: str = "loop"
    noise_runs: int = 3
    seeds_initial: int = 2
    seeds_max: int = 5
    alpha: float = 0.05
    min_effect: float = 0.0
    futility_p: float | None = 0.8
    prior_std: float | None = None  # the tier's typical_noise; None: the trainer's true noise


# The tier defaults (tiers.toml: 3 A/A runs, 2..5 seeds, alpha 0.05), and a screening setting that
# spends less on ideas that look bad and more on the incumbent, whose runs every comparison reuses:
# 5 A/A runs, one first seed, a futility stop as soon as the estimate points the wrong way, alpha 0.1.
LOOP = LoopConfig()
LOOP_FAST = LoopConfig(name="loop-fast", noise_runs=5, seeds_initial=1, alpha=0.1, futility_p=0.5)


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
    tally, stack, seed = Tally(), frozenset(), 0
    prior = sim.noise_std if cfg.prior_std is None else cfg.prior_std

    def runs(st: frozenset, k: int) -> list[float]:
        nonlocal seed
        out = [sim.run(st, seed + i) for i in range(k)]
        seed += k
        return out

    incumbent = runs(stack, cfg.noise_runs)
    groups = [incumbent]
    baseline_measured = float(np.mean(incumbent))
    pending = list(ideas)
    while pending:
        retry = []
        for idea in pending:
            if sim.runs + cfg.seeds_initial > budget:
                return tally.close(sim, stack, baseline_measured - float(np.mean(incumbent)))
            nm = noise_model(groups, prior, "sim", "sim")
            cand_stack = stack | {idea}
            cand = runs(cand_stack, cfg.seeds_initial)
            look = 1
            while True:
                v = judge(incumbent, cand, alpha=cfg.alpha, min_effect=cfg.min_effect, noise_std=nm.std,
                          noise_df=nm.df, seeds_max=cfg.seeds_max, looks=look, futility_p=cfg.futility_p)
                if not v.need_more or sim.runs >= budget:
                    break
                cand += runs(cand_stack, 1)
                look += 1
            if v.need_more:  # ran out of budget mid-experiment: no decision
                break
            keep = v.outcome == "confirmed"
            stack = tally.consider(sim, stack, idea, keep)
            if keep:
                # the candidate's runs are the new incumbent's; top them up to an A/A measurement
                incumbent = cand + runs(stack, max(0, min(cfg.noise_runs - len(cand), budget - sim.runs)))
                groups.append(incumbent)
            elif v.outcome == "inconclusive":
                retry.append(idea)
        pending = retry if repeat else []
    return tally.close(sim, stack, baseline_measured - float(np.mean(incumbent)))


def rule_single_run(sim: SimTrainer, ideas: list[str], budget: int, repeat: bool,
                    coin: np.random.Generator | None = None) -> Tally:
    """One run per idea. Autoresearch keeps it if lower than the incumbent's single run; with `coin`,
    a fair coin decides instead (random choice). With `repeat`, ideas not kept are proposed again."""
    tally, stack = Tally(), frozenset()
    first = best = sim.run(stack, 0)
    pending = list(ideas)
    while pending and sim.runs < budget:
        for idea in pending:
            if sim.runs >= budget:
                break
            value = sim.run(stack | {idea}, tally.tests + 1)
            keep = value < best if coin is None else bool(coin.random() < 0.5)
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


RULES = (LOOP.name, LOOP_FAST.name, "autoresearch", "random", "oracle")


def run_setting(noise: float, reps: int, budget: int, n_ideas: int, repeat: bool) -> dict[str, dict]:
    tallies: dict[str, list[Tally]] = {r: [] for r in RULES}
    for rep in range(reps):
        techniques, interactions = make_scenario(n_ideas, np.random.default_rng(rep))
        ideas = list(techniques)
        fresh = functools.partial(SimTrainer, techniques, interactions, noise_std=noise, seed=rep)

        for cfg in (LOOP, LOOP_FAST):
            tallies[cfg.name].append(rule_loop(fresh(), ideas, budget, cfg, repeat))
        tallies["autoresearch"].append(rule_single_run(fresh(), ideas, budget, repeat))
        tallies["random"].append(rule_single_run(fresh(), ideas, budget, repeat,
                                                 coin=np.random.default_rng(10_000 + rep)))
        tallies["oracle"].append(rule_oracle(fresh(), ideas, budget))
    out = {}
    for rule, ts in tallies.items():
        gains = np.array([t.true_gain for t in ts])
        kept = sum(t.kept for t in ts)
        out[rule] = dict(
            precision=sum(t.kept_real for t in ts) / kept if kept else float("nan"),
            true_gain=float(gains.mean()),
            true_gain_se=float(gains.std(ddof=1) / np.sqrt(len(gains))),
            claimed_gain=float(np.mean([t.claimed_gain for t in ts])),
            false_win_rate=sum(t.kept_null for t in ts) / max(1, sum(t.tested_null for t in ts)),
            harmful_kept=float(np.mean([t.kept_harmful for t in ts])),
            kept=kept / len(ts),
            runs=float(np.mean([t.runs for t in ts])),
            ideas=float(np.mean([len(t.ideas) for t in ts])),
            tests=float(np.mean([t.tests for t in ts])),
        )
    return out


def print_table(title: str, res: dict[str, dict]) -> None:
    print(f"\n{title}")
    head = (f"{'rule':<13}{'kept real':>10}{'true gain':>11}{'+-se':>9}{'claimed':>10}{'false-win':>10}"
            f"{'harm kept':>10}{'kept':>6}{'ideas':>7}{'tests':>7}{'runs':>7}")
    print(head)
    print("-" * len(head))
    for rule, r in res.items():
        print(f"{rule:<13}{r['precision']:>10.2f}{r['true_gain']:>11.5f}{r['true_gain_se']:>9.5f}"
              f"{r['claimed_gain']:>10.5f}{r['false_win_rate']:>10.3f}{r['harmful_kept']:>10.2f}"
              f"{r['kept']:>6.1f}{r['ideas']:>7.1f}{r['tests']:>7.1f}{r['runs']:>7.1f}")


SCENARIOS = {
    # the shipped battle plan's size: the queue runs out, rules may re-propose what they did not keep
    "battle plan": 20,
    # an endless stream of ideas (an LLM proposing): throughput against care
    "idea stream": 150,
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--budget", type=int, default=100, help="runs per repetition, every rule")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    results: dict[str, dict] = {}
    for scenario, n_ideas in SCENARIOS.items():
        for hw, noise in (("1xH100", NOISE_1XH100), ("8xH100", NOISE_8XH100)):
            key = f"{scenario}, {hw}"
            results[key] = run_setting(noise, args.reps, args.budget, n_ideas, repeat=True)
            if not args.json:
                print_table(f"{scenario} ({n_ideas} ideas), {hw}: seed noise std {noise:g} bpb, "
                            f"budget {args.budget} runs", results[key])
    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"""
ideas: 30% wins (-0.0005..-0.006 bpb), 40% neutral (exactly 0), 30% harmful (+0.0005..+0.01); 10% of
win pairs redundant (together they lose half the smaller gain). {args.reps} repetitions per table,
{time.time() - t0:.1f} s.
{LOOP.name}: A/A {LOOP.noise_runs} runs, {LOOP.seeds_initial}..{LOOP.seeds_max} seeds, alpha {LOOP.alpha}, \
futility p > {LOOP.futility_p}; {LOOP_FAST.name}: A/A {LOOP_FAST.noise_runs} runs, \
{LOOP_FAST.seeds_initial}..{LOOP_FAST.seeds_max} seeds, alpha {LOOP_FAST.alpha}, futility p > {LOOP_FAST.futility_p}.
Both re-test inconclusive ideas when the queue is done, and stop when nothing is left to test.
kept real: share of kept changes that truly help the stack they joined; true gain: baseline - final
true bpb (higher is better); claimed: the gain the rule's own runs show; false-win: kept / tested
among ideas that do not help; ideas: distinct ideas tested; tests: decisions made.""")
    return results


if __name__ == "__main__":
    main()
