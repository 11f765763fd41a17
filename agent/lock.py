"""One session per workspace: a lock file that a dead process does not hold forever."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from memory.records import utcnow


class LockedError(RuntimeError):
    pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lock_is_live(info: dict | None) -> bool:
    if not info:
        return False
    return info.get("host") == socket.gethostname() and pid_alive(int(info.get("pid", -1)))


def acquire(path: Path, session: str) -> dict:
    """Take the lock, replacing a stale one (dead pid or unreadable); refuse a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "session": session, "host": socket.gethostname(), "started": utcnow()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_lock(path)
            if held is not None and lock_is_live(held):
                raise LockedError(
                    f"session {held['session']} (pid {held['pid']}) is running in this "
                    f"workspace since {held.get('started')}; one session at a time"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        return info
    raise LockedError(f"could not take the lock at {path}")


def release(path: Path) -> None:
    held = read_lock(path)
    if held and held.get("pid") == os.getpid():
        path.unlink(missing_ok=True)
