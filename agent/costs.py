"""Cost-aware choice: every next action priced in expected full-scale bpb gained per dollar.

The actions: test a queued technique locally, add seeds to an ambiguous one, re-measure the incumbent,
promote the incumbent to an 8xH100 final. Gains are in full-scale bpb (positive = better), carried
through the calibration (agent/calibration.py), so a proxy win in a change that does not transfer is
worth little however large it looks locally.

How gains are counted:
- Local actions change what the incumbent stack holds; their gain is the expected full-scale change of
  the stack: P(the stack gains the technique) * max(0, -predicted full-scale delta). The gain is banked,
  and realised by a later promotion.
- A promotion measures the stack at full scale and is kept only if the final looks better than the
  last one, so its gain is E[-D * 1(final says better)] with D the stack's predicted full-scale delta
  and the final's own noise in the comparison: a gamble with a floor, worth more the more uncertain.

Costs: wall hours * price. Local CPU/GPU time has no bill, so tiers.toml gives it a notional price per
hour (notional_price_per_hour: what renting the same machine would cost; DEFAULT_NOTIONAL otherwise),
used only so that gain per dollar is defined and never booked as spend. Budgets bind only real dollars
and wall hours.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence, Set
from typing import Any, Literal

from pydantic import BaseModel, Field
from scipy import stats

from agent.calibration import (
    FINAL_SEED_STD,
    FINAL_TIER,
    Calibration,
    Kind,
    calibrations_from_ledger,
    decision_kind,
    decision_se,
    predict,
    technique_kind,
)
from memory.records import DecisionRecord, FinalRecord, NoiseRecord, RunRecord, SpendRecord
from memory.tiers import Tier

Action = Literal["test", "add_seeds", "remeasure_incumbent", "promote"]
DEFAULT_NOTIONAL = 0.05  # dollars per hour for a local tier without notional_price_per_hour
WIN_PRIOR = (1.0, 3.0)  # Beta prior on how often a queued technique wins locally: 25%, worth 4 decisions
PAIRED_SD_WINDOW = 20  # recent paired decisions whose spread of differences sizes the next test
RUN_OVERHEAD_S = 10.0  # process start, data load, evaluation beyond the training wallclock (small tiers)


class Evidence(BaseModel):
    """What one local decision says about a technique."""

    technique: str
    kind: Kind = "architecture"
    delta: float  # proxy delta, candidate - incumbent (negative is better)
    se: float
    n_candidate: int
    n_incumbent: int
    experiment: str | None = None
    paired: bool = False  # judged on per-seed differences: only seeds both arms ran sharpen it


class Queued(BaseModel):
    technique: str
    kind: Kind = "architecture"
    expected_proxy_delta: float | None = None  # a guess for this technique's local win, if the plan has one


class CostInputs(BaseModel):
    local_tier: Tier
    final_tier: Tier
    calibrations: dict[Kind, Calibration]  # by kind, lower tier = local_tier, upper = final_tier
    queue: list[Queued] = Field(default_factory=list)
    ambiguous: list[Evidence] = Field(default_factory=list)
    unpromoted: list[Evidence] = Field(default_factory=list)  # kept locally since the last final
    noise_std: float  # local seed-to-seed std of val_bpb
    # sd of per-seed differences on matched seeds, as the judge's paired test sees them (None: the
    # unpaired test, two independent arms); a new test's standard error is this / sqrt(seeds)
    paired_sd: float | None = None
    incumbent_n: int = 0
    p_win: float = 0.25
    win_delta: float | None = None  # typical proxy delta of a local win; default: just past detection
    local_run_s: float | None = None
    final_seed_s: float | None = None
    final_seeds: int | None = None
    final_noise_std: float = FINAL_SEED_STD
    budget_dollars: float | None = None  # real dollars left for local runs on paid tiers (None: unlimited)
    final_budget_dollars: float | None = None  # real dollars left for finals (None: unlimited)
    budget_hours: float | None = None  # wall hours left (None: unlimited)


class Option(BaseModel):
    action: Action
    technique: str | None = None
    expected_gain_bpb: float  # expected full-scale improvement (positive is better)
    device_hours: float  # wall hours * processes (GPUs or CPU jobs)
    wall_hours: float
    dollars: float  # what ranks it: real dollars, or notional ones for local tiers
    real_dollars: float  # what it would be billed
    notional: bool
    gain_per_dollar: float
    fits_budget: bool = True
    why: str = ""


# ---------------------------------------------------------------------------------------------- helpers


def adopted_gain(mean: float, sd: float, measure_sd: float = 0.0) -> float:
    """E[-D * 1(D + e < 0)] for D ~ N(mean, sd^2), e ~ N(0, measure_sd^2): the expected improvement
    when a change is kept only if its noisy measurement says it helps."""
    s = math.sqrt(sd**2 + measure_sd**2)
    if s <= 0:
        return max(0.0, -mean)
    return -mean * float(stats.norm.cdf(-mean / s)) + sd**2 / s * float(stats.norm.pdf(mean / s))


def _wallclock(tier: Tier) -> float:
    if tier.seconds_per_run:  # measured (tiers.toml): the run's own wall time, overhead included
        return max(0.0, (tier.seconds_per_run - RUN_OVERHEAD_S) / 1.3)
    cap = float(tier.env.get("MAX_WALLCLOCK_SECONDS", 0) or 0)
    return cap if cap > 0 else tier.run_timeout_s / 2  # 0: no cap (step-matched), bounded by the timeout


def local_run_seconds(tier: Tier) -> float:
    """One local run when the ledger has none: the training wallclock plus evaluation and start-up."""
    return min(tier.run_timeout_s, 1.3 * _wallclock(tier) + RUN_OVERHEAD_S)


def final_seed_seconds(tier: Tier) -> float:
    """One final seed: 600 s training, evaluation (capped at 600 s, usually well under), compile."""
    return min(tier.run_timeout_s, 1.5 * _wallclock(tier) + 60.0)


def _price(tier: Tier) -> tuple[float, bool]:
    if tier.price_per_hour:
        return tier.price_per_hour, False
    return (tier.notional_price_per_hour or DEFAULT_NOTIONAL), True


def _option(
    inputs: CostInputs,
    action: Action,
    technique: str | None,
    gain: float,
    tier: Tier,
    runs: int,
    run_s: float,
    why: str,
) -> Option:
    wall_h = (runs * run_s + tier.startup_s) / 3600.0
    price, notional = _price(tier)
    dollars = wall_h * price
    real = 0.0 if notional else dollars
    budget = inputs.final_budget_dollars if action == "promote" else inputs.budget_dollars
    fits = (budget is None or real <= budget + 1e-9) and (
        inputs.budget_hours is None or wall_h <= inputs.budget_hours + 1e-9
    )
    gain = max(0.0, gain)
    return Option(
        action=action,
        technique=technique,
        expected_gain_bpb=gain,
        device_hours=wall_h * tier.nproc,
        wall_hours=wall_h,
        dollars=dollars,
        real_dollars=real,
        notional=notional,
        gain_per_dollar=gain / dollars if dollars > 0 else 0.0,
        fits_budget=fits,
        why=why,
    )


def _confirm_gain(inputs: CostInputs, e: Evidence, se_after: float, z: float) -> tuple[float, float]:
    """Preposterior value of shrinking e's standard error to se_after: (P(confirmed), expected gain).

    Under a flat prior the estimate after more runs is distributed N(delta, se^2 - se_after^2); it is
    confirmed when it falls below -z * se_after - min_effect, and the gain is that of the technique's
    expected delta given confirmation, carried through the calibration.
    """
    pre = math.sqrt(max(e.se**2 - se_after**2, 1e-18))
    threshold = -z * se_after - inputs.local_tier.min_effect
    a = (threshold - e.delta) / pre
    p = float(stats.norm.cdf(a))
    if p < 1e-9:
        return p, 0.0
    expected = e.delta - pre * float(stats.norm.pdf(a)) / p
    mean, _ = predict(inputs.calibrations[e.kind], expected, se_after)
    return p, p * max(0.0, -mean)


def _se(noise: float, n_c: int, n_i: int) -> float:
    return noise * math.sqrt(1.0 / max(n_c, 1) + 1.0 / max(n_i, 1))


# ---------------------------------------------------------------------------------------------- options


def options(inputs: CostInputs) -> list[Option]:
    """Every option with its gain and cost, unsorted."""
    tier, final = inputs.local_tier, inputs.final_tier
    z = float(stats.norm.isf(tier.alpha))
    run_s = inputs.local_run_s or local_run_seconds(tier)
    seeds = tier.seeds_initial
    n_inc = max(inputs.incumbent_n, 1)
    out: list[Option] = []

    inc_missing = max(0, seeds - inputs.incumbent_n)
    if inputs.paired_sd is not None:  # both arms on the same seeds: the difference's own spread
        se_new = inputs.paired_sd / math.sqrt(seeds)
    else:
        se_new = _se(inputs.noise_std, seeds, max(n_inc, seeds))
    default_win = inputs.win_delta if inputs.win_delta is not None else -(z + 1.0) * se_new - tier.min_effect
    for q in inputs.queue:
        win = q.expected_proxy_delta if q.expected_proxy_delta is not None else default_win
        mean, sd = predict(inputs.calibrations[q.kind], win, se_new)
        gain = inputs.p_win * max(0.0, -mean)
        why = (
            f"P(local win) {inputs.p_win:.2f}; a {q.kind} win of {win:+.4f} locally predicts "
            f"{mean:+.5f} +- {sd:.5f} at full scale"
        )
        out.append(_option(inputs, "test", q.technique, gain, tier, seeds + inc_missing, run_s, why))

    for e in inputs.ambiguous:
        k = tier.seeds_max - e.n_candidate
        if k <= 0:
            continue
        if e.paired:  # k more matched pairs
            se_after = e.se * math.sqrt(e.n_candidate / (e.n_candidate + k))
        else:
            se_after = e.se * math.sqrt(
                (1 / (e.n_candidate + k) + 1 / e.n_incumbent) / (1 / e.n_candidate + 1 / e.n_incumbent)
            )
        p, gain = _confirm_gain(inputs, e, se_after, z)
        extra_inc = max(0, e.n_candidate + k - e.n_incumbent)
        why = (
            f"delta {e.delta:+.4f} +- {e.se:.4f} on {e.n_candidate} seeds; {k} more seeds confirm it "
            f"with P {p:.2f}"
        )
        out.append(_option(inputs, "add_seeds", e.technique, gain, tier, k + extra_inc, run_s, why))

    k = max(tier.noise_runs, 1)
    gain, parts = 0.0, []
    for e in inputs.ambiguous:
        if e.paired:  # incumbent runs on seeds the candidate never ran are no pairs: they add nothing
            continue
        se_after = e.se * math.sqrt(
            (1 / e.n_candidate + 1 / (e.n_incumbent + k)) / (1 / e.n_candidate + 1 / e.n_incumbent)
        )
        p, g = _confirm_gain(inputs, e, se_after, z)
        gain += g
        parts.append(f"{e.technique} P {p:.2f}")
    why = (
        f"{k} more incumbent runs sharpen {len(parts)} ambiguous comparisons ({', '.join(parts)})"
        if parts
        else f"{k} more incumbent runs; no ambiguous candidate would gain from them"
    )
    out.append(_option(inputs, "remeasure_incumbent", None, gain, tier, k, run_s, why))

    if inputs.unpromoted:
        means, var = 0.0, 0.0
        for e in inputs.unpromoted:
            m, s = predict(inputs.calibrations[e.kind], e.delta, e.se)
            means += m
            var += s * s
        n_f = inputs.final_seeds or final.seeds_initial
        measure = inputs.final_noise_std * math.sqrt(2.0 / n_f)
        gain = adopted_gain(means, math.sqrt(var), measure)
        names = ", ".join(e.technique for e in inputs.unpromoted)
        why = (
            f"stack of {len(inputs.unpromoted)} local wins ({names}) predicts {means:+.5f} +- "
            f"{math.sqrt(var):.5f} at full scale; {n_f} seeds measure it to +- {measure:.5f}"
        )
        out.append(
            _option(
                inputs,
                "promote",
                None,
                gain,
                final,
                n_f,
                inputs.final_seed_s or final_seed_seconds(final),
                why,
            )
        )
    return out


def rank_options(inputs: CostInputs, include_unaffordable: bool = False) -> list[Option]:
    """Options by expected gain per dollar, best first; those over budget left out (or last, if asked)."""
    opts = options(inputs)
    ranked = sorted(opts, key=lambda o: (not o.fits_budget, -o.gain_per_dollar, -o.expected_gain_bpb))
    return ranked if include_unaffordable else [o for o in ranked if o.fits_budget]


# ---------------------------------------------------------------------------------------------- ledger


def _evidence(d: DecisionRecord, kind: Kind, noise: float) -> Evidence:
    paired = decision_se(d) if d.test == "paired" else None
    if paired is not None:
        se = paired
    elif d.noise_std and d.n_candidate and d.n_incumbent:
        se = _se(d.noise_std, d.n_candidate, d.n_incumbent)
    elif d.ci_low is not None and d.ci_high is not None:
        se = (d.ci_high - d.ci_low) / (2 * 1.96)
    else:
        se = _se(noise, max(d.n_candidate, 1), max(d.n_incumbent, 1))
    return Evidence(
        technique=d.technique or d.candidate,
        kind=kind,
        delta=float(d.delta or 0.0),
        se=max(se, 1e-9),
        n_candidate=max(d.n_candidate, 1),
        n_incumbent=max(d.n_incumbent, 1),
        experiment=d.experiment,
        paired=paired is not None,
    )


def dollars_spent_on_finals(records: Sequence) -> float:
    """Real money on finals: the spend records (increments, booked as a pod runs), summed per final; a
    final without any counts its own total."""
    by_final: dict[str, float] = {}
    for s in records:
        if isinstance(s, SpendRecord):
            by_final[s.final_id] = by_final.get(s.final_id, 0.0) + s.dollars
    for f in records:
        if isinstance(f, FinalRecord) and f.final_id not in by_final:
            by_final[f.final_id] = f.dollars
    return sum(by_final.values())


def inputs_from_ledger(
    records: Sequence,
    tiers: dict[str, Tier],
    local_tier: str,
    *,
    final_tier: str = FINAL_TIER,
    queue: Sequence[Queued] = (),
    budget_dollars: float | None = None,
    final_budget_dollars: float | None = None,
    budget_hours: float | None = None,
    incumbent_n: int | None = None,
) -> CostInputs:
    """Everything rank_options needs, recomputed from the ledger (no hidden state)."""
    tier = tiers[local_tier]
    final = tiers.get(final_tier) or Tier(
        name=final_tier,
        hardware="h100x8",
        nproc=8,
        price_per_hour=24.0,
        seeds_initial=3,
        env={"MAX_WALLCLOCK_SECONDS": "600"},
    )
    runs = {r.run_id: r for r in records if isinstance(r, RunRecord)}
    local = [
        d
        for d in records
        if isinstance(d, DecisionRecord) and d.tier == local_tier and d.candidate != "incumbent"
    ]
    noises = [n for n in records if isinstance(n, NoiseRecord) and n.tier == local_tier]
    noise = noises[-1].std if noises else tier.typical_noise

    latest: dict[str, DecisionRecord] = {}
    for d in local:
        latest[d.technique or d.candidate] = d
    ambiguous = [
        _evidence(d, decision_kind(d, runs), noise)
        for d in latest.values()
        if d.outcome == "inconclusive" and d.delta is not None
    ]

    # the stack since the last final: kept decisions after the one it promoted, or, for a final of
    # something no local decision made, after everything recorded before it
    order = {id(r): i for i, r in enumerate(records)}
    finals = [f for f in records if isinstance(f, FinalRecord) and f.status in ("ok", "partial")]
    position = {d.experiment: i for i, d in enumerate(local)}
    start = -1
    if finals:
        last = finals[-1]
        start = (
            position.get(last.experiment, -1)
            if last.experiment in position
            else max((i for i, d in enumerate(local) if order[id(d)] < order[id(last)]), default=-1)
        )
    unpromoted = [
        _evidence(d, decision_kind(d, runs), noise)
        for d in local[start + 1 :]
        if d.kept and d.delta is not None
    ]

    decided = [d for d in latest.values() if d.outcome != "inconclusive"]
    wins = [d for d in decided if d.outcome == "confirmed"]
    p_win = (len(wins) + WIN_PRIOR[0]) / (len(decided) + sum(WIN_PRIOR))
    win_deltas = [d.delta for d in wins if d.delta is not None]
    run_s = [
        r.cost.device_seconds / max(tier.nproc, 1)
        for r in runs.values()
        if r.tier == local_tier and r.result.status == "ok" and r.cost.device_seconds > 0
    ]
    if incumbent_n is None:
        incumbent_n = max((d.n_incumbent for d in local), default=0)
    # the judge pairs whenever the arms share seeds (the session runs both from the same seeds): the
    # spread of differences its recent paired decisions measured, else the tier's figure, else the
    # judge's own bound for two independent runs (sqrt 2 x the A/A std; then the same as unpaired)
    diffs = [d.paired_noise.std for d in local[-PAIRED_SD_WINDOW:] if d.test == "paired" and d.paired_noise]
    if diffs:
        paired_sd = math.sqrt(statistics.fmean(v * v for v in diffs))
    else:
        paired_sd = tier.paired_noise if tier.paired_noise is not None else math.sqrt(2.0) * noise
    return CostInputs(
        local_tier=tier,
        final_tier=final,
        calibrations=calibrations_from_ledger(records, local_tier, final_tier, final_tier=final_tier),
        queue=list(queue),
        ambiguous=ambiguous,
        unpromoted=unpromoted,
        noise_std=noise,
        paired_sd=paired_sd,
        incumbent_n=incumbent_n,
        p_win=p_win,
        win_delta=statistics.fmean(win_deltas) if win_deltas else None,
        local_run_s=statistics.fmean(run_s) if run_s else None,
        budget_dollars=budget_dollars,
        final_budget_dollars=final_budget_dollars,
        budget_hours=budget_hours,
    )


def queued_from_plan(items: Sequence[Any], decided: Set[str] = frozenset()) -> list[Queued]:
    """Battle-plan queue items (memory.battle_plan.QueueItem or dicts) still to test, with their kind."""
    out = []
    for q in items:
        get = q.get if isinstance(q, dict) else lambda k, q=q: getattr(q, k, None)
        tech, env, state = get("technique"), get("env") or {}, get("state") or "todo"
        if not tech or state in ("done", "banned") or (tech in decided and state != "retest"):
            continue
        out.append(Queued(technique=tech, kind=technique_kind(tech, env.keys(), script_changed=not env)))
    return out


def options_for_session(
    records: Sequence,
    plan: Any,
    tier: Tier,
    tiers: dict[str, Tier],
    frontier: tuple[float | None, str] | None = None,
) -> list[dict[str, Any]]:
    """The session's digest entry: ranked options as dicts (PlannerState.options), over-budget ones last.

    Finals are affordable only within the plan's final_dollars (minus what finals already cost) and
    only when the plan approves finals, and proposed only when the projected score beats the frontier
    (default: the best legal leaderboard entry) by the record margin with PROMOTE_PROB; otherwise
    promote is listed with fits_budget false and the reason. Paid local tiers are bounded by the plan's dollars (minus what this tier's runs cost so far).
    """
    budget = getattr(plan, "budget", None)
    final_dollars = float(getattr(budget, "final_dollars", 0.0) or 0.0)
    approved = bool(getattr(budget, "approve_finals", False))
    final_left = max(0.0, final_dollars - dollars_spent_on_finals(records)) if approved else 0.0
    local_left = None
    if tier.price_per_hour:
        spent = sum(
            r.cost.dollars or 0.0 for r in records if isinstance(r, RunRecord) and r.tier == tier.name
        )
        local_left = max(0.0, float(getattr(budget, "dollars", 0.0) or 0.0) - spent)
    decided = {
        d.technique or d.candidate
        for d in records
        if isinstance(d, DecisionRecord) and d.tier == tier.name and d.outcome != "inconclusive"
    }
    queue = queued_from_plan(getattr(plan, "queue", []), decided)
    inputs = inputs_from_ledger(
        records, tiers, tier.name, queue=queue, budget_dollars=local_left, final_budget_dollars=final_left
    )
    ranked = rank_options(inputs, include_unaffordable=True)
    if any(o.action == "promote" for o in ranked):
        # a final is proposed only when the projected score beats the frontier by the record margin with
        # high probability (agent/projection.py); otherwise it is listed as not proposed, with the reason
        from agent.projection import PROMOTE_PROB, frontier_best, project

        best, source = frontier if frontier is not None else frontier_best(list(records))
        proj = project(records, tier.name, frontier_bpb=best, frontier_source=source)
        for o in ranked:
            if o.action == "promote" and not proj.promote:
                o.fits_budget = False
                o.why += (
                    f"; not proposed: projected {proj.mean:.4f} +- {proj.sd:.4f} vs frontier "
                    f"{best if best is not None else float('nan'):.4f} ({source}), P(record) "
                    f"{proj.p_record if proj.p_record is not None else 0.0:.2f} < {PROMOTE_PROB:g}"
                )
        ranked = sorted(ranked, key=lambda o: not o.fits_budget)
    from agent.fidelity import needs_gpu_tier

    kinds = {q.technique: q.kind for q in queue}
    out = []
    for o in ranked:
        row = o.model_dump()
        if o.action == "test" and o.technique:  # the playbook ranks what this tier cannot see last
            row["needs_gpu_tier"] = needs_gpu_tier(
                records, tier.name, o.technique, kinds.get(o.technique, "architecture")
            )
        out.append(row)
    return out
