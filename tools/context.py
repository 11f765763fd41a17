"""What every tool is handed: the workspace, the ledger, the session and its tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memory.ledger import Ledger
from memory.tiers import Tier
from memory.workspace import Workspace


@dataclass
class ToolContext:
    ws: Workspace
    ledger: Ledger
    session: str
    tier: Tier
    tiers: dict[str, Tier] = field(default_factory=dict)
    # the incumbent's environment on this tier: candidates' overrides are applied on top of it
    incumbent_env: dict[str, str] = field(default_factory=dict)
    python: str = "python"
    # filled by the loop for tools that need to know what is running (status, read_logs)
    extra: dict[str, Any] = field(default_factory=dict)
