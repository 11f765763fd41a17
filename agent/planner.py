"""The planner interface: both planners (playbook, LLM) turn a state digest into one proposal.

The planner proposes; the session loop disposes: it runs the seeds, asks the judge, commits and
records. A planner never decides keep/discard and never spends money.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memory.records import Outcome

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


class View(BaseModel):
    """A typed part of the planner state. It also reads like the dict it replaced (`v["env"]`,
    `v.get("n")`, falsy when nothing was set), so prompt code written against dicts keeps working."""

    model_config = ConfigDict(extra="forbid")

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def __bool__(self) -> bool:
        return bool(self.model_fields_set)


class QueueRow(View):
    """One battle-plan queue line and where the ledger says it stands."""

    technique: str
    env: dict[str, str] = Field(default_factory=dict)
    state: str = "todo"
    priority: int | None = None
    notes: str = ""
    decided: Outcome | None = None  # the latest decision's outcome; None: untested
    tries: int = 0
    ci_low: float | None = None  # the latest decision's interval: how large a win it leaves possible
    refused: str | None = None  # why the loop refused this line as it stands (it is not proposed again)


class IncumbentView(View):
    script_sha: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    stack: list[str] = Field(default_factory=list)  # kept techniques, in order
    mean_bpb: float | None = None
    n: int = 0


class NoiseView(View):
    std: float | None = None
    n: int = 0
    source: str = "none"  # measured | pooled | prior | none


class FindingRow(View):
    """The latest decision on one technique."""

    technique: str
    outcome: Outcome
    delta: float | None = None
    ci: list[float | None] = Field(default_factory=list)
    p: float | None = None
    n: int = 0
    tier: str = ""
    tries: int = 0
    note: str = ""


class RecentDecision(View):
    experiment: str
    technique: str | None = None
    outcome: Outcome
    kept: bool = False
    delta: float | None = None
    p: float | None = None
    n: int = 0
    runs: list[str] = Field(default_factory=list)
    reason: str = ""


class PlannerState(BaseModel):
    """Everything a planner may know at one decision: small, derived from the ledger and the plan."""

    session: str
    tier: str
    hardware: str
    budget_left: Budget
    directives: list[str] = Field(default_factory=list)
    queue: list[QueueRow] = Field(default_factory=list)
    incumbent: IncumbentView = Field(default_factory=IncumbentView)
    noise: NoiseView = Field(default_factory=NoiseView)
    findings: list[FindingRow] = Field(default_factory=list)
    recent: list[RecentDecision] = Field(default_factory=list)  # last decisions, compact
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
