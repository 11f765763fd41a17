"""record_finding: write a technique's delta into the battle plan, backed by the judge's statistics.

A planner may write "inconclusive" with a note at any time, but "confirmed" and "rejected" need a
decision record in the ledger with that outcome: the statistics are copied from it, never taken from
the caller, so no planner can declare a win the judge did not measure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from memory.battle_plan import render_confirmed, render_dead_ends, write_blocks
from memory.records import DecisionRecord, FindingRecord
from tools.context import ToolContext
from tools.registry import ToolError, tool


class FindingArgs(BaseModel):
    technique: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    status: Literal["confirmed", "rejected", "inconclusive"]
    note: str = Field(default="", max_length=1000)
    experiment: str | None = Field(default=None, max_length=120, description="the decided experiment's id")


class FindingResult(BaseModel):
    technique: str
    status: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    blocks_written: list[str]


def latest_findings(ctx: ToolContext) -> list[FindingRecord]:
    """The newest finding per (technique, tier): what the plan's blocks show."""
    latest: dict[tuple[str, str], FindingRecord] = {}
    for f in ctx.ledger.records(FindingRecord):
        latest[(f.technique, f.tier)] = f
    return list(latest.values())


def rewrite_plan_blocks(ctx: ToolContext) -> list[str]:
    """Blocks are rendered from the whole ledger every time, so a crash between steps is harmless."""
    found = latest_findings(ctx)
    blocks = {
        "confirmed": render_confirmed([f for f in found if f.status == "confirmed"]),
        "dead_ends": render_dead_ends([f for f in found if f.status != "confirmed"]),
    }
    write_blocks(ctx.ws.battle_plan, blocks)
    return sorted(blocks)


@tool(
    "record_finding",
    "Note a technique's outcome in battle_plan.md; confirmed/rejected only as the judge decided it.",
    FindingArgs,
)
def record_finding(args: FindingArgs, ctx: ToolContext) -> FindingResult:
    decisions = [
        d
        for d in ctx.ledger.records(DecisionRecord)
        if d.technique == args.technique and (args.experiment is None or d.experiment == args.experiment)
    ]
    backing = decisions[-1] if decisions else None
    if args.status != "inconclusive":
        if backing is None:
            raise ToolError(f"no decision recorded for {args.technique!r}; run it through a sweep first")
        if backing.outcome != args.status:
            raise ToolError(
                f"the judge's latest decision on {args.technique!r} is {backing.outcome!r} "
                f"(delta {backing.delta}, p {backing.p_value}); cannot record {args.status!r}"
            )
    f = FindingRecord(
        session=ctx.session,
        technique=args.technique,
        status=args.status,
        tier=backing.tier if backing else ctx.tier.name,
        delta=backing.delta if backing else None,
        ci_low=backing.ci_low if backing else None,
        ci_high=backing.ci_high if backing else None,
        p_value=backing.p_value if backing else None,
        n=backing.n_candidate if backing else 0,
        note=args.note,
        experiment=backing.experiment if backing else args.experiment,
    )
    ctx.ledger.append(f)
    written = rewrite_plan_blocks(ctx)
    return FindingResult(
        technique=f.technique,
        status=f.status,
        delta=f.delta,
        ci_low=f.ci_low,
        ci_high=f.ci_high,
        p_value=f.p_value,
        blocks_written=written,
    )


# -- query_findings: the whole history, so nothing falls off a bounded prompt ---------------------------

MAX_QUERY_ROWS = 25


def sig(x: float | None, digits: int = 3) -> str:
    """A number to meaningful digits (bpb deltas of 1e-3 matter; 17 digits do not)."""
    return "-" if x is None else f"{x:.{digits}g}"


class QueryArgs(BaseModel):
    technique: str | None = Field(default=None, max_length=64, description="substring of the technique id")
    outcome: Literal["confirmed", "rejected", "inconclusive"] | None = None
    tier: str | None = Field(default=None, max_length=64)
    newest: int = Field(
        default=10, ge=1, le=MAX_QUERY_ROWS, description=f"rows, newest first (<= {MAX_QUERY_ROWS})"
    )


class QueryResult(BaseModel):
    matches: int
    rows: list[str]  # experiment technique outcome kept delta [ci] p n tier planner


def decision_row(d: DecisionRecord) -> str:
    ci = f"[{sig(d.ci_low)},{sig(d.ci_high)}]" if d.ci_low is not None or d.ci_high is not None else "-"
    env = " ".join(f"{k}={v}" for k, v in sorted(d.env.items()))[:80]
    return (
        f"{d.experiment} {d.technique or d.candidate} {d.outcome}{' kept' if d.kept else ''} "
        f"d={sig(d.delta)} ci={ci} p={sig(d.p_value, 2)} n={d.n_candidate} {d.tier}"
        f"{' env ' + env if env else ''}"
    )


@tool(
    "query_findings",
    "Past verdicts (all sessions) by technique, outcome, tier.",
    QueryArgs,
)
def query_findings(args: QueryArgs, ctx: ToolContext) -> QueryResult:
    want = (args.technique or "").lower()
    hits = [
        d
        for d in ctx.ledger.records(DecisionRecord)
        if (not want or want in (d.technique or d.candidate).lower())
        and (args.outcome is None or d.outcome == args.outcome)
        and (args.tier is None or d.tier == args.tier)
    ]
    return QueryResult(matches=len(hits), rows=[decision_row(d) for d in reversed(hits[-args.newest :])])
