"""The battle plan's queue_status block: where each queued technique stands, from the ledger."""

from __future__ import annotations

from agent.state import findings_table, queue_view, refusals


def queue_status_block(records: list, plan, session: str | None = None) -> str:
    findings = findings_table(records)
    rows = queue_view(plan, findings, refusals(records, session)) if session else queue_view(plan, findings)
    by_tech = {f.technique: f for f in findings}
    lines = ["| technique | plan | status | delta bpb | p | tries |", "|---|---|---|---|---|---|"]
    for q in rows:
        f = by_tech.get(q.technique)
        delta, p = (f.delta, f.p) if f else (None, None)
        status = q.decided or ("refused" if q.refused else "untested")
        lines.append(
            f"| {q['technique']} | {q['state']} | {status} | "
            f"{'' if delta is None else f'{delta:+.5f}'} | {'' if p is None else f'{p:.3g}'} | "
            f"{q['tries']} |"
        )
    return "\n".join(lines)
