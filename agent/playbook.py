"""The playbook planner: deterministic, no LLM. The default when no model is configured.

Takes the battle plan's queue in order (or by expected gain per dollar when the cost model ranks
them), skips what the plan marks done or banned and what the ledger has already decided, lets wins
stack through the incumbent, gives each inconclusive technique one more try, and stops when
nothing is left or the budget is spent.
"""

from __future__ import annotations

from typing import Any

from agent.planner import ExperimentSpec, PlannerState, Proposal, QueueRow

RETRIES_FOR_INCONCLUSIVE = 1


class PlaybookPlanner:
    name = "playbook"

    def __init__(self) -> None:
        self.last_outcome: dict[str, Any] | None = None

    def observe(self, outcome: dict[str, Any]) -> None:
        self.last_outcome = outcome

    def _eligible(
        self, state: PlannerState, retest_effect: float | None = None
    ) -> tuple[list[QueueRow], list[QueueRow]]:
        """(untested lines, lines due a second look). A second look goes to an inconclusive line, and, once
        no inconclusive one is left and the tier sets retest_effect, to a line rejected after a single try
        whose interval still admits a win of that size (a one-seed look misses small wins often; the
        fresh seeds of the second look are new evidence, agent/experiment.py)."""
        untested: list[QueueRow] = []
        retest: list[QueueRow] = []
        near_miss: list[QueueRow] = []
        already = state.incumbent.get("env", {})
        for q in state.queue:
            if q["state"] in ("done", "banned") or not q["env"]:
                continue  # the playbook only tests flag changes; script edits are the LLM's
            if q.get("refused"):
                continue  # refused as the line stands (recorded in the ledger); an edit of the line lifts it
            if not any(already.get(k) != v for k, v in q["env"].items()):
                continue  # already part of the incumbent
            if q["decided"] is None:
                untested.append(q)
            elif (q["decided"] == "inconclusive" or q["state"] == "retest") and q[
                "tries"
            ] <= RETRIES_FOR_INCONCLUSIVE:
                retest.append(q)
            elif (
                retest_effect is not None
                and q["decided"] == "rejected"
                and q["tries"] == 1
                and q.get("ci_low") is not None
                and q["ci_low"] < -retest_effect
            ):
                near_miss.append(q)
        return untested, retest or near_miss

    def ideas_left(self, state: PlannerState, ctx: Any = None) -> int:
        """Ideas this playbook would still test: the untested queue lines, or once none is left the
        inconclusive ones due a second look (the session sizes an adaptive tier's seeds by it)."""
        untested, retest = self._eligible(state, retest_effect(ctx))
        return len(untested) if untested else len(retest)

    def propose(self, state: PlannerState, ctx: Any = None) -> Proposal:
        untested, retest = self._eligible(state, retest_effect(ctx))
        # the whole queue is explored before any ambiguous result gets its second look
        group, second_look = (untested, False) if untested else (retest, True)
        ranked = {
            o.get("technique"): o
            for o in state.options
            if o.get("action") in ("test", "add_seeds") and o.get("technique")
        }
        if second_look:  # another look on this tier cannot help what it cannot see (agent/fidelity.py)
            group = [q for q in group if not ranked.get(q["technique"], {}).get("needs_gpu_tier")]
        if not group:
            return Proposal(action="stop", reason="the queue holds nothing untested")
        order = {q["technique"]: i for i, q in enumerate(group)}
        if ranked:  # cost-aware order within the group; what the tier cannot see (fidelity) goes last
            group = sorted(
                group,
                key=lambda q: (
                    bool(ranked.get(q["technique"], {}).get("needs_gpu_tier")),
                    -(ranked.get(q["technique"], {}).get("gain_per_dollar") or 0.0),
                    order[q["technique"]],
                ),
            )
        group, deferred = defer_left_behind(group, state.frontier_obsolete)
        q = group[0]
        why = "queue order" if not ranked else "highest expected gain per dollar"
        if second_look:
            why += (
                ", second look at a rejection that leaves a worthwhile win possible"
                if q["decided"] == "rejected" and q["state"] != "retest"
                else ", second look at an inconclusive result"
            )
        why += deferral_note(q, deferred, state.frontier_obsolete)
        return Proposal(
            action="experiment",
            experiment=ExperimentSpec(
                name=q["technique"],
                technique=q["technique"],
                env=dict(q["env"]),
                hypothesis=f"{q['technique']} lowers val_bpb on {state.tier}. {q['notes']}",
            ),
            reason=f"next in the battle plan ({why}); tries so far {q['tries']}",
        )


def retest_effect(ctx: Any) -> float | None:
    """The tier's retest_effect (memory/tiers.py) when the playbook runs inside a session."""
    return getattr(getattr(ctx, "tier", None), "retest_effect", None)


def defer_left_behind(
    items: list[QueueRow], obsolete: dict[str, str]
) -> tuple[list[QueueRow], list[QueueRow]]:
    """(the items in order, those of them deferred), the deferred moved to the end, whatever the cost
    ranking said: queue items whose technique newer records dropped or superseded (the frontier's word, e.g.
    value_residual after PR #1218) run after the rest of their group. Not banned: the human queued them,
    and they may still pay here."""
    later = [q for q in items if q["technique"] in obsolete]
    return [q for q in items if q["technique"] not in obsolete] + later, later


def deferral_note(chosen: QueueRow, deferred: list[QueueRow], obsolete: dict[str, str]) -> str:
    """What the decision says about the frontier's deferrals (empty when there are none)."""
    if chosen["technique"] in obsolete:
        return f"; taken after the rest of the queue because it is {obsolete[chosen['technique']]}"
    if deferred:
        return "; deferred: " + "; ".join(f"{q['technique']} ({obsolete[q['technique']]})" for q in deferred)
    return ""
