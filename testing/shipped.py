"""The project's own files as shipped, read from git rather than from the working tree.

After `golf run` the checkout sits on a session branch whose battle_plan.md has its blocks filled in,
and a human may have edited the plan since: neither is what the project ships. The shipped version
is the file at the newest commit of HEAD's first-parent history that pgolf did not make.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the subjects of the commits a session makes (agent/experiment.py, memory/git_records.py, agent/session.py)
SESSION_COMMIT = re.compile(
    r"^(e\d{3,}-\S+: \S+ -> \w+ \((kept|discarded)\)"
    r"|discard e\d{3,}-\S+:"
    r"|session \S+: battle plan after the session)"
)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def shipped_commit(root: Path = ROOT) -> str | None:
    """The newest commit on HEAD's first-parent line that is not a session's; None outside git."""
    log = _git(root, "log", "--first-parent", "--format=%H%x00%s", "HEAD")
    if log.returncode != 0:
        return None
    for line in log.stdout.splitlines():
        sha, _, subject = line.partition("\0")
        if not SESSION_COMMIT.match(subject):
            return sha
    return None


def shipped_text(relpath: str, root: Path = ROOT) -> str:
    """relpath as shipped (the working tree's copy when this is not a git checkout, e.g. an unpacked sdist)."""
    sha = shipped_commit(root)
    if sha is not None:
        shown = _git(root, "show", f"{sha}:{relpath}")
        if shown.returncode == 0:
            return shown.stdout
    return (root / relpath).read_text(encoding="utf-8")
