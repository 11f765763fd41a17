"""Proxy fidelity as measured data: run techniques with published full-scale deltas on a tier.

`golf fidelity --tier T --seeds N` runs the workspace's trainer as is ("baseline") and with each panel
technique's flags (memory/data/published_deltas.toml, [[full]]), all on the same seeds, and writes one
CalibrationPairRecord per technique: the tier's mean per-seed difference against the published 8xH100
delta. The tier's calibration (agent/calibration.py) then fits on these pairs, and this module says how
far the tier's verdicts can be trusted: Spearman rank correlation and sign agreement with the published
deltas, and the fitted slope with its interval, per technique kind.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from scipy import stats

from agent.calibration import (
    FINAL_TIER,
    KINDS,
    PUBLISHED,
    Calibration,
    calibrations_from_ledger,
    slope_interval,
)
from agent.experiment import SEED_BASE
from agent.progress import Progress
from memory.ledger import Ledger
from memory.records import CalibrationPairRecord, RunRecord
from memory.tiers import Tier, load_tiers
from memory.workspace import Workspace
from tools.context import ToolContext
from tools.edit_script import sha256_text
from tools.sweep import Candidate, SweepArgs, hardware_id, sweep

# A tier whose verdicts rank the published deltas at least this well is "trusted" for that kind.
TRUST_SPEARMAN = 0.8


class PanelItem(BaseModel):
    technique: str
    kind: str
    env: dict[str, str]
    full_delta: float
    source: str = ""


def load_panel(only: Sequence[str] | None = None, path: str | Path | None = None) -> list[PanelItem]:
    raw = tomllib.loads(Path(path or PUBLISHED).read_text())
    items = [
        PanelItem(
            technique=f["technique"],
            kind=f["kind"],
            env={k: str(v) for k, v in f["env"].items()},
            full_delta=float(f["full_delta"]),
            source=f.get("source", ""),
        )
        for f in raw.get("full", [])
    ]
    if only:
        known = {i.technique for i in items}
        unknown = [t for t in only if t not in known]
        if unknown:
            raise ValueError(
                f"unknown panel technique(s) {unknown}; published_deltas.toml has {sorted(known)}"
            )
        items = [i for i in items if i.technique in only]
    return items


class Fidelity(BaseModel):
    tier: str
    pairs: list[CalibrationPairRecord]
    spearman: float | None  # over all pairs; None with fewer than 3 or no spread
    spearman_p: float | None = None
    sign_agreement: float | None  # share of pairs whose tier delta has the published sign
    calibrations: dict[str, Calibration] = Field(default_factory=dict)
    seconds_per_run: float | None = None


SHIPPED_PAIRS = Path(__file__).resolve().parent.parent / "memory" / "data" / "fidelity_pairs.jsonl"


def seed_shipped_pairs(ledger: Ledger, tier: str, path: str | Path | None = None) -> int:
    """A fresh ledger gets the tier's calibration pairs that `golf fidelity` measured when pgolf was built
    (memory/data/fidelity_pairs.jsonl), so its calibration and fidelity are the tier's own from the first
    session rather than a prior from another tier. Only when the ledger holds no pair of that tier: a
    user's own `golf fidelity` run always wins (it is later in the ledger). Returns the pairs written."""
    src = Path(path or SHIPPED_PAIRS)
    if not src.exists() or any(c.tier == tier for c in ledger.records(CalibrationPairRecord)):
        return 0
    shipped = []
    for n, line in enumerate(src.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            shipped.append(CalibrationPairRecord.model_validate_json(line))
        except ValueError as e:  # nothing is written from a file that is partly unreadable
            first = str(e).splitlines()[0]
            raise ValueError(f"{src}:{n}: not a calibration pair ({first}); nothing was seeded") from None
    mine = [c for c in shipped if c.tier == tier]
    for c in mine:
        ledger.append(c)
    return len(mine)


def tier_pairs(records: Sequence, tier: str) -> list[CalibrationPairRecord]:
    """The tier's calibration pairs, the latest per technique."""
    latest = {c.technique: c for c in records if isinstance(c, CalibrationPairRecord) and c.tier == tier}
    return list(latest.values())


def fidelity_of(records: Sequence, tier: str) -> Fidelity:
    pairs = tier_pairs(records, tier)
    x = [p.lower_delta for p in pairs]
    y = [p.upper_delta for p in pairs]
    rho = rho_p = None
    if len(pairs) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
        r = stats.spearmanr(x, y)
        rho, rho_p = float(r.statistic), float(r.pvalue)
    signs = [math.copysign(1, a) == math.copysign(1, b) for a, b in zip(x, y, strict=True) if a and b]
    runs = [
        r.cost.device_seconds
        for r in records
        if isinstance(r, RunRecord)
        and r.tier == tier
        and r.result.status == "ok"
        and r.experiment.startswith("fidelity-")
    ]
    calibs = calibrations_from_ledger(records, tier, FINAL_TIER)
    return Fidelity(
        tier=tier,
        pairs=pairs,
        spearman=rho,
        spearman_p=rho_p,
        sign_agreement=sum(signs) / len(signs) if signs else None,
        calibrations={str(k): v for k, v in calibs.items()},
        seconds_per_run=statistics.fmean(runs) if runs else None,
    )


def describe(f: Fidelity) -> list[str]:
    """The printed summary: one line per pair, then Spearman, signs and the fitted slopes."""
    out = [
        f"fidelity of tier {f.tier} against published 8xH100 deltas ({len(f.pairs)} pairs):",
        f"  {'technique':<24}{'kind':<14}{'tier delta':>12}{'+-se':>9}{'published':>11}  seeds",
    ]
    for p in sorted(f.pairs, key=lambda p: p.upper_delta):
        se = "" if p.lower_se is None else f"{p.lower_se:.5f}"
        out.append(
            f"  {p.technique:<24}{p.technique_kind:<14}{p.lower_delta:>+12.5f}{se:>9}{p.upper_delta:>+11.5f}"
            f"  {len(p.seeds)}"
        )
    rho = (
        "n/a (needs 3 pairs with spread)"
        if f.spearman is None
        else f"{f.spearman:+.2f} (p={f.spearman_p:.2g})"
    )
    sign = "n/a" if f.sign_agreement is None else f"{f.sign_agreement:.0%}"
    out.append(
        f"  Spearman {rho}; sign agreement {sign}"
        + (f"; {f.seconds_per_run:.1f} s per run" if f.seconds_per_run else "")
    )
    for kind, c in f.calibrations.items():
        lo, hi = slope_interval(c)
        out.append(
            f"  {kind}: full = {c.slope:+.3f} x tier (95% {lo:+.3f}..{hi:+.3f}), {c.n} own pair(s), "
            f"from {c.source}"
        )
    return out


def run_fidelity(
    ws_root: str | Path,
    *,
    tier: str,
    seeds: int = 2,
    only: Sequence[str] | None = None,
    progress: Progress | None = None,
    session: str | None = None,
) -> Fidelity:
    """Run the panel on matched seeds at `tier` and write the tier's calibration pairs to the ledger."""
    from agent import lock
    from agent.session import ensure_data

    progress = progress or Progress.quiet()
    ws = Workspace.at(ws_root)
    tiers = load_tiers(ws.tiers_file)
    if tier not in tiers:
        raise ValueError(f"unknown tier {tier!r}; tiers.toml has {', '.join(tiers)}")
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    panel = load_panel(only)
    if not panel:
        raise ValueError("the panel is empty: published_deltas.toml has no [[full]] entries")
    t: Tier = tiers[tier]
    session = session or "fidelity-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    ledger = Ledger(ws.ledger)
    lock.acquire(ws.lock, session)
    try:
        ensure_data(ws, progress)
        ctx = ToolContext(ws=ws, ledger=ledger, session=session, tier=t, tiers=tiers, python=sys.executable)
        hardware = hardware_id(ctx, t.hardware)
        sha = sha256_text(ws.script.read_text())
        seed_list = list(range(SEED_BASE, SEED_BASE + seeds))
        experiment = f"fidelity-{tier}-{sha[:8]}"[:64]
        progress.line(f"fidelity on {tier}: baseline + {len(panel)} technique(s) x {seeds} seed(s)")
        _, base = sweep(
            SweepArgs(
                candidates=[Candidate(name="baseline")],
                seeds=seed_list,
                experiment=experiment,
                hypothesis="fidelity panel: the workspace's trainer as is",
            ),
            ctx,
        )
        base_by_seed = {r.seed: r for r in base if r.result.status == "ok" and r.result.val_bpb is not None}
        if not base_by_seed:
            raise RuntimeError(
                f"the baseline does not train on {tier}: "
                + (base[-1].result.error or base[-1].result.status if base else "no runs")[-800:]
            )
        for item in panel:
            name = item.technique.replace("_", "-")
            _, recs = sweep(
                SweepArgs(
                    candidates=[Candidate(name=name, env=item.env)],
                    seeds=seed_list,
                    experiment=experiment,
                    technique=item.technique,
                    hypothesis=f"fidelity panel: {item.technique} (published {item.full_delta:+g})",
                ),
                ctx,
            )
            ok = [
                r
                for r in recs
                if r.result.status == "ok" and r.result.val_bpb is not None and r.seed in base_by_seed
            ]
            if not ok:
                progress.line(
                    f"  {item.technique}: no finished run, left out "
                    f"({recs[-1].result.status if recs else 'none'})"
                )
                continue
            diffs = [
                float(r.result.val_bpb) - float(base_by_seed[r.seed].result.val_bpb)  # type: ignore[arg-type]
                for r in ok
            ]
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) >= 2 else None
            pair = CalibrationPairRecord(
                session=session,
                tier=tier,
                hardware=hardware,
                technique=item.technique,
                technique_kind=item.kind if item.kind in KINDS else "architecture",
                lower_delta=statistics.fmean(diffs),
                lower_se=se,
                upper_delta=item.full_delta,
                source=item.source,
                env=item.env,
                seeds=[r.seed for r in ok],
                seed_diffs=diffs,
                runs=[r.run_id for r in ok] + [base_by_seed[r.seed].run_id for r in ok],
                script_sha=sha,
            )
            ledger.append(pair)
            progress.line(
                f"  {item.technique}: {pair.lower_delta:+.5f} on {tier} vs {item.full_delta:+.5f} published"
            )
    finally:
        lock.release(ws.lock)
    return fidelity_of(ledger.records(), tier)


# ---------------------------------------------------------------------------------------------- trust


class KindTrust(BaseModel):
    kind: str
    pairs: int
    spearman: float | None
    sign_agreement: float | None
    slope: float
    slope_low: float
    slope_high: float
    level: str  # trusted | weak | unmeasured


def kind_trust(records: Sequence, tier: str) -> dict[str, KindTrust]:
    """Per technique kind: how far this tier's verdicts track full scale (its own fidelity pairs)."""
    pairs = tier_pairs(records, tier)
    calibs = calibrations_from_ledger(records, tier, FINAL_TIER)
    out: dict[str, KindTrust] = {}
    for kind in KINDS:
        own = [p for p in pairs if p.technique_kind == kind]
        x, y = [p.lower_delta for p in own], [p.upper_delta for p in own]
        rho = None
        if len(own) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
            rho = float(stats.spearmanr(x, y).statistic)
        signs = [math.copysign(1, a) == math.copysign(1, b) for a, b in zip(x, y, strict=True) if a and b]
        agree = sum(signs) / len(signs) if signs else None
        lo, hi = slope_interval(calibs[kind])
        if not own:
            level = "unmeasured"
        elif rho is not None and rho >= TRUST_SPEARMAN and (agree or 0.0) >= TRUST_SPEARMAN and lo > 0:
            level = "trusted"
        else:
            level = "weak"
        out[kind] = KindTrust(
            kind=kind,
            pairs=len(own),
            spearman=rho,
            sign_agreement=agree,
            slope=calibs[kind].slope,
            slope_low=lo,
            slope_high=hi,
            level=level,
        )
    return out


def needs_gpu_tier(records: Sequence, tier: str, technique: str | None, kind: str) -> str | None:
    """Why this tier cannot see the technique (so a verdict against it says "needs a GPU tier"), or None.

    From the tier's own fidelity pair for the technique: its sign disagreed with the published
    full-scale delta, or its effect stayed within two standard errors; without a pair, a training change
    while the tier's training slope may be zero or negative (they did not transfer, PR #2005).
    """
    pair = next((p for p in tier_pairs(records, tier) if p.technique == technique), None)
    if pair is not None:
        if pair.lower_delta and math.copysign(1, pair.lower_delta) != math.copysign(1, pair.upper_delta):
            return (
                f"on {tier} its delta {pair.lower_delta:+.5f} has the opposite sign of the published "
                f"{pair.upper_delta:+.5f} (golf fidelity)"
            )
        if pair.lower_se and abs(pair.lower_delta) < 2 * pair.lower_se:
            return f"on {tier} its effect {pair.lower_delta:+.5f} stays within noise (se {pair.lower_se:.5f})"
        return None
    if kind != "training":
        return None  # architecture deltas transfer (PR #2005); a rejection on the proxy stands
    trust = kind_trust(records, tier).get(kind)
    if trust is not None and trust.slope_low <= 0:
        return (
            f"{kind} changes on {tier} map to full scale with slope {trust.slope:+.2f} "
            f"(95% {trust.slope_low:+.2f}..{trust.slope_high:+.2f}): the proxy may not see them"
        )
    return None


def fidelity_lines(records: Sequence, tier: str) -> list[str]:
    """The digest's fidelity section: per kind, how far this tier's verdicts can be trusted."""
    out = [f"fidelity of {tier} (golf fidelity pairs vs published 8xH100 deltas):"]
    for t in kind_trust(records, tier).values():
        rho = "n/a" if t.spearman is None else f"{t.spearman:+.2f}"
        sign = "n/a" if t.sign_agreement is None else f"{t.sign_agreement:.0%}"
        out.append(
            f"  {t.kind}: {t.level} ({t.pairs} pairs, Spearman {rho}, signs {sign}, slope {t.slope:+.3f} "
            f"[{t.slope_low:+.3f}..{t.slope_high:+.3f}])"
        )
    blind = [
        p.technique
        for p in tier_pairs(records, tier)
        if needs_gpu_tier(records, tier, p.technique, p.technique_kind)
    ]
    if blind:
        out.append(f"  needs a GPU tier (this tier cannot see them): {', '.join(sorted(blind))}")
    return out


def digest_lines(records: Sequence, tier: str, session: str | None = None) -> list[str]:
    """Fidelity per kind plus the projected 8xH100 score against the frontier: for agent/prompt.py."""
    from agent.projection import projection_lines

    return fidelity_lines(records, tier) + projection_lines(records, tier, session)


def context_lines(ctx: ToolContext) -> list[str]:
    """The same lines for the LLM planner's research context, from a ToolContext."""
    return digest_lines(ctx.ledger.records(), ctx.tier.name, ctx.session)
