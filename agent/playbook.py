"""The playbook planner: deterministic, no LLM. The default when no model is configured.

Takes the battle plan's queue in order (or by expected gain per dollar when the cost model ranks
them), skips what the plan marks done or banned and what the ledger has already decided, lets wins
stack through the incumbent, gives each inconclusive technique one more try, and stops when
nothing is left or the budget is spent.
"""

from __future__ import annotations

from typing import Any

from agent.planner import ExperimentSpec, PlannerState, Proposal

RETRIES_FOR_INCONCLUSIVE = 1


class PlaybookPlanner:
    name = "playbook"

    def __init__(self) -> None:
        self.last_outcome: dict[str, Any] | None = None

    def observe(self, outcome: dict[str, Any]) -> None:
        self.last_outcome = outcome

    def _eligible(self, state: PlannerState) -> list[dict[str, Any]]:
        todo, retest = [], []
        for q in state.queue:
            if q["state"] in ("done", "banned") or not q["env"]:
                continue  # the playbook only tests flag changes; script edits are the LLM's
            if q["decided"] is None or q["state"] == "retest" and q["tries"] <= RETRIES_FOR_INCONCLUSIVE:
                todo.append(q)
            elif q["decided"] == "inconclusive" and q["tries"] <= RETRIES_FOR_INCONCLUSIVE:
                retest.append(q)
        return todo + retest  # new techniques first, then one more look at the ambiguous ones

    def propose(self, state: PlannerState, ctx: Any = None) -> Proposal:
        eligible = self._eligible(state)
        already = state.incumbent.get("env", {})
        eligible = [q for q in eligible if any(already.get(k) != v for k, v in q["env"].items())]
        if not eligible:
            return Proposal(action="stop", reason="the queue holds nothing untested")
        ranked = {o.get("technique"): o for o in state.options if o.get("action") == "test"}
        if ranked:  # cost-aware order when the cost model has figures; queue order breaks ties
            order = {q["technique"]: i for i, q in enumerate(eligible)}
            eligible.sort(key=lambda q: (-(ranked.get(q["technique"], {}).get("gain_per_dollar") or 0.0),
                                         order[q["technique"]]))
        q = eligible[0]
        why = "queue order" if not ranked else "highest expected gain per dollar"
        return Proposal(
            action="experiment",
            experiment=ExperimentSpec(name=q["technique"], technique=q["technique"], env=dict(q["env"]),
                                      hypothesis=f"{q['technique']} lowers val_bpb on {state.tier}. {q['notes']}"),
            reason=f"next in the battle plan ({why}); tries so far {q['tries']}",
        )
