"""edit_train_script: exact search/replace edits to trainer/train_gpt.py, and nothing else.

Refused, with a reason the planner can act on: a path other than the script, a search string that is
missing or ambiguous, a result that does not compile, and any change to the protected metric region
(the byte-accounting tables and the bpb formula), which would let an edit "improve" the score by
miscounting bytes.
"""

from __future__ import annotations

import difflib
import hashlib

from pydantic import BaseModel, Field

from memory.incumbent import committed_script
from memory.workspace import SCRIPT_RELPATH
from tools import metric_guard
from tools.context import ToolContext
from tools.registry import ToolError, tool

PROTECTED_BEGIN = "# === PROTECTED: METRIC BEGIN ==="
PROTECTED_END = "# === PROTECTED: METRIC END ==="


class Edit(BaseModel):
    search: str = Field(min_length=1, max_length=20_000, description="exact text to find; must occur once")
    replace: str = Field(max_length=20_000, description="text to put in its place")


class EditArgs(BaseModel):
    rationale: str = Field(min_length=1, max_length=2_000, description="why this change should lower val_bpb")
    edits: list[Edit] = Field(min_length=1, max_length=20)
    path: str = Field(default=SCRIPT_RELPATH, description=f"must be {SCRIPT_RELPATH}")


class EditResult(BaseModel):
    diff: str  # unified diff of this call's change
    diff_vs_incumbent_lines: int
    script_sha: str


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def protected_region(text: str) -> str:
    """The text between the markers (markers included). Exactly one region must exist."""
    if text.count(PROTECTED_BEGIN) != 1 or text.count(PROTECTED_END) != 1:
        raise ToolError("the protected metric markers must each appear exactly once")
    start = text.index(PROTECTED_BEGIN)
    end = text.index(PROTECTED_END) + len(PROTECTED_END)
    if end < start:
        raise ToolError("the protected metric markers are out of order")
    return text[start:end]


def unified_diff(old: str, new: str, name: str = SCRIPT_RELPATH) -> str:
    return "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}", n=2)
    )


def incumbent_script(ws_root) -> str | None:
    """The script as committed at HEAD (the incumbent on a session branch), or None outside git."""
    return committed_script(ws_root)


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply edits in order; each search must match exactly once in the text as edited so far."""
    region = protected_region(text)
    for i, e in enumerate(edits, 1):
        n = text.count(e.search)
        if n == 0:
            raise ToolError(f"edit {i}: search text not found in {SCRIPT_RELPATH} (it must match exactly, "
                            "whitespace included)")
        if n > 1:
            raise ToolError(f"edit {i}: search text is ambiguous ({n} matches); include more context")
        start = text.index(e.search)
        r_start = text.index(PROTECTED_BEGIN)
        r_end = text.index(PROTECTED_END) + len(PROTECTED_END)
        if start < r_end and start + len(e.search) > r_start:
            raise ToolError(f"edit {i}: touches the protected metric region (byte accounting and the bpb "
                            "formula); that code is not editable")
        text = text.replace(e.search, e.replace, 1)
    if protected_region(text) != region:
        raise ToolError("the edits change the protected metric region; refused")
    try:
        compile(text, SCRIPT_RELPATH, "exec")
    except SyntaxError as err:
        raise ToolError(f"the edited script does not compile: line {err.lineno}: {err.msg}") from None
    guard_problems = metric_guard.violations(text)  # the fence on the syntax tree, not only as text
    if guard_problems:
        raise ToolError("the edit reaches around the protected metric code: " + "; ".join(guard_problems[:6]))
    return text


@tool(
    "edit_train_script",
    "Apply exact search/replace edits to trainer/train_gpt.py (outside the protected metric region). "
    "The edited script becomes the candidate of the next experiment. Returns the unified diff.",
    EditArgs,
)
def edit_train_script(args: EditArgs, ctx: ToolContext) -> EditResult:
    if args.path.strip().lstrip("./") != SCRIPT_RELPATH:
        raise ToolError(f"only {SCRIPT_RELPATH} may be edited, not {args.path[:200]!r}")
    path = ctx.ws.script
    old = path.read_text(encoding="utf-8")
    new = apply_edits(old, args.edits)
    tmp = path.with_suffix(".py.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)
    incumbent = incumbent_script(ctx.ws.root) or old
    vs_inc = unified_diff(incumbent, new)
    return EditResult(
        diff=unified_diff(old, new),
        diff_vs_incumbent_lines=sum(1 for ln in vs_inc.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")),
        script_sha=sha256_text(new),
    )
