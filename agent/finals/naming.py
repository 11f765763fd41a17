"""Pod names and locks: how a pod says which session, machine and final made it, and how a running
final says "my pods are in use" so that no reaper takes them.

Pod names are `pgolf-<session>-<host>-<final>-<attempt>`; a final holds a lock file (JSON
pid/session/host/started) in PGOLF_LOCK_DIR (default ~/.cache/pgolf/locks) while its pod may live."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path

from agent.lock import pid_alive, read_lock
from memory.records import utcnow
from memory.workspace import Workspace

POD_PREFIX = "pgolf-"


def session_slug(session: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", session.lower()).strip("-") or "session"
    if len(slug) > 24 or slug != session:  # keep distinct sessions distinct after slugging
        slug = f"{slug[:17].strip('-')}-{hashlib.sha1(session.encode()).hexdigest()[:6]}"
    return slug


def pod_prefix(session: str) -> str:
    return f"{POD_PREFIX}{session_slug(session)}-"


def host_tag(host: str | None = None) -> str:
    return hashlib.sha1((host or socket.gethostname()).encode()).hexdigest()[:4]


def pod_stem(session: str, final_id: str) -> str:
    """A final's pods are <stem>-1, <stem>-2, ... (one per rung tried)."""
    return f"{pod_prefix(session)}{host_tag()}-{final_id.rsplit('-', 1)[-1]}"


def parse_pod_name(name: str) -> dict[str, str] | None:
    """pgolf-<session slug>-<host>-<final>-<attempt> -> parts, or None for a pod that is not ours."""
    if not name.startswith(POD_PREFIX):
        return None
    parts = name.rsplit("-", 3)
    if len(parts) != 4 or not re.fullmatch(r"[0-9a-f]{4}", parts[1]) or not parts[3].isdigit():
        return None
    return {"prefix": parts[0] + "-", "host": parts[1], "final": parts[2], "attempt": parts[3]}


def lock_dir() -> Path:
    return Path(os.environ.get("PGOLF_LOCK_DIR") or Path.home() / ".cache" / "pgolf" / "locks")


@contextmanager
def final_lock(session: str, final_id: str):
    """A lock file saying "this session's pods are in use" for as long as the final runs."""
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{final_id}.lock"
    info = {"pid": os.getpid(), "session": session, "host": socket.gethostname(), "started": utcnow()}
    path.write_text(json.dumps(info))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _owner_live(info: dict | None) -> bool:
    if not info or "session" not in info:
        return False
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: we cannot tell, so we assume it lives
    try:
        return pid_alive(int(info.get("pid", -1)))
    except (TypeError, ValueError):
        return False


def live_sessions(ws: Workspace | None = None) -> set[str]:
    locks = sorted(lock_dir().glob("*.lock")) if lock_dir().is_dir() else []
    if ws is not None:
        locks.append(ws.lock)
    infos = [read_lock(p) for p in locks]
    return {str(info["session"]) for info in infos if info is not None and _owner_live(info)}
