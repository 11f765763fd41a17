"""After a crash: finish every decision a killed session left half-recorded, from git and the ledger.

A decision is recorded in three places, in this order: the experiment's git commit (whose research
note carries the whole decision as a `Golf-Decision:` trailer), the ledger's DecisionRecord, then what
is derived from it (the finding and the plan's blocks). A SIGKILL can fall between any two; on resume,
`recover` completes the rest from the first place that has it, so the verdict is the one already
committed (never decided again on a noise model that has since grown), and nothing is recorded twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from memory import git_records, incumbent
from memory.records import DecisionRecord, FindingRecord
from memory.workspace import SCRIPT_RELPATH
from tools import registry
from tools.context import ToolContext

DECISION_TRAILER = "Golf-Decision: "
BOOKKEEPING_FILES = ["battle_plan.md"]  # committed with every experiment, from the worktree as it is


def note_with_decision(message: str, dec: DecisionRecord) -> str:
    """The research note with the decision appended as one machine-readable trailer line."""
    body = dec.model_dump_json(exclude={"git_commit", "git_ref"})
    return f"{message.rstrip()}\n\n{DECISION_TRAILER}{body}\n"


def decision_in_note(note: str) -> DecisionRecord | None:
    """The decision a research note carries; None when it has none or one this version cannot read."""
    for line in reversed(note.splitlines()):
        if line.startswith(DECISION_TRAILER):
            try:
                return DecisionRecord.model_validate_json(line.removeprefix(DECISION_TRAILER))
            except ValidationError:
                return None
    return None


def record_commit(
    ctx: ToolContext, exp_id: str, message: str, kept: bool, candidate_files: dict[str, str]
) -> git_records.ExperimentCommit:
    return git_records.record_experiment(
        ctx.ws.root,
        ctx.session,
        exp_id,
        message,
        kept,
        candidate_files=candidate_files,
        also_files=BOOKKEEPING_FILES,
    )


def derive(ctx: ToolContext, dec: DecisionRecord) -> None:
    """What follows from a decision: the technique's finding (and with it the plan's blocks)."""
    if dec.technique:
        registry.call(
            "record_finding",
            {
                "technique": dec.technique,
                "status": dec.outcome,
                "experiment": dec.experiment,
                "note": dec.reason[:300],
            },
            ctx,
        )


def recover(ctx: ToolContext) -> dict[str, Any]:
    """Complete the session's half-recorded decisions; returns what was rebuilt, for the ledger."""
    decided = {d.experiment for d in ctx.ledger.records(DecisionRecord) if d.session == ctx.session}
    rebuilt, unreadable = [], []
    for exp_id, sha in git_records.list_experiments(ctx.ws.root, ctx.session):
        if exp_id in decided:
            continue
        note = git_records.commit_message(ctx.ws.root, sha)
        dec = decision_in_note(note)
        if dec is None or dec.session != ctx.session or dec.experiment != exp_id:
            unreadable.append(exp_id)  # not ours to guess: left as it is, and said so
            continue
        files = {
            p: text
            for p in (SCRIPT_RELPATH, incumbent.INCUMBENT_FILE)
            if (text := git_records.file_at(ctx.ws.root, sha, p)) is not None
        }
        commit = record_commit(ctx, exp_id, note, dec.kept, files)  # finishes a branch move cut short
        ctx.ledger.append(dec.model_copy(update={"git_commit": commit.candidate_sha, "git_ref": commit.ref}))
        rebuilt.append(exp_id)
    found = {f.experiment for f in ctx.ledger.records(FindingRecord)}
    derived = []
    for d in ctx.ledger.records(DecisionRecord):
        if d.session == ctx.session and d.technique and d.experiment not in found:
            derive(ctx, d)
            derived.append(d.experiment)
    if not derived:  # the blocks are rendered from the ledger: a crash mid-write is healed here too
        from tools.findings import rewrite_plan_blocks

        rewrite_plan_blocks(ctx)
    return {"decisions_rebuilt": rebuilt, "findings_rebuilt": derived, "unreadable_commits": unreadable}
