"""edit_train_script: exact search/replace edits to trainer/train_gpt.py, and nothing else.

Refused, with a reason the planner can act on: a path other than the script, a search string that is
missing (the answer shows the nearest region of the script, numbered, so the next try can copy it) or
ambiguous, and an edited script that fails `check_edited_script`: it must compile, stay one file (no
import of the project's own packages, no relative import), leave the protected metric region (the
byte-accounting tables and the bpb formula) unchanged, and stay within the line and byte budget.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib

from pydantic import BaseModel, Field

from memory.incumbent import committed_script
from memory.workspace import SCRIPT_RELPATH
from tools import metric_guard
from tools.context import ToolContext
from tools.registry import ToolError, tool

PROTECTED_BEGIN = "# === PROTECTED: METRIC BEGIN ==="
PROTECTED_END = "# === PROTECTED: METRIC END ==="
# one file in the challenge's style; its bytes count against the 16 MB artifact. The trainer with every
# frontier flag is ~1,820 lines / ~96 KB, so the budget leaves room for a few ideas on top, not a second file
MAX_SCRIPT_LINES = 2_000
MAX_SCRIPT_BYTES = 120_000
# the project's own packages: a trainer importing them would no longer be a standalone single file
PROJECT_PACKAGES = frozenset(
    {"agent", "tools", "memory", "trainer", "tests", "benchmarks", "testing", "pgolf"}
)
NEAREST_CONTEXT = 2  # lines shown either side of the nearest region


class Edit(BaseModel):
    search: str = Field(min_length=1, max_length=20_000, description="exact text, found once")
    replace: str = Field(max_length=20_000)


class EditArgs(BaseModel):
    rationale: str = Field(min_length=1, max_length=2_000, description="why it should lower val_bpb")
    edits: list[Edit] = Field(min_length=1, max_length=20)
    path: str = Field(default=SCRIPT_RELPATH)  # anything else is refused


class EditResult(BaseModel):
    diff: str  # unified diff of this call's change
    diff_vs_incumbent_lines: int
    script_sha: str  # short: enough to tell versions apart in a prompt
    lines: int


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


def nearest_region(text: str, search: str) -> str:
    """The window of the script most like `search` (difflib over windows of as many lines), numbered, so a
    model whose search text drifted (whitespace, a stale line) sees what is really there."""
    lines = text.splitlines()
    want = search.strip("\n").splitlines() or [search]
    k = min(len(want), len(lines)) or 1
    needle = "\n".join(x.strip() for x in want)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(needle)
    best, best_i = -1.0, 0
    for i in range(0, max(1, len(lines) - k + 1)):
        matcher.set_seq1("\n".join(x.strip() for x in lines[i : i + k]))
        if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
            continue
        r = matcher.ratio()
        if r > best:
            best, best_i = r, i
    lo, hi = max(0, best_i - NEAREST_CONTEXT), min(len(lines), best_i + k + NEAREST_CONTEXT)
    body = "\n".join(f"{n:5d}| {lines[n - 1][:200]}" for n in range(lo + 1, hi + 1))
    return f"nearest region (lines {best_i + 1}-{best_i + k}, similarity {best:.2f}):\n{body}"


@functools.lru_cache(maxsize=8)
def _project_imports_of(text: str) -> tuple[str, ...]:
    return tuple(_project_imports(ast.parse(text)))


def _project_imports(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                bad.append("a relative import")
            elif node.module and node.module.split(".")[0] in PROJECT_PACKAGES:
                bad.append(node.module)
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in PROJECT_PACKAGES]
    return bad


def check_edited_script(old: str, new: str) -> None:
    """The one check every edited script passes before it is written (raises ToolError with the reason).
    Further checks on the edited script (the metric guard) hook in here, so no edit path can skip them."""
    if protected_region(new) != protected_region(old):
        raise ToolError("the edits change the protected metric region; refused")
    try:
        tree = ast.parse(new, SCRIPT_RELPATH)
        compile(tree, SCRIPT_RELPATH, "exec")
    except SyntaxError as err:
        raise ToolError(f"the edited script does not compile: line {err.lineno}: {err.msg}") from None
    bad = sorted(set(_project_imports(tree)) - set(_project_imports_of(old)))
    if bad:
        raise ToolError(f"the trainer must stay one standalone file; it may not import {', '.join(bad)}")
    guard_problems = metric_guard.violations(new)  # the fence on the syntax tree, not only as text
    if guard_problems:
        raise ToolError("the edit reaches around the protected metric code: " + "; ".join(guard_problems[:6]))
    n_lines, n_bytes = new.count("\n") + 1, len(new.encode("utf-8"))
    if n_lines > MAX_SCRIPT_LINES or n_bytes > MAX_SCRIPT_BYTES:
        raise ToolError(
            f"the edited script has {n_lines} lines and {n_bytes} bytes; the budget is "
            f"{MAX_SCRIPT_LINES} lines and {MAX_SCRIPT_BYTES} bytes"
        )


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply edits in order; each search must match exactly once in the text as edited so far."""
    original = text
    protected_region(text)
    for i, e in enumerate(edits, 1):
        n = text.count(e.search)
        if n == 0:
            raise ToolError(
                f"edit {i}: search text not found in {SCRIPT_RELPATH} (it must match exactly, "
                f"whitespace included; copy it from view_script). {nearest_region(text, e.search)}"
            )
        if n > 1:
            raise ToolError(f"edit {i}: search text is ambiguous ({n} matches); include more context")
        start = text.index(e.search)
        r_start = text.index(PROTECTED_BEGIN)
        r_end = text.index(PROTECTED_END) + len(PROTECTED_END)
        if start < r_end and start + len(e.search) > r_start:
            raise ToolError(
                f"edit {i}: touches the protected metric region (byte accounting and the bpb "
                "formula); that code is not editable"
            )
        text = text.replace(e.search, e.replace, 1)
    check_edited_script(original, text)
    return text


@tool(
    "edit_train_script",
    "Exact search/replace edits to trainer/train_gpt.py (your next sweep's candidate); returns the diff.",
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
        diff_vs_incumbent_lines=sum(
            1 for ln in vs_inc.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")
        ),
        script_sha=sha256_text(new)[:12],
        lines=new.count("\n") + 1,
    )
