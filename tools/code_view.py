"""view_script and grep_script: how a planner reads trainer/train_gpt.py before it edits it.

Both read the working script (the incumbent plus any pending edit) and answer with numbered lines, so
an edit's search text can be copied from what the model saw. Answers are bounded: a view shows at most
MAX_VIEW_LINES lines, a grep at most MAX_MATCHES matches with a line of context either side.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from tools.context import ToolContext
from tools.registry import ToolError, tool

MAX_VIEW_LINES = 120
MAX_MATCHES = 30
MAX_LINE_CHARS = 200


def numbered(lines: list[str], first: int) -> str:
    """Lines prefixed with their 1-based number, long ones clipped (the clip is marked)."""
    out = []
    for i, line in enumerate(lines, first):
        text = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " …[clipped]"
        out.append(f"{i:5d}| {text}")
    return "\n".join(out)


class ViewArgs(BaseModel):
    start_line: int = Field(ge=1)
    end_line: int = Field(ge=1)


class ViewResult(BaseModel):
    total_lines: int
    shown: str  # "start-end"
    text: str


@tool(
    "view_script",
    f"Numbered lines start_line..end_line of trainer/train_gpt.py (at most {MAX_VIEW_LINES}).",
    ViewArgs,
)
def view_script(args: ViewArgs, ctx: ToolContext) -> ViewResult:
    lines = ctx.ws.script.read_text(encoding="utf-8").splitlines()
    if args.start_line > len(lines):
        raise ToolError(f"the script has {len(lines)} lines; start_line {args.start_line} is past its end")
    if args.end_line < args.start_line:
        raise ToolError("end_line must not be before start_line")
    end = min(args.end_line, len(lines), args.start_line + MAX_VIEW_LINES - 1)
    return ViewResult(
        total_lines=len(lines),
        shown=f"{args.start_line}-{end}",
        text=numbered(lines[args.start_line - 1 : end], args.start_line),
    )


class GrepArgs(BaseModel):
    pattern: str = Field(min_length=1, max_length=200, description="Python regex")
    ignore_case: bool = Field(default=False)


class GrepResult(BaseModel):
    matches: int
    shown: int
    text: str


@tool(
    "grep_script",
    f"Regex search of trainer/train_gpt.py: numbered matches in context (at most {MAX_MATCHES}).",
    GrepArgs,
)
def grep_script(args: GrepArgs, ctx: ToolContext) -> GrepResult:
    try:
        rx = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as e:
        raise ToolError(f"not a valid regular expression: {e}") from None
    lines = ctx.ws.script.read_text(encoding="utf-8").splitlines()
    hits = [i for i, line in enumerate(lines) if rx.search(line)]
    blocks: list[str] = []
    last = -2
    for i in hits[:MAX_MATCHES]:
        lo, hi = max(0, i - 1), min(len(lines), i + 2)
        lo = max(lo, last + 1)
        if lo > last + 1 and blocks:
            blocks.append("  ...")
        blocks.append(numbered(lines[lo:hi], lo + 1))
        last = hi - 1
    return GrepResult(
        matches=len(hits),
        shown=min(len(hits), MAX_MATCHES),
        text="\n".join(blocks) if blocks else "(no match)",
    )
