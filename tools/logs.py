"""read_logs: a bounded digest of one run, never the whole log.

The run is named by its id and found through the ledger, so a caller can never point it at a path.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from memory.records import RunRecord
from tools.context import ToolContext
from tools.registry import ToolError, tool

MAX_TAIL_CHARS = 1500


class ReadLogsArgs(BaseModel):
    run_id: str = Field(min_length=1, max_length=200)
    tail_lines: int = Field(default=10, ge=0, le=40)


class LogDigest(BaseModel):
    run_id: str
    status: str
    val_bpb: float | None
    milestones: list[str]
    last_metrics: list[dict]
    error_tail: str


def _metrics(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def digest(rec: RunRecord, tail_lines: int = 10) -> LogDigest:
    res = rec.result
    run_dir = Path(rec.run_dir) if rec.run_dir else None
    metrics = _metrics(run_dir) if run_dir else []
    milestones = [f"status {res.status}"]
    if metrics:
        first, last = metrics[0], metrics[-1]
        milestones.append(
            f"train_loss {first.get('train_loss')} at step {first.get('step')} -> "
            f"{last.get('train_loss')} at step {last.get('step')}"
        )
    if res.val_bpb is not None:
        milestones.append(
            f"val_bpb {res.val_bpb:.4f} (pre-quant {res.val_bpb_prequant}), holdout {res.holdout_bpb}"
        )
    if res.bytes_total is not None:
        milestones.append(f"artifact {res.bytes_total:,} bytes{' OVER THE CAP' if res.over_cap else ''}")
    tail = ""
    if tail_lines and run_dir is not None:
        try:
            lines = (run_dir / "stdout.log").read_text(errors="replace").splitlines()
            tail = "\n".join(lines[-tail_lines:])
        except OSError:
            tail = ""
    if res.error:
        tail = (res.error + "\n" + tail).strip()
    return LogDigest(
        run_id=rec.run_id,
        status=res.status,
        val_bpb=res.val_bpb,
        milestones=milestones,
        last_metrics=metrics[-3:],
        error_tail=tail[-MAX_TAIL_CHARS:],
    )


@tool(
    "read_logs",
    "One run's log digest by run_id: status, milestones, last metrics, error tail.",
    ReadLogsArgs,
)
def read_logs(args: ReadLogsArgs, ctx: ToolContext) -> LogDigest:
    for rec in reversed(ctx.ledger.records(RunRecord)):
        if rec.run_id == args.run_id:
            return digest(rec, args.tail_lines)
    raise ToolError(f"no run {args.run_id[:120]!r} in the ledger")
