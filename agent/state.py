"""What the loop knows at a decision, derived from the ledger and the plan (no hidden state).

Everything here is recomputed from the ledger, which is why a resumed session picks up exactly
where the killed one stopped.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from agent.planner import Budget, FindingRow, IncumbentView, NoiseView, PlannerState, QueueRow, RecentDecision
from memory import incumbent
from memory.records import DecisionRecord, EventRecord, FindingRecord, NoiseRecord, RunRecord

RECENT_DECISIONS = 5


def _of(records: list, cls: type) -> list:
    return [r for r in records if isinstance(r, cls)]


AA_PREFIX = "aa-"  # experiment ids of A/A measurements of an incumbent


def matching_runs(
    records: list, *, tier: str, hardware: str, script_sha: str, env: dict[str, str], aa_only: bool = False
) -> list[RunRecord]:
    """Finished runs of one configuration: the only ones that may be pooled with each other.

    aa_only keeps the A/A measurements alone: the runs that made a candidate win were selected for
    being low (the winner's curse), so they never serve as the new incumbent's baseline."""
    return [
        r
        for r in _of(records, RunRecord)
        if r.tier == tier
        and r.hardware == hardware
        and r.script_sha == script_sha
        and r.env == env
        and r.result.status == "ok"
        and r.result.val_bpb is not None
        and (not aa_only or r.experiment.startswith(AA_PREFIX))
    ]


def latest_noise(records: list, tier: str, hardware: str) -> NoiseRecord | None:
    found = [n for n in _of(records, NoiseRecord) if n.tier == tier and n.hardware == hardware]
    return found[-1] if found else None


def findings_table(records: list) -> list[FindingRow]:
    latest: dict[str, FindingRecord] = {}
    for f in _of(records, FindingRecord):
        latest[f.technique] = f
    decided: dict[str, DecisionRecord] = {}
    tries: dict[str, int] = {}
    for d in _of(records, DecisionRecord):
        decided[d.technique or d.candidate] = d
        tries[d.technique or d.candidate] = tries.get(d.technique or d.candidate, 0) + 1
    table = []
    for tech, d in decided.items():
        f = latest.get(tech)
        table.append(
            FindingRow(
                technique=tech,
                outcome=d.outcome,
                delta=d.delta,
                ci=[d.ci_low, d.ci_high],
                p=d.p_value,
                n=d.n_candidate,
                tier=d.tier,
                tries=tries[tech],
                note=f.note if f else "",
            )
        )
    return table


def recent_decisions(records: list, session: str, k: int = RECENT_DECISIONS) -> list[RecentDecision]:
    return [
        RecentDecision(
            experiment=d.experiment,
            technique=d.technique,
            outcome=d.outcome,
            kept=d.kept,
            delta=None if d.delta is None else round(d.delta, 5),
            p=None if d.p_value is None else round(d.p_value, 4),
            n=d.n_candidate,
            runs=d.candidate_runs[-3:],
            reason=d.reason[:200],
        )
        for d in [d for d in _of(records, DecisionRecord) if d.session == session][-k:]
    ]


def refusal_key(technique: str | None, env: dict[str, str]) -> str:
    """A queue line as a proposal makes it: a refusal holds until the line's technique or env change."""
    return json.dumps([technique, dict(sorted(env.items()))])


def refusals(records: list, session: str) -> dict[str, str]:
    """The proposals this session refused (refusal_key -> why): not proposed again as they stand."""
    out: dict[str, str] = {}
    for e in _of(records, EventRecord):
        spec = e.detail.get("experiment") if e.session == session and e.event == "proposal_refused" else None
        if isinstance(spec, dict):
            out[refusal_key(spec.get("technique"), spec.get("env") or {})] = str(e.detail.get("why", ""))
    return out


def queue_view(plan, findings: list[FindingRow], refused: dict[str, str] | None = None) -> list[QueueRow]:
    by_tech = {f.technique: f for f in findings}
    out = []
    for q in plan.queue:
        f = by_tech.get(q.technique)
        out.append(
            QueueRow(
                technique=q.technique,
                env=q.env,
                state=q.state,
                priority=q.priority,
                notes=q.notes[:160],
                decided=f.outcome if f else None,
                tries=f.tries if f else 0,
                ci_low=f.ci[0] if f and f.ci else None,
                refused=(refused or {}).get(refusal_key(q.technique, q.env)),
            )
        )
    return out


def build_state(
    *,
    records: list,
    plan,
    session: str,
    tier: str,
    hardware: str,
    script_sha: str,
    budget_left: Budget,
    base_env: dict[str, str] | None = None,
    frontier: str = "",
    options: list[dict[str, Any]] | None = None,
    plan_changed: bool = False,
    script_dirty: bool = False,
    frontier_obsolete: dict[str, str] | None = None,
) -> PlannerState:
    env = incumbent.current_env(records, session, base_env)
    runs = matching_runs(records, tier=tier, hardware=hardware, script_sha=script_sha, env=env, aa_only=True)
    vals = [r.result.val_bpb for r in runs if r.result.val_bpb is not None]
    noise = latest_noise(records, tier, hardware)
    findings = findings_table(records)
    return PlannerState(
        session=session,
        tier=tier,
        hardware=hardware,
        budget_left=budget_left,
        directives=list(plan.directives),
        queue=queue_view(plan, findings, refusals(records, session)),
        incumbent=IncumbentView(
            script_sha=script_sha[:12],
            env=env,
            stack=incumbent.stack(records, session),
            mean_bpb=round(statistics.fmean(vals), 5) if vals else None,
            n=len(vals),
        ),
        noise=NoiseView(std=noise.std, n=len(noise.values), source=noise.source or "measured")
        if noise
        else NoiseView(),
        findings=findings,
        recent=recent_decisions(records, session),
        frontier=frontier,
        frontier_obsolete=dict(frontier_obsolete or {}),
        options=options or [],
        plan_changed=plan_changed,
        decisions_so_far=sum(1 for d in _of(records, DecisionRecord) if d.session == session),
        script_dirty=script_dirty,
    )
