"""Calibration: how a delta measured on a cheap tier maps to the delta the same change makes at full scale.

The seed's hardest lesson was that local proxy scores do not predict 8xH100 results one to one. We fit
    upper_delta = slope * lower_delta (+ intercept) + noise
separately for architecture changes and training-hyperparameter changes (challenge.md, PR #2005: the
first transfer, the second does not), as a Bayesian linear regression with a Normal-Inverse-Gamma prior.
The prior comes from the published pairs in memory/data/published_deltas.toml, so two or three pairs of
our own only nudge it, and a few dozen override it. There is no stored state: the fit is recomputed from
the ledger every time, so every new final moves it.

Known simplification: the lower-tier deltas are themselves noisy, which biases a least-squares slope
toward zero (attenuation). Pairs are weighted by their measurement errors (fit_calibration), which
limits the damage from noisy pairs but does not remove the bias; the prediction adds the proxy's own
error on top (predict).
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from memory.records import CalibrationPairRecord, DecisionRecord, FinalRecord, RunRecord

Kind = Literal["architecture", "training"]
KINDS: tuple[Kind, ...] = ("architecture", "training")
PUBLISHED = Path(__file__).resolve().parent.parent / "memory" / "data" / "published_deltas.toml"
FINAL_TIER = "h100x8-final"
FINAL_SEED_STD = 0.00054  # median 3-seed std of 8xH100 records (challenge.md)
BASELINE_BPB = 1.2244  # the challenge's baseline train_gpt.py on 8xH100 (challenge.md)
PRIOR_A0 = 2.0  # inverse-gamma shape of the residual variance: worth about four pairs, and its mean exists

# Environment variables whose change is a training-hyperparameter change (split on "_", any token).
TRAINING_ENV = {
    "LR",
    "MOMENTUM",
    "WARMDOWN",
    "WARMUP",
    "EMA",
    "SWA",
    "WD",
    "DECAY",
    "BATCH",
    "CLIP",
    "ITERATIONS",
    "BETA1",
    "BETA2",
    "MUON",
    "SCHEDULE",
    "ACCUM",
}


class Pair(BaseModel):
    """One change measured on two tiers: the raw material of the fit."""

    technique: str
    kind: Kind
    lower_tier: str
    upper_tier: str
    lower_delta: float
    upper_delta: float
    lower_se: float | None = None
    upper_se: float | None = None
    source: str = ""  # "published: PR ..." or "ledger: experiment -> final"


class Prior(BaseModel):
    kind: Kind
    slope: float
    slope_sd: float
    residual_sd: float
    n_pairs: int  # published pairs behind it
    sources: list[str] = Field(default_factory=list)
    lower_tier: str | None = None  # set when a tier-specific override was applied


class Calibration(BaseModel):
    kind: Kind
    slope: float
    slope_sd: float
    intercept: float = 0.0
    intercept_sd: float = 0.0
    residual_sd: float  # posterior mean scatter of the upper delta around the line
    n: int  # ledger pairs in the fit (0: the prior alone)
    spearman: float | None = None
    spearman_p: float | None = None
    source: Literal["prior", "fit"]
    dof: float  # Student-t degrees of freedom of the slope's posterior
    prior_slope: float
    prior_slope_sd: float
    lower_tier: str | None = None
    upper_tier: str | None = None


# ---------------------------------------------------------------------------------------------- prior


def _read_published(path: str | Path | None) -> dict:
    return tomllib.loads(Path(path or PUBLISHED).read_text())


def published_pairs(path: str | Path | None = None) -> list[Pair]:
    raw = _read_published(path)
    return [
        Pair(
            technique=p["technique"],
            kind=p["kind"],
            lower_tier=p["proxy_tier"],
            upper_tier=FINAL_TIER,
            lower_delta=float(p["proxy_delta"]),
            upper_delta=float(p["full_delta"]),
            source=f"published: {p.get('source', '')}",
        )
        for p in raw.get("pair", [])
    ]


def load_prior(lower_tier: str | None = None, path: str | Path | None = None) -> dict[Kind, Prior]:
    """The prior per kind: the published pairs' through-origin slope, widened to the file's floors.

    A [prior.tier.<lower_tier>.<kind>] table overrides slope and slope_sd for that lower tier (a
    near-final proxy transfers better than a 1,000-step one).
    """
    raw = _read_published(path)
    pairs = published_pairs(path)
    cfg = raw.get("prior", {})
    out: dict[Kind, Prior] = {}
    for kind in KINDS:
        own = [p for p in pairs if p.kind == kind]
        floors = cfg.get(kind, {})
        x = np.array([p.lower_delta for p in own])
        y = np.array([p.upper_delta for p in own])
        slope = float(x @ y / (x @ x)) if own else 0.0
        ratios = y / x if own else np.array([])
        spread = float(np.std(ratios, ddof=1)) if len(own) >= 2 else 0.0
        rms = float(np.sqrt(np.mean((y - slope * x) ** 2))) if own else 0.0
        prior = Prior(
            kind=kind,
            slope=slope,
            slope_sd=max(float(floors.get("slope_sd_floor", 0.5)), spread),
            residual_sd=max(float(floors.get("residual_sd_floor", 0.001)), rms),
            n_pairs=len(own),
            sources=[p.source for p in own],
        )
        override = cfg.get("tier", {}).get(lower_tier or "", {}).get(kind)
        if override:
            prior = prior.model_copy(
                update={k: float(v) for k, v in override.items() if k in ("slope", "slope_sd")}
                | {"lower_tier": lower_tier}
            )
        out[kind] = prior
    return out


def training_techniques(path: str | Path | None = None) -> set[str]:
    return set(_read_published(path).get("kinds", {}).get("training", []))


def technique_kind(
    technique: str | None,
    changed_env: Iterable[str] = (),
    script_changed: bool = True,
    path: str | Path | None = None,
) -> Kind:
    """Architecture unless the technique is a known training change, or only training variables changed."""
    if technique and technique.lower() in training_techniques(path):
        return "training"
    keys = list(changed_env)
    if not script_changed and keys and all(set(k.upper().split("_")) & TRAINING_ENV for k in keys):
        return "training"
    return "architecture"


# ---------------------------------------------------------------------------------------------- fit


def fit_calibration(
    pairs: Sequence[Pair],
    kind: Kind,
    prior: Prior | dict[Kind, Prior] | None = None,
    *,
    fit_intercept: bool = False,
) -> Calibration:
    """Bayesian linear regression of upper on lower deltas for one kind, shrunk toward the prior.

    Normal-Inverse-Gamma: beta | s2 ~ N(m0, s2 V0), s2 ~ InvGamma(a0, b0), with V0 chosen so that the
    slope's prior sd is prior.slope_sd at the prior residual sd, and E[s2] = prior.residual_sd^2. The
    posterior slope is Student-t; slope_sd is its sd. Without pairs of this kind it is the prior itself.
    Pairs that carry standard errors are weighted by 1 / (1 + (slope*lower_se)^2 + upper_se^2) in units
    of the prior scatter, so a pair whose proxy delta is mostly noise moves the line little (and the
    slope is not dragged toward zero by it as much as unweighted least squares would be).
    Through the origin by default: a change that does nothing on the proxy is expected to do nothing at
    full scale; an intercept (prior mean 0, sd one residual) is for when the tiers disagree on a baseline.
    """
    if prior is None:
        prior = load_prior()
    if isinstance(prior, dict):
        prior = prior[kind]
    own = [p for p in pairs if p.kind == kind]
    lower = {p.lower_tier for p in own}
    upper = {p.upper_tier for p in own}
    s0 = prior.residual_sd
    m0 = np.array([prior.slope, 0.0] if fit_intercept else [prior.slope])
    prior_cov = np.diag([prior.slope_sd**2, s0**2] if fit_intercept else [prior.slope_sd**2])
    v0_inv = np.linalg.inv(prior_cov / s0**2)
    a0, b0 = PRIOR_A0, s0**2 * (PRIOR_A0 - 1.0)

    x = np.array([p.lower_delta for p in own], dtype=float)
    y = np.array([p.upper_delta for p in own], dtype=float)
    X = np.column_stack([x, np.ones_like(x)]) if fit_intercept else x[:, None]
    se_x = np.array([p.lower_se or 0.0 for p in own], dtype=float)
    se_y = np.array([p.upper_se or 0.0 for p in own], dtype=float)
    slope = prior.slope
    for _ in range(3):  # the weights depend on the slope: a few fixed-point steps settle them
        # a pair's variance around the line is s2 plus its measurement errors (the proxy's through the
        # slope); as a weight relative to s2 at the prior scatter, so a noisy pair counts for less
        w = s0**2 / (s0**2 + (slope * se_x) ** 2 + se_y**2)
        lam = v0_inv + X.T @ (w[:, None] * X)
        cov_unit = np.linalg.inv(lam)
        mn = cov_unit @ (v0_inv @ m0 + X.T @ (w * y))
        slope = float(mn[0])
    an = a0 + len(own) / 2.0
    bn = b0 + 0.5 * float(y @ (w * y) + m0 @ v0_inv @ m0 - mn @ lam @ mn)
    bn = max(bn, 1e-30)
    dof = 2.0 * an
    scale2 = bn / an * np.diag(cov_unit) * dof / (dof - 2.0)  # Student-t variance

    rho = rho_p = None
    if len(own) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = stats.spearmanr(x, y)
        rho, rho_p = float(r.statistic), float(r.pvalue)
    return Calibration(
        kind=kind,
        slope=float(mn[0]),
        slope_sd=float(math.sqrt(scale2[0])),
        intercept=float(mn[1]) if fit_intercept else 0.0,
        intercept_sd=float(math.sqrt(scale2[1])) if fit_intercept else 0.0,
        residual_sd=math.sqrt(bn / (an - 1.0)),
        n=len(own),
        spearman=rho,
        spearman_p=rho_p,
        source="fit" if own else "prior",
        dof=dof,
        prior_slope=prior.slope,
        prior_slope_sd=prior.slope_sd,
        lower_tier=next(iter(lower)) if len(lower) == 1 else prior.lower_tier,
        upper_tier=next(iter(upper)) if len(upper) == 1 else None,
    )


def slope_interval(calib: Calibration, level: float = 0.95) -> tuple[float, float]:
    """Central credible interval of the slope (Student-t posterior)."""
    t = stats.t(df=calib.dof)
    scale = calib.slope_sd / math.sqrt(calib.dof / (calib.dof - 2.0))
    q = float(t.ppf(0.5 + level / 2.0))
    return calib.slope - q * scale, calib.slope + q * scale


def predict(calib: Calibration, proxy_delta: float, proxy_se: float = 0.0) -> tuple[float, float]:
    """Predicted upper-tier delta (mean, sd) for a change measured at proxy_delta +- proxy_se.

    The sd adds the line's scatter, the slope's and intercept's uncertainty at this x, and the proxy's
    own error carried through the slope (conservative: the fitted scatter already holds some of it).
    """
    mean = calib.intercept + calib.slope * proxy_delta
    var = (
        calib.residual_sd**2
        + (proxy_delta * calib.slope_sd) ** 2
        + calib.intercept_sd**2
        + (calib.slope**2 + calib.slope_sd**2) * proxy_se**2
    )
    return mean, math.sqrt(var)


# ---------------------------------------------------------------------------------------------- ledger


def _mean_sd(values: Sequence[float], fallback_sd: float) -> tuple[float, float]:
    sd = statistics.stdev(values) if len(values) >= 2 else fallback_sd
    return statistics.fmean(values), sd


def decision_se(d: DecisionRecord) -> float | None:
    """The standard error of a decision's delta: paired (sd of differences / sqrt n) or unpaired."""
    if d.test == "paired" and d.paired_noise is not None and d.seed_diffs:
        return d.paired_noise.std / math.sqrt(len(d.seed_diffs))
    if d.noise_std and d.n_candidate and d.n_incumbent:
        return d.noise_std * math.sqrt(1.0 / d.n_candidate + 1.0 / d.n_incumbent)
    if d.ci_low is not None and d.ci_high is not None:
        return (d.ci_high - d.ci_low) / (2 * 1.96)  # assumes a 95% interval
    return None


def decision_kind(d: DecisionRecord, runs: dict[str, RunRecord]) -> Kind:
    """Classify a decision's change from what differs between its runs and the incumbent's."""
    inc = [runs[r] for r in d.incumbent_runs if r in runs]
    inc_env = inc[0].env if inc else {}
    inc_sha = inc[0].script_sha if inc else None
    changed = [k for k in set(d.env) | set(inc_env) if d.env.get(k) != inc_env.get(k)]
    script_changed = d.script_sha is None or inc_sha is None or d.script_sha != inc_sha
    return technique_kind(d.technique, changed, script_changed)


def _name(d: DecisionRecord) -> str:
    return d.technique or d.candidate


def pairs_from_ledger(
    records: Sequence, lower_tier: str, upper_tier: str, *, final_tier: str = FINAL_TIER
) -> list[Pair]:
    """Pairs of (lower-tier delta, upper-tier delta) for the same change, read from ledger records.

    Decisions on both tiers: the latest decision per technique on each tier makes a pair. Finals (when
    upper_tier is the final tier): a final F that promoted lower-tier experiment e is compared with the
    latest earlier successful final B; its delta mean(F) - mean(B) belongs to the stack of kept
    lower-tier decisions after B's experiment up to e, whose lower deltas add up. A stack that mixes
    architecture and training changes is left out, because it belongs to neither fit. First of all come
    the tier's own calibration pairs (CalibrationPairRecord, written by `golf fidelity`); a technique
    measured there is not paired again from decisions.
    """
    runs = {r.run_id: r for r in records if isinstance(r, RunRecord)}
    measured = {
        c.technique: c
        for c in records
        if isinstance(c, CalibrationPairRecord) and c.tier == lower_tier and c.upper_tier == upper_tier
    }  # golf fidelity: latest per technique
    fidelity = [
        Pair(
            technique=c.technique,
            kind=c.technique_kind if c.technique_kind in KINDS else "architecture",
            lower_tier=lower_tier,
            upper_tier=upper_tier,
            lower_delta=c.lower_delta,
            upper_delta=c.upper_delta,
            lower_se=c.lower_se,
            source=f"fidelity: {c.source}",
        )
        for c in measured.values()
    ]
    return fidelity + _pairs_from_decisions(
        records, runs, lower_tier, upper_tier, final_tier, skip=set(measured)
    )


def _pairs_from_decisions(
    records: Sequence,
    runs: dict[str, RunRecord],
    lower_tier: str,
    upper_tier: str,
    final_tier: str,
    skip: set[str],
) -> list[Pair]:
    decisions = [
        d
        for d in records
        if isinstance(d, DecisionRecord) and d.delta is not None and d.candidate != "incumbent"
    ]
    lower = [d for d in decisions if d.tier == lower_tier]
    latest_lower = {_name(d): d for d in lower}
    latest_upper = {_name(d): d for d in decisions if d.tier == upper_tier}
    pairs = []
    for name, u in latest_upper.items():
        lo = latest_lower.get(name)
        if lo is None or name in skip:
            continue
        pairs.append(
            Pair(
                technique=name,
                kind=decision_kind(lo, runs),
                lower_tier=lower_tier,
                upper_tier=upper_tier,
                lower_delta=float(lo.delta or 0.0),
                upper_delta=float(u.delta or 0.0),
                lower_se=decision_se(lo),
                upper_se=decision_se(u),
                source=f"ledger: {lo.experiment} -> {u.experiment}",
            )
        )
    if upper_tier != final_tier:
        return pairs

    finals = [
        f for f in records if isinstance(f, FinalRecord) and f.status in ("ok", "partial") and f.val_bpbs
    ]
    index = {d.experiment: i for i, d in enumerate(lower)}
    for k, f in enumerate(finals):
        if f.experiment not in index:
            continue
        # the first final of a promoted experiment: against the published baseline score (the loop starts
        # from the challenge's baseline script), so the first real score already moves the fit
        b = (
            finals[k - 1]
            if k
            else FinalRecord(
                session="-",
                final_id="published-baseline",
                script_sha="-",
                seeds=[1, 2, 3],
                val_bpbs=[BASELINE_BPB],
                status="ok",
            )
        )
        # a baseline final of a script no lower-tier decision produced: everything kept before e
        start = index.get(b.experiment, -1) if b.experiment is not None else -1
        stack = [
            d for d in lower[start + 1 : index[f.experiment] + 1] if d.kept or d.experiment == f.experiment
        ]
        if not stack or any(_name(d) in latest_upper for d in stack):
            continue
        kinds = {decision_kind(d, runs) for d in stack}
        if len(kinds) != 1:
            continue
        fm, fs = _mean_sd(f.val_bpbs, FINAL_SEED_STD)
        bm, bs = _mean_sd(b.val_bpbs, FINAL_SEED_STD)
        ses = [decision_se(d) for d in stack]
        known = [s for s in ses if s is not None]
        pairs.append(
            Pair(
                technique="+".join(_name(d) for d in stack),
                kind=kinds.pop(),
                lower_tier=lower_tier,
                upper_tier=upper_tier,
                lower_delta=sum(float(d.delta or 0.0) for d in stack),
                upper_delta=fm - bm,
                lower_se=math.sqrt(sum(s * s for s in known)) if len(known) == len(ses) else None,
                upper_se=math.sqrt(fs**2 / len(f.val_bpbs) + bs**2 / len(b.val_bpbs)),
                source=f"ledger: {', '.join(d.experiment for d in stack)} -> final {f.final_id} vs {b.final_id}",
            )
        )
    return pairs


def calibrations_from_ledger(
    records: Sequence,
    lower_tier: str,
    upper_tier: str = FINAL_TIER,
    *,
    final_tier: str = FINAL_TIER,
    prior_path: str | Path | None = None,
    fit_intercept: bool = False,
) -> dict[Kind, Calibration]:
    """Both fits for one pair of tiers, from the ledger and the published prior: what callers want."""
    prior = load_prior(lower_tier, prior_path)
    pairs = pairs_from_ledger(records, lower_tier, upper_tier, final_tier=final_tier)
    return {k: fit_calibration(pairs, k, prior, fit_intercept=fit_intercept) for k in KINDS}


def describe(calib: Calibration) -> str:
    """One line for digests and reports."""
    lo, hi = slope_interval(calib)
    rho = "n/a" if calib.spearman is None else f"{calib.spearman:+.2f}"
    return (
        f"{calib.kind}: full = {calib.slope:+.3f} x proxy (95% {lo:+.3f}..{hi:+.3f}), scatter "
        f"{calib.residual_sd:.4f} bpb, {calib.n} own pairs, spearman {rho}, from {calib.source}"
    )
