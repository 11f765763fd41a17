"""record_finding: write a technique's delta into the battle plan, backed by the judge's statistics.

A planner may write "inconclusive" with a note at any time, but "confirmed" and "rejected" need a
decision record in the ledger with that outcome: the statistics are copied from it, never taken from
the caller, so no planner can declare a win the judge did not measure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from memory.battle_plan import render_confirmed, render_dead_ends, render_preset_worth, write_blocks
from memory.knobs import read_knobs
from memory.presets import PRESETS_FILE, PresetError, get_preset
from memory.records import DecisionRecord, EventRecord, FindingRecord, RunRecord
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


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip().lower() == b.strip().lower()


def ablation_of(env: dict[str, str], preset_env: dict[str, str], defaults: dict[str, str]) -> str | None:
    """What an experiment turns off of its start preset, e.g. "TTT_ENABLE 1->0": every knob it sets is one
    the preset moved, set back to the trainer's default. None when it is not an ablation (PARALLEL_START=3
    on a preset with 8 moves the technique, it does not remove it)."""
    parts = []
    for k, v in env.items():
        if k not in preset_env or k not in defaults or _same(preset_env[k], v) or not _same(v, defaults[k]):
            return None
        parts.append(f"{k} {preset_env[k]}->{v}")
    return ", ".join(parts) or None


def preset_ablations(ctx: ToolContext, found: list[FindingRecord]) -> list[tuple[FindingRecord, str]]:
    """The findings that ablate the preset their session started from, with what each turned off."""
    records = ctx.ledger.records()
    starts = {
        e.session: str(e.detail.get("name"))
        for e in records
        if isinstance(e, EventRecord) and e.event == "start_preset"
    }
    if not starts:
        return []
    decisions = {d.experiment: d for d in records if isinstance(d, DecisionRecord)}
    run_env = {r.run_id: r.env for r in records if isinstance(r, RunRecord)}
    defaults = {k.name: k.default for k in read_knobs(ctx.ws.script.read_text(encoding="utf-8"))}
    presets: dict[str, dict[str, str]] = {}
    out = []
    for f in found:
        d = decisions.get(f.experiment or "")
        name = starts.get(d.session) if d else None
        if d is None or name is None or f.status == "inconclusive":
            continue
        if name not in presets:
            try:
                presets[name] = get_preset(ctx.ws.root / PRESETS_FILE, name).env
            except PresetError:  # an unreadable presets file costs this table, never the findings
                presets[name] = {}
        # what the candidate changed against the incumbent it was judged with (its env holds both)
        inc = next((run_env[r] for r in d.incumbent_runs if r in run_env), {})
        changed = {k: v for k, v in d.env.items() if k not in inc or not _same(inc[k], v)}
        turned_off = ablation_of(changed, presets[name], defaults)
        if turned_off:
            out.append((f, turned_off))
    return out


def rewrite_plan_blocks(ctx: ToolContext) -> list[str]:
    """Blocks are rendered from the whole ledger every time, so a crash between steps is harmless."""
    found = latest_findings(ctx)
    blocks = {
        "confirmed": render_confirmed([f for f in found if f.status == "confirmed"]),
        "dead_ends": render_dead_ends([f for f in found if f.status != "confirmed"]),
        "preset_worth": render_preset_worth(preset_ablations(ctx, found)),
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
