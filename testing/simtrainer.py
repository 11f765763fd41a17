"""A simulated trainer whose truth is known: technique effects, pairwise interactions and seed noise.

Benchmarks (decisions, planners, calibration) run their rules against it and then score them with the
truth they could not see. Values are val_bpb; a technique's effect is its bpb delta (negative is a win).

Noise figures from shared/challenge.md: the 3-seed std of val_bpb was 0.0034 on 1xH100 (about 1,250
steps) and a median 0.00054 on 8xH100 records.

A run is  true bpb + seed effect + run noise. The seed effect (initial weights, data order) is shared by
every configuration run on that seed; the run noise is the configuration's own interaction with the
seed (and a GPU's nondeterminism). How a total seed std splits between them comes from the cpu-smoke
ledger (issue 10): its A/A std was about 0.012 while the per-seed differences of matched arms had sds
of 0.0012-0.0100 (median about 0.003), so the run noise is about 0.003 / sqrt(2) = 0.0021, a share
RUN_SHARE = 0.18 of the total std; split_noise applies that share to a tier's total.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

NOISE_1XH100 = 0.0034
NOISE_8XH100 = 0.00054
BASELINE_BPB = 1.2244  # the challenge's baseline train_gpt.py
RUN_SECONDS = 600.0  # one run: 600 s of training
RUN_SHARE = 0.18  # run noise / total seed std, from the cpu-smoke ledger (see above)


def split_noise(total: float, run_share: float = RUN_SHARE) -> tuple[float, float]:
    """(seed_sd, run_sd) whose squares add up to total^2, with run_sd = run_share * total."""
    run = run_share * total
    return (total**2 - run**2) ** 0.5, run


class SimTrainer:
    """`run(stack, seed)` is a noisy draw around `true_bpb(stack)`; the same stack and seed give the same value.

    noise_std is the run noise (independent per stack and seed); seed_sd the seed effect every stack
    shares on one seed (0 by default: independent runs).

    Seeded runs are reproducible, like a real trainer with a fixed seed, so strategies that run the
    same stack with the same seed see the same number (common random numbers make comparisons fairer).
    `runs` and `device_seconds` count what was spent.
    """

    def __init__(
        self,
        techniques: dict[str, float],
        interactions: dict[frozenset, float] | None = None,
        noise_std: float = NOISE_1XH100,
        seed: int = 0,
        *,
        baseline: float = BASELINE_BPB,
        run_seconds: float = RUN_SECONDS,
        seed_sd: float = 0.0,
    ):
        self.techniques = dict(techniques)
        self.interactions = {frozenset(k): v for k, v in (interactions or {}).items()}
        for pair in self.interactions:
            if len(pair) != 2 or not pair <= self.techniques.keys():
                raise ValueError(f"interaction {set(pair)} must name two known techniques")
        self.noise_std = noise_std
        self.seed_sd = seed_sd
        self.seed = seed
        self.baseline = baseline
        self.run_seconds = run_seconds
        self.runs = 0

    @property
    def device_seconds(self) -> float:
        return self.runs * self.run_seconds

    def true_bpb(self, stack: Iterable[str]) -> float:
        stack = frozenset(stack)
        unknown = stack - self.techniques.keys()
        if unknown:
            raise KeyError(f"unknown techniques {sorted(unknown)}")
        value = self.baseline + sum(self.techniques[t] for t in stack)
        return value + sum(v for pair, v in self.interactions.items() if pair <= stack)

    def effect(self, stack: Iterable[str], technique: str) -> float:
        """The true delta of adding `technique` to `stack` (interactions included): the ground truth of a win."""
        stack = frozenset(stack)
        return self.true_bpb(stack | {technique}) - self.true_bpb(stack - {technique})

    def run(self, stack: frozenset[str], seed: int) -> float:
        self.runs += 1
        key = f"{self.seed}|{','.join(sorted(stack))}|{seed}".encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
        return self.true_bpb(stack) + self.seed_effect(seed) + self.noise_std * float(rng.standard_normal())

    def seed_effect(self, seed: int) -> float:
        if not self.seed_sd:
            return 0.0
        key = f"{self.seed}|seed|{seed}".encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
        return self.seed_sd * float(rng.standard_normal())


def make_scenario(
    n: int,
    rng: np.random.Generator,
    *,
    share_win: float = 0.3,
    share_harmful: float = 0.3,
    win: tuple[float, float] = (0.0005, 0.006),
    harm: tuple[float, float] = (0.0005, 0.01),
    interaction_rate: float = 0.1,
) -> tuple[dict[str, float], dict[frozenset, float]]:
    """A queue of n ideas: wins, neutral (exactly 0) and harmful ones, sized like challenge.md's deltas.

    Interactions: each pair of wins overlaps with probability interaction_rate (redundant techniques,
    e.g. two regularisers): together they lose half of the smaller one's gain. Neutral ideas have no
    interactions, so "neutral" stays a clean null.
    """
    kinds = rng.choice(
        ["win", "neutral", "harmful"], size=n, p=[share_win, 1 - share_win - share_harmful, share_harmful]
    )
    techniques: dict[str, float] = {}
    for i, kind in enumerate(kinds):
        if kind == "win":
            techniques[f"t{i:03d}"] = -float(rng.uniform(*win))
        elif kind == "harmful":
            techniques[f"t{i:03d}"] = float(rng.uniform(*harm))
        else:
            techniques[f"t{i:03d}"] = 0.0
    wins = [t for t, d in techniques.items() if d < 0]
    interactions: dict[frozenset, float] = {}
    for i, a in enumerate(wins):
        for b in wins[i + 1 :]:
            if rng.random() < interaction_rate:
                interactions[frozenset((a, b))] = 0.5 * min(-techniques[a], -techniques[b])
    return techniques, interactions
