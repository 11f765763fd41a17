"""The incumbent, in one place: the trainer script and the environment overrides a session stands on.

A session's incumbent is its branch's `trainer/train_gpt.py` run with the overrides in the branch's
`incumbent.json` (on top of the tier's env). The ledger says the same thing as it happens: the env of
the session's last kept decision, or, before the first keep, the `incumbent.json` committed where
the session started. Everything that needs "the incumbent", "the last session" or "commit these
bookkeeping files" asks this module; git is reached only through memory.git_records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from memory import git_records
from memory.records import DecisionRecord, EventRecord
from memory.workspace import SCRIPT_RELPATH

INCUMBENT_FILE = (
    "incumbent.json"  # the env overrides the branch's script runs with, for reviewers and sessions
)


class Incumbent(BaseModel):
    script: str
    script_sha: str
    env: dict[str, str]
    rev: str | None = None  # the commit the script was read from; None: the working tree
    experiment: str | None = None  # the kept experiment it comes from; None: the session's starting point
    candidate: str | None = None


# ------------------------------------------------------------------------------------ incumbent.json


def file_text(env: dict[str, str], experiment: str) -> str:
    """incumbent.json as committed with every experiment."""
    return (
        json.dumps(
            {
                "env": dict(sorted(env.items())),
                "experiment": experiment,
                "note": "trainer environment overrides (on top of tiers.toml) that the branch's "
                "trainer/train_gpt.py is the incumbent with; written by pgolf",
            },
            indent=1,
        )
        + "\n"
    )


def env_from_text(text: str) -> dict[str, str]:
    """The env of an incumbent.json text; a malformed file counts as no overrides."""
    try:
        env = json.loads(text).get("env", {})
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def committed_env(root: str | Path, rev: str = "HEAD") -> dict[str, str]:
    """The env of incumbent.json at `rev`: where a new session starts from (empty when absent)."""
    text = git_records.file_at(root, rev, INCUMBENT_FILE)
    return {} if text is None else env_from_text(text)


def committed_script(root: str | Path, rev: str = "HEAD") -> str | None:
    """The trainer script at `rev` (at HEAD: the incumbent on a session branch), or None outside git."""
    return git_records.file_at(root, rev, SCRIPT_RELPATH)


# ------------------------------------------------------------------------------------ from the ledger


def last_session(records: Sequence) -> str | None:
    """The session started last, or None when the ledger holds none."""
    starts = [r.session for r in records if isinstance(r, EventRecord) and r.event == "session_start"]
    return starts[-1] if starts else None


def session_start(records: Sequence, session: str) -> EventRecord | None:
    return next(
        (
            r
            for r in records
            if isinstance(r, EventRecord) and r.session == session and r.event == "session_start"
        ),
        None,
    )


def start_sha(records: Sequence, session: str) -> str:
    """The commit the session branched from (recorded at its start, so a resume sees the same); HEAD
    when the ledger does not know it."""
    start = session_start(records, session)
    return str(start.detail["start_sha"]) if start is not None and start.detail.get("start_sha") else "HEAD"


def base_env(root: str | Path, records: Sequence, session: str) -> dict[str, str]:
    """The env the session started from: the incumbent.json committed where it branched."""
    return committed_env(root, start_sha(records, session))


def last_kept(records: Sequence, session: str) -> DecisionRecord | None:
    kept = [r for r in records if isinstance(r, DecisionRecord) and r.session == session and r.kept]
    return kept[-1] if kept else None


def current_env(records: Sequence, session: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The env of the session's last kept candidate (wins stack through it: a kept decision records
    the full env); before the first keep, `base`."""
    kept = last_kept(records, session)
    return dict(kept.env) if kept is not None else dict(base or {})


def candidate_env(incumbent_env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The env a candidate runs with (and, if kept, the next incumbent's): its overrides on the incumbent's,
    so wins stack. The one place the two are merged."""
    return {**incumbent_env, **overrides}


def stack(records: Sequence, session: str) -> list[str]:
    """The kept techniques of the session, in order."""
    return [
        r.technique or r.candidate
        for r in records
        if isinstance(r, DecisionRecord) and r.session == session and r.kept
    ]


# ------------------------------------------------------------------------------------ the incumbent


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def in_session(
    root: str | Path,
    records: Sequence,
    session: str,
    base: dict[str, str] | None = None,
    working_script: str | None = None,
) -> Incumbent:
    """The incumbent of the running session: the script at HEAD (the session's branch), the ledger's env.

    Outside git the working tree's script (`working_script`, else read from disk) stands in."""
    text = committed_script(root)
    rev = None if text is None else git_records.rev_parse(root, "HEAD")
    if text is None:
        text = working_script if working_script is not None else (Path(root) / SCRIPT_RELPATH).read_text()
    kept = last_kept(records, session)
    env = (
        dict(kept.env)
        if kept is not None
        else dict(base if base is not None else base_env(root, records, session))
    )
    return Incumbent(
        script=text,
        script_sha=_sha(text),
        env=env,
        rev=rev,
        experiment=kept.experiment if kept else None,
        candidate=kept.candidate if kept else None,
    )


def of_session(root: str | Path, records: Sequence, session: str, rev: str | None = None) -> Incumbent:
    """The incumbent a session left behind (for a final or a status line): the script and env committed
    at `rev` (default: the session's branch, else HEAD), named by the ledger's last kept decision.

    The branch's incumbent.json is the env when it has one (it is written with every experiment, so it
    never lags the ledger); without one the ledger's env stands in. Outside git: the working tree."""
    revs = [rev] if rev else [f"{git_records.BRANCH_PREFIX}{session}", "HEAD"]
    kept = last_kept(records, session)
    named = {"experiment": kept.experiment if kept else None, "candidate": kept.candidate if kept else None}
    for r in revs:
        text = committed_script(root, r)
        if text is None:
            continue
        env_text = git_records.file_at(root, r, INCUMBENT_FILE)
        env = (
            env_from_text(env_text)
            if env_text is not None
            else current_env(records, session, base_env(root, records, session))
        )
        return Incumbent(
            script=text, script_sha=_sha(text), env=env, rev=git_records.rev_parse(root, r), **named
        )
    text = (Path(root) / SCRIPT_RELPATH).read_text()
    return Incumbent(script=text, script_sha=_sha(text), env=current_env(records, session), **named)


def commit_paths(root: str | Path, paths: Sequence[str], message: str) -> str | None:
    """Commit bookkeeping files (battle_plan.md after a session) on the session's branch if they changed."""
    return git_records.commit_paths(root, paths, message)
