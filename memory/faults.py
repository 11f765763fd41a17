"""Fault injection for the crash tests: PGOLF_CRASH_AT=<point> makes this process SIGKILL itself there.

A test names a point (e.g. `ledger_write:decision`, `after_commit`, `run:2`), the session dies exactly
there like a power cut would, and `golf resume` must recover. Unset, this costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(point: str) -> bool:
    """True when this is the point to die at. `name:N` means the Nth time the point is reached."""
    want = os.environ.get("PGOLF_CRASH_AT")
    if not want:
        return False
    name, _, nth = want.partition("#")
    if name != point:
        return False
    key = f"_PGOLF_HITS_{point}"
    hits = int(os.environ.get(key, "0")) + 1
    os.environ[key] = str(hits)
    return hits == int(nth or 1)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
