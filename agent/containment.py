"""Inputs that reach the trainer's environment from files a human or an earlier session wrote: the battle
plan's queue and the branch's incumbent.json. Both pass the same allow-list as a planner's overrides
(memory/knobs.py), before any run starts; a refusal is said plainly and recorded in the ledger, once.
"""

from __future__ import annotations

from memory.battle_plan import BattlePlan
from memory.knobs import check_env_allowed, check_tier_fixed
from memory.ledger import Ledger
from memory.records import EventRecord
from memory.tiers import Tier

QUEUE_REFUSED = "queue_item_refused"
INCUMBENT_ENV_REFUSED = "incumbent_env_refused"


def screen_queue(
    plan: BattlePlan, script_text: str, ledger: Ledger, session: str, say=None, tier: Tier | None = None
) -> BattlePlan:
    """The plan without the queue items whose overrides the incumbent script does not allow, or that move
    what the tier fixes (its budget, what is scored). Each refused item is recorded (technique, env, why)
    the first time this session meets it; planners never see it."""
    kept, refused = [], []
    for q in plan.queue:
        try:
            check_env_allowed(q.effective_env(), script_text)
            if tier is not None:
                check_tier_fixed(q.effective_env(), tier.env, tier.step_matched)
            kept.append(q)
        except ValueError as e:
            refused.append((q, str(e)))
    if not refused:
        return plan
    seen = {
        (e.detail.get("technique"), str(e.detail.get("env")))
        for e in ledger.records(EventRecord)
        if e.session == session and e.event == QUEUE_REFUSED
    }
    for q, why in refused:
        env = q.effective_env()
        if (q.technique, str(env)) in seen:
            continue
        ledger.append(
            EventRecord(
                session=session,
                event=QUEUE_REFUSED,
                detail={"technique": q.technique, "env": env, "why": why},
            )
        )
        if say:
            say(f"battle plan: queue item {q.technique!r} refused before any run: {why}")
    return plan.model_copy(update={"queue": kept})


def check_base_env(env: dict[str, str], script_text: str, ledger: Ledger, session: str) -> dict[str, str]:
    """incumbent.json's overrides, allowed by the script they were committed with; else ValueError, recorded."""
    try:
        return check_env_allowed(env, script_text)
    except ValueError as e:
        why = f"incumbent.json sets an override the trainer does not allow: {e}"
        ledger.append(
            EventRecord(session=session, event=INCUMBENT_ENV_REFUSED, detail={"env": env, "why": why})
        )
        raise ValueError(why + " (fix or remove incumbent.json on the branch)") from None
