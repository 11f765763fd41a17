"""The planner interface: both planners (playbook, LLM) turn a state digest into one proposal.

The planner proposes; the session loop disposes: it runs the seeds, asks the judge, commits and
records. A planner never decides keep/discard and never spends money.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, field_validator

SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")


class ExperimentSpec(BaseModel):
    name: str = Field(description="short slug for the candidate, e.g. smear_gate")
    technique: str | None = Field(default=None, description="technique id from the battle plan queue")
    hypothesis: str = Field(default="", max_length=2000)
    env: dict[str, str] = Field(default_factory=dict, description="trainer env overrides on the incumbent")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        v = v.strip().lower().replace(" ", "_")
        if not SLUG.match(v):
            raise ValueError("must be a lowercase slug (letters, digits, _ . -), at most 48 characters")
        return v


class Proposal(BaseModel):
    action: Literal["experiment", "stop"]
    experiment: ExperimentSpec | None = None
    reason: str = ""
    tokens_used: int = 0


class Budget(BaseModel):
    minutes: float | None = None
    experiments: int | None = None
    dollars: float | None = None


class PlannerState(BaseModel):
    """Everything a planner may know at one decision: small, derived from the ledger and the plan."""

    session: str
    tier: str
    hardware: str
    budget_left: Budget
    directives: list[str] = Field(default_factory=list)
    queue: list[dict[str, Any]] = Field(default_factory=list)  # technique, env, state, notes, priority
    incumbent: dict[str, Any] = Field(default_factory=dict)  # script_sha, env, mean_bpb, n, stack
    noise: dict[str, Any] = Field(default_factory=dict)  # std, n, source
    findings: list[dict[str, Any]] = Field(default_factory=list)  # per technique: outcome, delta, ci, p, n
    recent: list[dict[str, Any]] = Field(default_factory=list)  # last decisions, compact
    frontier: str = ""  # frontier digest text (diff since last session, flags)
    # queue technique -> why newer records dropped or superseded it (the playbook tries those last)
    frontier_obsolete: dict[str, str] = Field(default_factory=dict)
    options: list[dict[str, Any]] = Field(default_factory=list)  # cost-aware choices (calibration)
    plan_changed: bool = False
    decisions_so_far: int = 0
    script_dirty: bool = False  # the working script differs from the incumbent


class Planner(Protocol):
    name: str

    def propose(self, state: PlannerState, ctx: Any) -> Proposal:
        """One proposal for the next experiment (or stop). May call tools through tools.registry."""
        ...

    def observe(self, outcome: dict[str, Any]) -> None:
        """Told the judge's verdict on its last proposal (the same dict the ledger's decision holds)."""
        ...
