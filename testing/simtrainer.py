"""A simulated trainer whose truth is known: technique effects, pairwise interactions and seed noise.

Benchmarks (decisions, planners, calibration) run their rules against it and then score them with the
truth they could not see. Values are val_bpb; a technique's effect is its bpb delta (negative is a win).

Noise figures from shared/challenge.md: the 3-seed std of val_bpb was 0.0034 on 1xH100 (about 1,250
steps) and a median 0.00054 on 8xH100 records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

NOISE_1XH100 = 0.0034
NOISE_8XH100 = 0.00054
BASELINE_BPB = 1.2244  # the challenge's baseline train_gpt.py
RUN_SECONDS = 600.0  # one run: 600 s of training


class SimTrainer:
    """`run(stack, seed)` is a noisy draw around `true_bpb(stack)`; the same stack and seed give the same value.

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
    ):
        self.techniques = dict(techniques)
        self.interactions = {frozenset(k): v for k, v in (interactions or {}).items()}
        for pair in self.interactions:
            if len(pair) != 2 or not pair <= self.techniques.keys():
                raise ValueError(f"interaction {set(pair)} must name two known techniques")
        self.noise_std = noise_std
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
        return self.true_bpb(stack) + self.noise_std * float(rng.standard_normal())


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
    kinds = rng.choice(["win", "neutral", "harmful"], size=n, p=[share_win, 1 - share_win - share_harmful,
                                                                  share_harmful])
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
        for b in wins[i + 1:]:
            if rng.random() < interaction_rate:
                interactions[frozenset((a, b))] = 0.5 * min(-techniques[a], -techniques[b])
    return techniques, interactions
