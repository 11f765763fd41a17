"""What every tool is handed: the workspace, the ledger, the session and its tier, and what the loop knows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memory.ledger import Ledger
from memory.records import RunRecord
from memory.tiers import Tier
from memory.workspace import Workspace

# told when a run starts ("start", run_id, None) and ends ("end", run_id, its record)
RunListener = Callable[[str, str, RunRecord | None], None]


@dataclass
class ToolContext:
    ws: Workspace
    ledger: Ledger
    session: str
    tier: Tier
    tiers: dict[str, Tier] = field(default_factory=dict)
    # the incumbent's environment on this tier: candidates' overrides are applied on top of it
    incumbent_env: dict[str, str] = field(default_factory=dict)
    # the incumbent.json committed where the session started: the env before its first keep
    base_env: dict[str, str] | None = None
    # the branch commit the runs are made on (the incumbent's), recorded with each run
    head_sha: str | None = None
    python: str = "python"
    hardware: str | None = None  # this host's fingerprint, measured once per session
    queue: list[str] = field(default_factory=list)  # the plan's queued technique ids
    on_run: RunListener | None = None
