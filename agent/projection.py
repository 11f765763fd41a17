"""The incumbent scored against the frontier: a projected 8xH100 val_bpb with its interval.

projection = the published full-scale score of the nearest known configuration (the latest final this
ledger ran, else the record of the preset the session started from, else the challenge's baseline 1.2244) + the calibrated full-scale deltas of every change
kept on top of it (agent/calibration.py, predict: each proxy delta mapped through its kind's fitted
slope, with the line's scatter, the slope's uncertainty and the proxy's own error). The deltas' errors
are treated as independent (a stack of redundant techniques will be optimistic; the finals correct the
fit). Promotion to a final is proposed only when the projection beats the best legal frontier entry by
the challenge's record margin (0.005 nats) with probability PROMOTE_PROB.

`projection_lines(records, tier, session)` gives the lines `golf status`, the report and the planner's
digest show (agent/prompt.py may call it).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from scipy import stats

from agent.calibration import (
    BASELINE_BPB,
    FINAL_SEED_STD,
    FINAL_TIER,
    calibrations_from_ledger,
    decision_kind,
    decision_se,
    predict,
)
from agent.judge import SP1024_BYTES_PER_TOKEN, nats_to_bpb
from memory.records import DecisionRecord, EventRecord, FinalRecord, RunRecord

LEADERBOARD = Path(__file__).resolve().parent.parent / "memory" / "data" / "leaderboard.tsv"
FRONTIER_STATUSES = ("record", "merged")  # leaderboard rows that count as the legal frontier

PROMOTE_PROB = 0.9  # how sure the projection must be of a record before a final is proposed
RECORD_MARGIN_BPB = nats_to_bpb(0.005, 1.0, SP1024_BYTES_PER_TOKEN)


class KeptTerm(BaseModel):
    experiment: str
    technique: str
    kind: str
    proxy_delta: float
    full_mean: float
    full_sd: float


class Projection(BaseModel):
    tier: str
    base_bpb: float
    base_source: str
    base_sd: float
    terms: list[KeptTerm] = Field(default_factory=list)
    mean: float
    sd: float
    low: float  # 90% interval
    high: float
    frontier_bpb: float | None = None
    frontier_source: str = ""
    margin: float = RECORD_MARGIN_BPB
    p_record: float | None = None  # P(true score < frontier - margin)
    promote: bool = False


def _base(records: Sequence, preset_bpb: float | None) -> tuple[float, float, str, str | None]:
    """The nearest known configuration: the latest finished final, else a preset's record, else the baseline."""
    finals = [
        f for f in records if isinstance(f, FinalRecord) and f.status in ("ok", "partial") and f.val_bpbs
    ]
    if finals:
        f = finals[-1]
        sd = (statistics.stdev(f.val_bpbs) if len(f.val_bpbs) >= 2 else FINAL_SEED_STD) / math.sqrt(
            len(f.val_bpbs)
        )
        return statistics.fmean(f.val_bpbs), sd, f"final {f.final_id}", f.experiment
    if preset_bpb is not None:
        return preset_bpb, FINAL_SEED_STD / math.sqrt(3), "preset record", None
    return BASELINE_BPB, FINAL_SEED_STD / math.sqrt(3), "challenge baseline", None


def project(
    records: Sequence,
    tier: str,
    session: str | None = None,
    *,
    frontier_bpb: float | None = None,
    frontier_source: str = "",
    preset_bpb: float | None = None,
) -> Projection:
    """The projected 8xH100 score of the incumbent: base + calibrated deltas of the changes kept since it."""
    preset_name = None
    if preset_bpb is None:  # the preset this session started from, as its start_preset event records it
        preset_bpb, preset_name = start_preset(records, session)
    base, base_sd, source, base_exp = _base(records, preset_bpb)
    if preset_name and source == "preset record":
        source = f"preset {preset_name}"
    runs = {r.run_id: r for r in records if isinstance(r, RunRecord)}
    calibs = calibrations_from_ledger(records, tier, FINAL_TIER)
    decisions = [d for d in records if isinstance(d, DecisionRecord) and d.tier == tier]
    if base_exp is not None:  # only what was kept after the final's experiment is not in its score yet
        idx = next((i for i, d in enumerate(decisions) if d.experiment == base_exp), -1)
        decisions = decisions[idx + 1 :]
    kept = [
        d for d in decisions if d.kept and d.delta is not None and (session is None or d.session == session)
    ]
    terms = []
    for d in kept:
        kind = decision_kind(d, runs)
        m, s = predict(calibs[kind], float(d.delta or 0.0), decision_se(d) or 0.0)
        terms.append(
            KeptTerm(
                experiment=d.experiment,
                technique=d.technique or d.candidate,
                kind=kind,
                proxy_delta=float(d.delta or 0.0),
                full_mean=m,
                full_sd=s,
            )
        )
    mean = base + sum(t.full_mean for t in terms)
    sd = math.sqrt(base_sd**2 + sum(t.full_sd**2 for t in terms))
    z = float(stats.norm.ppf(0.95))
    p = promote = None
    if frontier_bpb is not None:
        p = (
            float(stats.norm.cdf((frontier_bpb - RECORD_MARGIN_BPB - mean) / sd))
            if sd > 0
            else float(mean < frontier_bpb - RECORD_MARGIN_BPB)
        )
        promote = p >= PROMOTE_PROB
    return Projection(
        tier=tier,
        base_bpb=base,
        base_source=source,
        base_sd=base_sd,
        terms=terms,
        mean=mean,
        sd=sd,
        low=mean - z * sd,
        high=mean + z * sd,
        frontier_bpb=frontier_bpb,
        frontier_source=frontier_source,
        p_record=p,
        promote=bool(promote),
    )


def describe_projection(p: Projection) -> list[str]:
    out = [
        f"projected 8xH100 val_bpb: {p.mean:.4f} (90% {p.low:.4f}..{p.high:.4f}) = {p.base_source} "
        f"{p.base_bpb:.4f} + {len(p.terms)} kept change(s) calibrated from {p.tier}"
    ]
    for t in p.terms:
        out.append(
            f"  {t.technique} ({t.kind}): {t.proxy_delta:+.5f} on {p.tier} -> {t.full_mean:+.5f} "
            f"+- {t.full_sd:.5f} at full scale"
        )
    if p.frontier_bpb is not None and p.p_record is not None:
        verdict = "propose a final" if p.promote else "not yet: no final proposed"
        out.append(
            f"best legal frontier {p.frontier_bpb:.4f} ({p.frontier_source}); a record needs < "
            f"{p.frontier_bpb - p.margin:.4f}: P = {p.p_record:.2f} ({verdict}, threshold {PROMOTE_PROB:g})"
        )
    return out


def projection_lines(records: Sequence, tier: str, session: str | None = None) -> list[str]:
    """What `golf status`, the report and the digest print: the projection against the frontier."""
    best, source = frontier_best(list(records))
    return describe_projection(project(records, tier, session, frontier_bpb=best, frontier_source=source))


def start_preset(records: Sequence, session: str | None = None) -> tuple[float | None, str | None]:
    """The published score of the preset the session started from (its `start_preset` event): a session
    that starts at the frontier's flags is scored from the frontier's record, not from the baseline."""
    for r in reversed(records):
        if (
            isinstance(r, EventRecord)
            and r.event == "start_preset"
            and (session is None or r.session == session)
        ):
            bpb = r.detail.get("published_bpb")
            record = r.detail.get("record")
            name = str(r.detail.get("name") or "")
            label = f"{name} (PR #{record})" if record else name
            return (float(bpb), label) if isinstance(bpb, int | float) else (None, None)
    return None, None


def frontier_best(records: list, leaderboard: Path | None = LEADERBOARD) -> tuple[float | None, str]:
    """The best legal frontier score and where it comes from: the leaderboard file, else the finals."""
    if leaderboard is not None and leaderboard.exists():
        with open(leaderboard, newline="") as f:
            rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get("status") in FRONTIER_STATUSES]
        best = min(rows, key=lambda r: float(r["val_bpb"]), default=None)
        if best is not None:
            return float(best["val_bpb"]), f"leaderboard PR #{best['pr']}"
    seen = [f.frontier_bpb for f in records if isinstance(f, FinalRecord) and f.frontier_bpb is not None]
    if seen:
        return min(seen), "finals' frontier"
    return None, "no frontier data"
