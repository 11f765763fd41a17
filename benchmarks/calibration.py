"""Promotion to an 8xH100 final: calibrated expected gain against a fixed proxy threshold.

A simulated world whose truth is known. Each technique has a true full-scale delta y and a true proxy
delta x related to it through a noisy mapping that differs by kind (challenge.md: architecture deltas
transfer, training hyperparameters do not):
  architecture  x = y / 0.25 + N(0, 0.002)     (proxy deltas about four times the full-scale ones)
  training      x ~ N(-0.002, 0.008), unrelated to y (short proxies favour e.g. fast EMA decays)
True full-scale deltas: 30% wins -U(0.0003, 0.003), 40% neutral (0), 30% harmful +U(0.0003, 0.003).

Measurements come from two testing/simtrainer.py SimTrainers: the proxy (cpu-smoke, seed std 0.006,
3 seeds per side, the incumbent measured once) and the full scale (8xH100, seed std 0.00054, 3 seeds per
final against one baseline final). A technique is a local win when its one-sided z test passes at
alpha 0.05; every policy then decides, one technique at a time, whether to pay for a final:
  threshold T   promote a local win whose proxy delta is at most -T
  calibrated G  promote a local win whose expected full-scale gain (agent.costs.adopted_gain on
                agent.calibration.predict) is at least G bpb; the fit starts from the published prior
                and is refitted from its own (proxy, final) pairs after every final
  prior only    the calibrated rule without refitting: the published prior throughout
  one fit       the calibrated rule with a single fit for both kinds (architecture's prior)
  oracle        promote exactly the real improvements (the floor on dollars per find)
A final's cost comes from tiers.toml (h100x8-final: 3 seeds, pod start-up, $24/h). A find is a final
that shows an improvement (measured delta < 0) on a technique that truly improves by >= 0.0003 bpb.

    python benchmarks/calibration.py [--reps 200] [--ideas 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.calibration import Pair, fit_calibration, load_prior, predict  # noqa: E402
from agent.costs import adopted_gain, final_seed_seconds  # noqa: E402
from memory.tiers import load_tiers  # noqa: E402
from testing.simtrainer import NOISE_8XH100, SimTrainer  # noqa: E402

PROXY_NOISE = 0.006  # cpu-smoke typical_noise
PROXY_SEEDS = 3
FINAL_SEEDS = 3
ALPHA_Z = 1.6449  # one-sided 0.05
REAL = -0.0003  # a find must truly improve by at least this much
ARCH_SLOPE = 0.25
SHARE_TRAINING = 0.4


@dataclass
class World:
    kinds: list[str]
    x: np.ndarray  # true proxy deltas
    y: np.ndarray  # true full-scale deltas
    proxy: SimTrainer
    full: SimTrainer


def make_world(n: int, rng: np.random.Generator, share_training: float) -> World:
    cls = rng.choice(["win", "neutral", "harmful"], size=n, p=[0.3, 0.4, 0.3])
    y = np.where(
        cls == "win",
        -rng.uniform(0.0003, 0.003, n),
        np.where(cls == "harmful", rng.uniform(0.0003, 0.003, n), 0.0),
    )
    kinds = list(np.where(rng.random(n) < share_training, "training", "architecture"))
    x = np.where(
        np.array(kinds) == "architecture",
        y / ARCH_SLOPE + rng.normal(0, 0.002, n),
        rng.normal(-0.002, 0.008, n),
    )
    names = [f"t{i:03d}" for i in range(n)]
    seed = int(rng.integers(1 << 30))
    proxy = SimTrainer(
        dict(zip(names, x.tolist(), strict=True)), noise_std=PROXY_NOISE, seed=seed, baseline=2.3
    )
    full = SimTrainer(dict(zip(names, y.tolist(), strict=True)), noise_std=NOISE_8XH100, seed=seed + 1)
    return World(kinds, x, y, proxy, full)


def measure(sim: SimTrainer, name: str, seeds: int) -> tuple[float, float]:
    """Delta of one technique against the baseline (whose runs every candidate shares) and its se."""
    base = [sim.run(frozenset(), s) for s in range(seeds)]
    cand = [sim.run(frozenset({name}), s + 1000) for s in range(seeds)]
    return float(np.mean(cand) - np.mean(base)), sim.noise_std * math.sqrt(2.0 / seeds)


def run_policy(world: World, policy: str, level: float, final_dollars: float, prior) -> dict:
    finals = finds = 0
    gained = 0.0
    pairs: list[Pair] = []
    calib = {k: fit_calibration([], k, prior) for k in ("architecture", "training")}
    for i, kind in enumerate(world.kinds):
        name = f"t{i:03d}"
        dx, se = measure(world.proxy, name, PROXY_SEEDS)
        if dx >= -ALPHA_Z * se:
            continue  # not a local win: no policy promotes it
        if policy == "threshold":
            go = dx <= -level
        elif policy.startswith("calibrated"):
            fit_kind = "architecture" if policy == "calibrated-pooled" else kind
            mean, sd = predict(calib[fit_kind], dx, se)
            go = adopted_gain(mean, sd, NOISE_8XH100 * math.sqrt(2.0 / FINAL_SEEDS)) >= level
        else:  # oracle
            go = world.y[i] <= REAL
        if not go:
            continue
        finals += 1
        dy, se_y = measure(world.full, name, FINAL_SEEDS)
        if dy < 0:  # the final says it helps: kept
            gained += -world.y[i]
            finds += world.y[i] <= REAL
        if policy in ("calibrated", "calibrated-pooled"):
            fit_kind = "architecture" if policy == "calibrated-pooled" else kind
            pairs.append(
                Pair(
                    technique=name,
                    kind=fit_kind,
                    lower_tier="cpu-smoke",
                    upper_tier="h100x8-final",
                    lower_delta=dx,
                    upper_delta=dy,
                    lower_se=se,
                    upper_se=se_y,
                )
            )
            calib[fit_kind] = fit_calibration(pairs, fit_kind, prior)
    return {
        "finals": finals,
        "finds": finds,
        "dollars": finals * final_dollars,
        "gained": gained,
        "available": int(np.sum(world.y <= REAL)),
    }


POLICIES = (
    [("threshold", t) for t in (0.0, 0.01, 0.0125, 0.015, 0.02)]
    + [("calibrated", g) for g in (0.0004, 0.0008, 0.0012, 0.0016)]
    + [("calibrated-prior", 0.0008), ("calibrated-pooled", 0.0008), ("oracle", 0.0)]
)


def label(policy: str, level: float) -> str:
    if policy == "threshold":
        return "every local win" if level == 0 else f"threshold {level:.4f}"
    if policy == "calibrated":
        return f"calibrated >= {level:.4f}"
    if policy == "calibrated-prior":
        return f"prior only >= {level:.4f}"
    if policy == "calibrated-pooled":
        return f"one fit, no kinds >= {level:.4f}"
    return "oracle"


def run_setting(reps: int, ideas: int, share_training: float, final_dollars: float, seed: int = 0) -> dict:
    prior = load_prior("cpu-smoke")
    totals: dict[str, list[dict]] = {label(p, v): [] for p, v in POLICIES}
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        world = make_world(ideas, rng, share_training)
        for p, v in POLICIES:
            totals[label(p, v)].append(run_policy(world, p, v, final_dollars, prior))
    out = {}
    for name, rs in totals.items():
        finals = sum(r["finals"] for r in rs)
        finds = sum(r["finds"] for r in rs)
        dollars = sum(r["dollars"] for r in rs)
        out[name] = {
            "finals": finals / reps,
            "finds": finds / reps,
            "dollars": dollars / reps,
            "dollars_per_find": dollars / finds if finds else float("inf"),
            "precision": finds / finals if finals else 0.0,
            "recall": finds / max(1, sum(r["available"] for r in rs)),
            "gained_bpb": sum(r["gained"] for r in rs) / reps,
            "bpb_per_1000_dollars": 1000 * sum(r["gained"] for r in rs) / dollars if dollars else 0.0,
        }
    return out


def print_table(title: str, res: dict) -> None:
    print(f"\n{title}")
    head = (
        f"{'policy':<30}{'finals':>8}{'finds':>7}{'$ spent':>9}{'$ / find':>10}{'precision':>10}"
        f"{'recall':>8}{'bpb gained':>12}{'bpb / $1k':>11}"
    )
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        print(
            f"{name:<30}{r['finals']:>8.2f}{r['finds']:>7.2f}{r['dollars']:>9.0f}{r['dollars_per_find']:>10.1f}"
            f"{r['precision']:>10.2f}{r['recall']:>8.2f}{r['gained_bpb']:>12.5f}{r['bpb_per_1000_dollars']:>11.5f}"
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--ideas", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    final = load_tiers(ROOT / "tiers.toml")["h100x8-final"]
    final_dollars = (
        (FINAL_SEEDS * final_seed_seconds(final) + final.startup_s) / 3600 * (final.price_per_hour or 24.0)
    )
    t0 = time.time()
    results = {}
    for name, share in (("mixed: 40% training changes", SHARE_TRAINING), ("architecture only", 0.0)):
        results[name] = run_setting(args.reps, args.ideas, share, final_dollars)
        if not args.json:
            print_table(
                f"{name}; {args.ideas} ideas per queue, {args.reps} queues, a final costs ${final_dollars:.2f}",
                results[name],
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"""
finals / finds / $ spent: per queue. $ / find: dollars on finals per real full-scale improvement
(>= {-REAL} bpb) that its final showed. precision: finds / finals; recall: finds / real improvements in
the queue. bpb gained: true full-scale bpb of everything kept by its final (harmful keeps subtract).
Local screening (3 seeds per side, seed std {PROXY_NOISE}, z test at 0.05) is the same for every policy.
{time.time() - t0:.1f} s.""")
    return results


if __name__ == "__main__":
    main()
