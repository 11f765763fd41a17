"""`golf report`: a markdown report with PNG pictures, from the ledger alone (plus the static frontier file).

Because it reads nothing but the append-only ledger, it renders any past session the same way. The
figures: val_bpb per experiment (with the incumbent's line and the frontier), confirmed technique
deltas with their intervals per tier, the calibration scatter with its fit, and spend over time; then
a table of every decision with its statistics. report.json holds exactly the data that was plotted,
so a reader (or a test) can check a picture against its numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator  # Figure + savefig renders with Agg; no pyplot global state
from pydantic import TypeAdapter

from agent.calibration import (
    FINAL_TIER,
    KINDS,
    Calibration,
    describe,
    fit_calibration,
    load_prior,
    pairs_from_ledger,
    predict,
    published_pairs,
)
from agent.projection import LEADERBOARD, frontier_best
from memory.records import (
    CalibrationPairRecord,
    DecisionRecord,
    EventRecord,
    FinalRecord,
    FindingRecord,
    NoiseRecord,
    Record,
    RunRecord,
    SpendRecord,
)
from memory.workspace import Workspace

DPI = 100
WIDTH_IN = 9.0
FINAL_GPUS = 8
COLORS = {"confirmed": "tab:green", "rejected": "tab:red", "inconclusive": "tab:gray"}


# ---------------------------------------------------------------------------------------------- inputs


def _resolve(source: str | Path, out_dir: str | Path | None) -> tuple[Path, Path]:
    source = Path(source)
    if source.is_dir():
        ws = Workspace.at(source)
        return ws.ledger, Path(out_dir) if out_dir else ws.reports_dir
    if not source.exists():
        raise FileNotFoundError(f"no ledger at {source}")
    return source, Path(out_dir) if out_dir else source.parent / "report"


def read_records(ledger: Path) -> list:
    """The ledger's records, read without touching the file (a torn last line from a crash is skipped;
    Ledger() would move it aside, and a report must not write to what it reads)."""
    if not ledger.exists():
        return []
    adapter: TypeAdapter = TypeAdapter(Record)
    lines = [ln for ln in ledger.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(adapter.validate_json(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(v: float | None, digits: int = 5, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _time(at: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(at)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def collect(records: list, leaderboard: Path | None = LEADERBOARD) -> dict[str, Any]:
    """Everything the report plots and tabulates, as plain data (the content of report.json)."""
    runs = {r.run_id: r for r in records if isinstance(r, RunRecord)}

    def run_values(ids: list[str]) -> list[float]:
        values = [runs[i].result.val_bpb for i in ids if i in runs and runs[i].result.status == "ok"]
        return [v for v in values if v is not None]

    decisions = [d for d in records if isinstance(d, DecisionRecord)]
    points = []
    for i, d in enumerate(decisions):
        cand, inc = _mean(run_values(d.candidate_runs)), _mean(run_values(d.incumbent_runs))
        if cand is None and inc is not None and d.delta is not None:
            cand = inc + d.delta
        points.append(
            {
                "index": i,
                "experiment": d.experiment,
                "technique": d.technique or d.candidate,
                "tier": d.tier,
                "hardware": d.hardware,
                "session": d.session,
                "outcome": d.outcome,
                "kept": d.kept,
                "candidate_bpb": cand,
                "incumbent_bpb": inc,
                "delta": d.delta,
                "ci": [d.ci_low, d.ci_high],
                "p": d.p_value,
                "n_candidate": d.n_candidate,
                "n_incumbent": d.n_incumbent,
                "noise_std": d.noise_std,
                "at": d.at,
                "reason": d.reason,
            }
        )

    finals = []
    for f in records:
        if isinstance(f, FinalRecord):
            finals.append(
                {
                    "final_id": f.final_id,
                    "experiment": f.experiment,
                    "status": f.status,
                    "seeds": f.seeds,
                    "val_bpbs": f.val_bpbs,
                    "mean": _mean(f.val_bpbs),
                    "sd": statistics.stdev(f.val_bpbs) if len(f.val_bpbs) >= 2 else None,
                    "p": f.p_value,
                    "record_claim": f.record_claim,
                    "dollars": f.dollars,
                    "at": f.at,
                }
            )

    confirmed: dict[tuple[str, str], DecisionRecord] = {}
    for d in decisions:
        if d.outcome == "confirmed" and d.delta is not None:
            confirmed[(d.technique or d.candidate, d.tier)] = d
    deltas = [
        {
            "technique": t,
            "tier": tier,
            "delta": d.delta,
            "ci": [d.ci_low, d.ci_high],
            "p": d.p_value,
            "n": d.n_candidate,
        }
        for (t, tier), d in confirmed.items()
    ]

    tiers = Counter(d.tier for d in decisions if d.tier != FINAL_TIER)
    # no decisions yet: the tier `golf fidelity` measured, whose own calibration pairs are plotted
    tiers = tiers or Counter(c.tier for c in records if isinstance(c, CalibrationPairRecord))
    lower = tiers.most_common(1)[0][0] if tiers else None
    calib: dict[str, Any] = {"lower_tier": lower, "upper_tier": FINAL_TIER, "kinds": {}}
    own = pairs_from_ledger(records, lower, FINAL_TIER) if lower else []
    prior = load_prior(lower)
    published = published_pairs()
    for kind in KINDS:
        c = fit_calibration(own, kind, prior)
        calib["kinds"][kind] = {
            "fit": c.model_dump(),
            "describe": describe(c),
            "pairs": [p.model_dump() for p in own if p.kind == kind],
            "published": [p.model_dump() for p in published if p.kind == kind],
        }

    spend = _spend_series(records)
    best, best_source = frontier_best(records, leaderboard)
    projection: list[str] = []
    if lower:  # fidelity per kind and the incumbent's projected 8xH100 score (agent/fidelity, projection)
        from agent.fidelity import fidelity_lines
        from agent.projection import describe_projection, project

        sessions = [d.session for d in decisions]
        projection = fidelity_lines(records, lower) + describe_projection(
            project(
                records,
                lower,
                sessions[-1] if sessions else None,
                frontier_bpb=best,
                frontier_source=best_source,
            )
        )
    return {
        "decisions": points,
        "finals": finals,
        "deltas": deltas,
        "calibration": calib,
        "spend": spend,
        "frontier": {"best_bpb": best, "source": best_source},
        "projection": projection,
        "findings": [f.model_dump() for f in records if isinstance(f, FindingRecord)],
        "noise": [
            {"tier": n.tier, "hardware": n.hardware, "std": n.std, "n": len(n.values), "at": n.at}
            for n in records
            if isinstance(n, NoiseRecord)
        ],
        "sessions": sorted({r.session for r in records if hasattr(r, "session")}),
        "events": sum(1 for r in records if isinstance(r, EventRecord)),
        "runs": dict(Counter(f"{r.tier} {r.result.status}" for r in runs.values())),
    }


def _spend_series(records: list) -> list[dict[str, Any]]:
    """Cumulative real dollars and device-hours over time.

    Spend records are increments booked while a pod runs (agent/finals.py); a final without any counts
    its own total. Runs add their device-seconds (seconds x processes) and any dollars of theirs; a
    final's pod seconds count FINAL_GPUS device-seconds each.
    """
    events: list[tuple[dt.datetime, float, float]] = []  # time, dollars added, device-hours added
    booked: set[str] = set()
    for r in records:
        if isinstance(r, SpendRecord):
            booked.add(r.final_id)
            events.append((_time(r.at), r.dollars, r.seconds * FINAL_GPUS / 3600.0))
        elif isinstance(r, FinalRecord) and r.final_id not in booked and r.dollars:
            booked.add(r.final_id)
            events.append((_time(r.at), r.dollars, 0.0))
        elif isinstance(r, RunRecord) and r.tier != FINAL_TIER:  # a final's runs are in its spend records
            events.append((_time(r.at), r.cost.dollars or 0.0, r.cost.device_seconds / 3600.0))
    events.sort(key=lambda e: e[0])
    out, dollars, hours = [], 0.0, 0.0
    for t, d, h in events:
        dollars += d
        hours += h
        out.append({"at": t.isoformat(), "dollars": dollars, "device_hours": hours})
    return out


# ---------------------------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Figure:
    """Write the PNG and hand back the figure, so a caller can check what was drawn."""
    fig.savefig(path, dpi=DPI, format="png")
    return fig


def plot_val_bpb(data: dict[str, Any], path: Path) -> Figure:
    """One panel per tier (results on different hardware are never drawn on one axis), plus the finals."""
    points = [p for p in data["decisions"] if p["candidate_bpb"] is not None]
    tiers = list(dict.fromkeys(p["tier"] for p in points))
    finals = [f for f in data["finals"] if f["mean"] is not None]
    panels = len(tiers) + (1 if finals else 0) or 1
    fig = Figure(figsize=(WIDTH_IN, 3.2 * panels))
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    best, source = data["frontier"]["best_bpb"], data["frontier"]["source"]
    for ax, tier in zip(axes, tiers, strict=False):
        mine = [p for p in points if p["tier"] == tier]
        for outcome, color in COLORS.items():
            for kept in (True, False):
                sel = [p for p in mine if p["outcome"] == outcome and p["kept"] == kept]
                if sel:
                    ax.scatter(
                        [p["index"] for p in sel],
                        [p["candidate_bpb"] for p in sel],
                        s=36,
                        facecolors=color if kept else "none",
                        edgecolors=color,
                        label=f"{outcome}{' (kept)' if kept else ''}",
                        zorder=3,
                        gid="decisions",
                    )
        inc = [(p["index"], p["incumbent_bpb"]) for p in mine if p["incumbent_bpb"] is not None]
        if inc:
            ax.step([i for i, _ in inc], [v for _, v in inc], where="post", color="black", lw=1.2)
            ax.scatter(
                [i for i, _ in inc],
                [v for _, v in inc],
                marker="_",
                s=200,
                color="black",
                label="incumbent",
                zorder=2,
            )
        for p in mine:
            ax.annotate(
                p["technique"][:14],
                (p["index"], p["candidate_bpb"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"val_bpb per experiment, tier {tier}", fontsize=10)
        ax.set_xlabel("decision index (ledger order)")
        ax.set_ylabel("val_bpb")
        ax.grid(alpha=0.3)
        if best is not None and not finals:
            ax.text(
                0.01,
                0.02,
                f"frontier {best:.4f} ({source}): 8xH100 scale, not drawn on this tier",
                transform=ax.transAxes,
                fontsize=7,
                color="tab:purple",
            )
        ax.legend(fontsize=7, loc="upper right")
    if finals:
        ax = axes[len(tiers)]
        xs = list(range(len(finals)))
        ax.errorbar(
            xs,
            [f["mean"] for f in finals],
            yerr=[f["sd"] or 0.0 for f in finals],
            fmt="o",
            color="tab:blue",
            capsize=3,
            label="final (mean +- sd over seeds)",
        )
        for x, f in zip(xs, finals, strict=True):
            ax.annotate(
                f["final_id"][:14], (x, f["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        if best is not None:
            ax.axhline(
                best, color="tab:purple", ls="--", label=f"frontier {best:.4f} ({source})", gid="frontier"
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"finals ({FINAL_TIER})", fontsize=10)
        ax.set_xlabel("final (ledger order)")
        ax.set_ylabel("val_bpb")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not points and not finals:
        axes[0].text(
            0.5, 0.5, "no decisions recorded yet", ha="center", va="center", transform=axes[0].transAxes
        )
    fig.tight_layout()
    return _save(fig, path)


def plot_deltas(data: dict[str, Any], path: Path) -> Figure:
    rows = data["deltas"]
    fig = Figure(figsize=(WIDTH_IN, max(2.5, 0.35 * len(rows) + 1.2)))
    ax = fig.subplots()
    if rows:
        ys = list(range(len(rows)))
        deltas = [r["delta"] for r in rows]
        lo = [r["delta"] - r["ci"][0] if r["ci"][0] is not None else 0.0 for r in rows]
        hi = [r["ci"][1] - r["delta"] if r["ci"][1] is not None else 0.0 for r in rows]
        tiers = list(dict.fromkeys(r["tier"] for r in rows))
        palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
        for t_i, tier in enumerate(tiers):
            idx = [i for i, r in enumerate(rows) if r["tier"] == tier]
            ax.errorbar(
                [deltas[i] for i in idx],
                [ys[i] for i in idx],
                xerr=[[lo[i] for i in idx], [hi[i] for i in idx]],
                fmt="o",
                capsize=3,
                color=palette[t_i % len(palette)],
                label=tier,
            )
        ax.set_yticks(ys, [f"{r['technique']} ({r['tier']})" for r in rows], fontsize=7)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no confirmed technique yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("delta val_bpb vs incumbent (negative is better), with the judge's interval")
    ax.set_title("confirmed technique deltas per tier", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_calibration(data: dict[str, Any], path: Path) -> Figure:
    cal = data["calibration"]
    fig = Figure(figsize=(WIDTH_IN, 4.0))
    axes = fig.subplots(1, len(KINDS), squeeze=False)[0]
    for ax, kind in zip(axes, KINDS, strict=True):
        body = cal["kinds"][kind]
        c = Calibration(**body["fit"])
        pub, own = body["published"], body["pairs"]
        if pub:
            ax.scatter(
                [p["lower_delta"] for p in pub],
                [p["upper_delta"] for p in pub],
                facecolors="none",
                edgecolors="tab:gray",
                s=40,
                label="published (prior)",
            )
        if own:
            ax.errorbar(
                [p["lower_delta"] for p in own],
                [p["upper_delta"] for p in own],
                xerr=[p["lower_se"] or 0.0 for p in own],
                yerr=[p["upper_se"] or 0.0 for p in own],
                fmt="o",
                color="tab:blue",
                capsize=2,
                label=f"own pairs ({cal['lower_tier']}: golf fidelity, finals)",
            )
        xs_data = [p["lower_delta"] for p in pub + own] + [0.0]
        lo, hi = min(xs_data), max(xs_data)
        span = max(hi - lo, 0.01)
        xs = [lo - 0.1 * span + (span * 1.2) * i / 50 for i in range(51)]
        pred = [predict(c, x) for x in xs]
        ax.plot(
            xs,
            [m for m, _ in pred],
            color="tab:red",
            gid="fit",
            label=f"{'posterior' if c.source == 'fit' else 'prior'}: slope {c.slope:+.3f}",
        )
        ax.fill_between(
            xs,
            [m - s for m, s in pred],
            [m + s for m, s in pred],
            color="tab:red",
            alpha=0.15,
            label="+- 1 sd",
        )
        ax.axhline(0, color="black", lw=0.5)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_title(
            f"{kind}: n={c.n}, spearman {'n/a' if c.spearman is None else f'{c.spearman:+.2f}'}", fontsize=9
        )
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("proxy delta (bpb)")
        ax.set_ylabel("full-scale delta (bpb)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_spend(data: dict[str, Any], path: Path) -> Figure:
    series = data["spend"]
    fig = Figure(figsize=(WIDTH_IN, 3.5))
    ax = fig.subplots()
    if series:
        ts: list[Any] = [dt.datetime.fromisoformat(s["at"]) for s in series]
        ax.step(ts, [s["dollars"] for s in series], where="post", color="tab:green", label="dollars (real)")
        ax.set_ylabel("cumulative dollars")
        ax2 = ax.twinx()
        ax2.step(
            ts,
            [s["device_hours"] for s in series],
            where="post",
            color="tab:blue",
            ls="--",
            label="device-hours",
        )
        ax2.set_ylabel("cumulative device-hours")
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="lower right", fontsize=7)
        fig.autofmt_xdate()
    else:
        ax.text(0.5, 0.5, "no spend recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("spend over time", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- markdown


def _cell(text: Any, limit: int = 90) -> str:
    s = "" if text is None else str(text)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def decision_table(data: dict[str, Any]) -> list[str]:
    head = [
        "#",
        "at",
        "session",
        "experiment",
        "technique",
        "tier",
        "outcome",
        "kept",
        "delta",
        "CI",
        "p",
        "n cand/inc",
        "noise",
        "candidate",
        "incumbent",
        "reason",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in data["decisions"]:
        ci = p["ci"]
        ci_txt = f"[{_fmt(ci[0], signed=True)}, {_fmt(ci[1], signed=True)}]" if ci[0] is not None else ""
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in [
                    p["index"],
                    p["at"][:19],
                    p["session"],
                    p["experiment"],
                    p["technique"],
                    p["tier"],
                    p["outcome"],
                    "yes" if p["kept"] else "no",
                    _fmt(p["delta"], signed=True),
                    ci_txt,
                    _fmt(p["p"], 4),
                    f"{p['n_candidate']}/{p['n_incumbent']}",
                    _fmt(p["noise_std"]),
                    _fmt(p["candidate_bpb"]),
                    _fmt(p["incumbent_bpb"]),
                    p["reason"],
                ]
            )
            + " |"
        )
    return lines


def render_markdown(data: dict[str, Any], ledger: Path, images: dict[str, str]) -> str:
    ds = data["decisions"]
    outcomes = Counter(p["outcome"] for p in ds)
    spent = data["spend"][-1] if data["spend"] else {"dollars": 0.0, "device_hours": 0.0}
    best, source = data["frontier"]["best_bpb"], data["frontier"]["source"]
    out = [
        "# pgolf report",
        "",
        f"Ledger `{ledger}`, sessions: {', '.join(data['sessions']) or 'none'}.",
        f"Written {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} from the ledger alone.",
        "",
        "## Summary",
        "",
        f"- decisions: {len(ds)} ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items())) or 'none'}); "
        f"kept {sum(1 for p in ds if p['kept'])}",
        f"- runs: {', '.join(f'{k}: {v}' for k, v in sorted(data['runs'].items())) or 'none'}",
        f"- finals: {len(data['finals'])}; spend ${spent['dollars']:.2f}, {spent['device_hours']:.2f} device-hours",
        f"- frontier: {_fmt(best, 4) or 'unknown'} ({source})",
    ]
    for n in data["noise"][-3:]:
        out.append(f"- noise on {n['tier']} ({n['hardware']}): std {n['std']:.5f} over {n['n']} runs")
    out += [
        "",
        "## val_bpb per experiment",
        "",
        f"![val_bpb per experiment]({images['val_bpb']})",
        "",
        "Filled markers were kept; the black line is the incumbent each candidate was judged against.",
        "",
        "## Confirmed technique deltas",
        "",
        f"![confirmed deltas]({images['deltas']})",
        "",
    ]
    if data["deltas"]:
        out += ["| technique | tier | delta | CI | p | n |", "|---|---|---|---|---|---|"]
        for r in data["deltas"]:
            out.append(
                f"| {_cell(r['technique'])} | {r['tier']} | {_fmt(r['delta'], signed=True)} | "
                f"[{_fmt(r['ci'][0], signed=True)}, {_fmt(r['ci'][1], signed=True)}] | {_fmt(r['p'], 4)} | "
                f"{r['n']} |"
            )
        out.append("")
    cal = data["calibration"]
    out += [
        "## Calibration: proxy to full scale",
        "",
        f"![calibration]({images['calibration']})",
        "",
        f"Lower tier `{cal['lower_tier']}`, upper tier `{cal['upper_tier']}`; the prior is the published "
        "pairs (memory/data/published_deltas.toml).",
        "",
    ]
    for kind in KINDS:
        out.append(f"- {cal['kinds'][kind]['describe']}")
    if data.get("projection"):
        out += ["", "## Against the frontier", "", "```", *data["projection"], "```"]
    out += ["", "## Spend over time", "", f"![spend]({images['spend']})", ""]
    if data["finals"]:
        out += [
            "## Finals",
            "",
            "| final | experiment | status | seeds | mean | sd | p | record claim | dollars |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in data["finals"]:
            out.append(
                f"| {_cell(f['final_id'])} | {_cell(f['experiment'])} | {f['status']} | "
                f"{','.join(map(str, f['seeds']))} | {_fmt(f['mean'])} | {_fmt(f['sd'])} | {_fmt(f['p'], 4)} | "
                f"{'yes' if f['record_claim'] else 'no'} | {f['dollars']:.2f} |"
            )
        out.append("")
    out += ["## Every decision", ""] + decision_table(data) + [""]
    return "\n".join(out)


def write_report(
    source: str | Path, out_dir: str | Path | None = None, *, leaderboard: Path | None = LEADERBOARD
) -> Path:
    """Write report.md, four PNGs and report.json; return the path of report.md.

    source: a workspace root (its .golf/ledger.jsonl; default output reports/) or a ledger file
    (default output: a report/ folder beside it).
    """
    ledger_path, out = _resolve(source, out_dir)
    records = read_records(ledger_path)
    out.mkdir(parents=True, exist_ok=True)
    data = collect(records, leaderboard)
    images = {
        "val_bpb": "val_bpb.png",
        "deltas": "deltas.png",
        "calibration": "calibration.png",
        "spend": "spend.png",
    }
    plot_val_bpb(data, out / images["val_bpb"])
    plot_deltas(data, out / images["deltas"])
    plot_calibration(data, out / images["calibration"])
    plot_spend(data, out / images["spend"])
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    report = out / "report.md"
    report.write_text(render_markdown(data, ledger_path, images))
    return report
