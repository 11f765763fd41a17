"""The records folder a final that clears the rule gets: records/track_10min_16mb/<date>_<name>/ with
README.md, submission.json, train_gpt.py and one train log per seed, in the challenge's format."""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
from pathlib import Path

from agent.finals.pod_run import SeedOutcome
from memory.records import FinalRecord
from memory.workspace import Workspace


def write_submission(
    ws: Workspace,
    rec: FinalRecord,
    outcomes: list[SeedOutcome],
    script: str,
    verdict: dict,
    *,
    name: str,
    author: str,
    github_id: str,
    blurb: str,
    hardware: str,
    what_changed: str,
) -> Path:
    """records/track_10min_16mb/<date>_<name>/ in the challenge's format."""
    day = dt.date.today().isoformat()
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "pgolf"
    folder = ws.root / "records" / "track_10min_16mb" / f"{day}_{safe}"
    folder.mkdir(parents=True, exist_ok=True)
    ok = [o for o in outcomes if o.result.status == "ok" and o.result.val_bpb is not None]
    bpbs = [float(o.result.val_bpb or 0.0) for o in ok]
    losses = [float(o.result.val_loss) for o in ok if o.result.val_loss is not None]
    record = verdict.get("record", {})
    sub = {
        "author": author,
        "github_id": github_id,
        "name": name,
        "blurb": blurb,
        "date": day,
        "val_loss": round(statistics.fmean(losses), 8) if losses else None,
        "val_bpb": round(statistics.fmean(bpbs), 8),
        "bytes_total": max(o.result.bytes_total or 0 for o in ok),
        "bytes_code": len(script.encode()),
        "seeds": [o.seed for o in ok],
        "seed_results": {
            str(o.seed): {
                "val_bpb": o.result.val_bpb,
                "val_loss": o.result.val_loss,
                "bytes_total": o.result.bytes_total,
                "bytes_model": o.result.bytes_model,
                "steps": o.result.steps,
                "train_time_s": o.result.train_time_s,
                "eval_time_s": o.result.eval_time_s,
            }
            for o in ok
        },
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) >= 2 else None,
        "hardware": hardware,
        "p_value": record.get("p_value"),
    }
    (folder / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
    (folder / "train_gpt.py").write_text(script)
    for o in ok:
        log = ws.state_dir / "finals" / rec.final_id / f"seed_{o.seed}" / "train.log"
        text = log.read_text(errors="replace") if log.exists() else "\n".join(o.digest) + "\n"
        (folder / f"train_seed{o.seed}.log").write_text(text)
    rows = "\n".join(
        f"| {o.seed} | {o.result.val_bpb:.5f} | {o.result.val_loss if o.result.val_loss is not None else '-'} "
        f"| {o.result.bytes_total:,} | {o.result.train_time_s:.1f} | {o.result.eval_time_s:.1f} |"
        for o in ok
    )
    readme = f"""# {name}

{blurb}

## What changed

{what_changed or "(see train_gpt.py)"}

## Results (8xH100 SXM, {len(ok)} seeds)

| seed | val_bpb | val_loss | bytes_total | train s | eval s |
|---|---|---|---|---|---|
{rows}

Mean val_bpb {sub["val_bpb"]:.5f}, std {sub["val_bpb_std"] if sub["val_bpb_std"] is not None else "-"}.

## Statistics

Against the frontier ({verdict.get("frontier")}): {record.get("reason", "not judged")}.
Delta {record.get("delta", float("nan")):+.5f} bpb, interval [{record.get("ci_low", float("nan")):+.5f},
{record.get("ci_high", float("nan")):+.5f}], one-sided Welch p = {record.get("p_value", float("nan")):.3g}
(rule: at least 0.005 nats better at p < 0.01).

Artifact: {sub["bytes_code"]:,} bytes of code + model = {sub["bytes_total"]:,} bytes (cap 16,000,000).
Script sha256 {rec.script_sha}. Final {rec.final_id}.
"""
    (folder / "README.md").write_text(readme)
    return folder
