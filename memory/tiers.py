"""Tiers as data: hardware, model shape, step/time budget, seeds and typical noise, from tiers.toml.

Results are only ever compared within one tier and one hardware string.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator


class Tier(BaseModel):
    name: str
    description: str = ""
    hardware: str  # "cpu", "cuda", "h100x8"; runs on different hardware are never pooled
    nproc: int = 1  # processes per run (torchrun --nproc_per_node)
    env: dict[str, str] = Field(default_factory=dict)  # trainer environment (shape, budget)
    seeds_initial: int = 2  # seeds per side before the first verdict
    seeds_max: int = 5  # seeds per candidate at most while ambiguous
    noise_runs: int = 3  # A/A runs of the incumbent when the noise model is (re)measured
    run_timeout_s: float = 600.0
    typical_noise: float = 0.003  # prior std of val_bpb across seeds, replaced by the measured one
    alpha: float = 0.05  # one-sided significance for a screening win on this tier
    min_effect: float = 0.0  # a win must also beat this many bpb
    # drop a candidate at an interim look when its one-sided p exceeds this (None: never); lower screens
    # faster (benchmarks/decisions.py, "screen")
    futility_p: float | None = 0.8
    # the sd of per-seed differences (candidate - incumbent on the same seed) that earlier ledgers of this
    # tier show for its noisiest kind of change, and the degrees of freedom it counts for: the paired
    # test's prior before the kind's own pool speaks (agent/judge.py, paired_prior). None: the
    # sqrt(2) x A/A bound, which a one-seed look can rarely beat
    paired_noise: float | None = None
    paired_noise_df: float = 6.0
    # cap each experiment's seeds by the runs the untested ideas leave over (agent/judge.py,
    # affordable_seeds): one seed per idea while ideas outnumber runs, more once the queue is short
    adaptive_seeds: bool = False
    # once the queue is done, a rejected idea whose interval still admits a win of this many bpb gets one
    # more look on fresh seeds (agent/playbook.py); None: a rejection is final. For a tier that decides
    # at one seed, where a small win's first look is often above zero
    retest_effect: float | None = None
    price_per_hour: float | None = None  # dollars, for cost accounting
    # Dollars per hour used only to rank options (agent/costs.py) where no money changes hands (own CPU,
    # own GPU): what renting the same machine would cost. Never booked as spend.
    notional_price_per_hour: float | None = None
    startup_s: float = 0.0  # once per batch of runs: pod start, image pull, data download
    step_matched: bool = False  # fixed ITERATIONS instead of wallclock, so devices compare
    # measured fidelity of this tier's verdicts against the published full-scale deltas (golf fidelity)
    fidelity_spearman: float | None = None
    fidelity_pairs: int | None = None
    seconds_per_run: float | None = None  # measured mean wall seconds of one run on the tier's machine

    @model_validator(mode="after")
    def _step_matched_runs_without_a_wallclock_cap(self) -> Tier:
        """A step-matched tier runs exactly ITERATIONS steps, bounded by run_timeout_s, never by a clock.

        With any MAX_WALLCLOCK_SECONDS the trainer's iteration warmdown follows the estimated wallclock
        of the last WARMDOWN_ITERS steps instead of the step count, and a 40-step CPU run under a 120 s
        cap never warms down at all (its LR scale stayed 1.0). So the cap is 0 (none) on every
        step-matched tier, and a tiers.toml that sets another is refused rather than silently changed.
        """
        if not self.step_matched:
            return self
        cap = self.env.get("MAX_WALLCLOCK_SECONDS", "0")
        try:
            capped = float(cap) != 0.0
        except ValueError:
            capped = True
        if capped:
            raise ValueError(
                f"a step_matched tier runs without a wallclock cap (run_timeout_s bounds it): "
                f"set MAX_WALLCLOCK_SECONDS = 0 or remove it, not {cap!r}"
            )
        self.env["MAX_WALLCLOCK_SECONDS"] = "0"
        return self


class TiersError(ValueError):
    pass


def load_tiers(path: str | Path) -> dict[str, Tier]:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise TiersError(f"{path}: no tiers file") from e
    except tomllib.TOMLDecodeError as e:
        raise TiersError(f"{path}: {e}") from e
    tiers = {}
    for name, body in raw.get("tier", {}).items():
        try:
            body = dict(body)
            body["env"] = {k: str(v) for k, v in body.get("env", {}).items()}
            tiers[name] = Tier(name=name, **body)
        except (ValidationError, TypeError) as e:
            raise TiersError(f"{path}: tier {name!r}: {e}") from e
    if not tiers:
        raise TiersError(f"{path}: no [tier.NAME] tables")
    return tiers
