"""battle_plan.md: the human's plan, with a few blocks the agent owns.

The human owns every byte outside the agent blocks, which are delimited by lines
`<!-- golf:begin NAME -->` and `<!-- golf:end NAME -->`. The agent reads the human sections (Directives,
Budget, Queue) and rewrites only block contents. Every agent write re-reads the file just before
replacing it, so a human edit made while a session runs is never lost.

The Budget section's `start: NAME` names a preset of presets.toml (memory/presets.py) that the session's
incumbent starts from; `start: baseline` or no key starts from the plain trainer.

Queue lines read `- [ ] technique_id: ENV=VAL ENV2=VAL2 — notes (priority N)`; the checkbox holds the
state: ' ' todo, 'x' done, '-' banned/skip, '~' retest. Priority 1 runs first; items without a
priority keep file order after the prioritised ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from memory.frontier import load_synonyms
from memory.knobs import ENV_NAME
from memory.records import FindingRecord

BLOCK_NAMES = ("confirmed", "dead_ends", "preset_worth", "frontier", "queue_status", "log")
BLOCK_HEADINGS = {  # used when a block is missing and write_blocks appends it
    "confirmed": "Confirmed deltas",
    "dead_ends": "Dead ends",
    "preset_worth": "What the start preset's techniques are worth here",
    "frontier": "Frontier",
    "queue_status": "Queue status",
    "log": "Session log",
}

# The trainer flags that switch each technique on (the queue line's env wins when it names any); one home
# for them: the [flags] table of memory/data/technique_synonyms.toml.
TECHNIQUE_FLAGS: dict[str, dict[str, str]] = load_synonyms().flags

QueueState = Literal["todo", "done", "banned", "retest"]
_STATE_OF_MARK: dict[str, QueueState] = {" ": "todo", "x": "done", "X": "done", "-": "banned", "~": "retest"}
_MARK_OF_STATE = {"todo": " ", "done": "x", "banned": "-", "retest": "~"}

_MARKER = re.compile(r"^\s*<!--\s*golf:(begin|end)\s+([^\s>]+)\s*-->\s*$")
_MARKER_START = re.compile(r"^\s*<!--\s*golf:")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^[-*+]\s")
_QUEUE = re.compile(r"^[-*+]\s+\[(.)\]\s+(\S+?)(?::(?=\s|$)|(?=\s)|$)(.*)$")
_TECHNIQUE = re.compile(r"^[a-z][a-z0-9_]*$")
_ENV = re.compile(r"^(" + ENV_NAME.pattern.strip("^$") + r")=(\S+)$")
_PRIORITY = re.compile(r"\(\s*priority\s+(-?\d+)\s*\)\s*$", re.IGNORECASE)
_NOTES_SPLIT = re.compile(r"\s+(?:—|–|--)\s+|^(?:—|–|--)\s+")
_BUDGET = re.compile(r"^[-*+]\s+([A-Za-z_][A-Za-z0-9_ ]*?)\s*:\s*(.*?)\s*$")


class BattlePlanError(ValueError):
    """A malformed plan; the message starts with `file:line:`."""


class QueueItem(BaseModel):
    technique: str
    env: dict[str, str] = Field(default_factory=dict)
    notes: str = ""
    priority: int | None = None
    state: QueueState = "todo"
    line: int  # 1-based line in the file when parsed

    def effective_env(self) -> dict[str, str]:
        """The env the line names, or the technique's default trainer flags when it names none."""
        return dict(self.env) if self.env else dict(TECHNIQUE_FLAGS.get(self.technique, {}))


class PlanBudget(BaseModel):
    """The plan's spending limits. None means "not limited by the plan" (the CLI's own limits still apply).

    `model_fields_set` tells which keys the human actually wrote.
    """

    tier: str = "cpu-smoke"
    minutes: float | None = None
    experiments: int | None = None
    dollars: float = 0.0  # local experiments on paid hardware (e.g. a rented single GPU)
    final_dollars: float = 0.0  # 8xH100 finals
    approve_finals: bool = False  # with `golf final --approve`, the only grant to spend on finals
    seeds_max: int | None = None
    start: str | None = None  # a preset of presets.toml: the incumbent's env before the queue runs


class BattlePlan(BaseModel):
    name: str = ""
    directives: list[str] = Field(default_factory=list)
    budget: PlanBudget = Field(default_factory=PlanBudget)
    queue: list[QueueItem] = Field(default_factory=list)
    blocks: dict[str, str] = Field(default_factory=dict)  # agent block name -> current content
    human_sha: str = ""

    def pending(self) -> list[QueueItem]:
        """Items still to try (todo or retest), in the order the planner should take them."""
        items = [q for q in self.queue if q.state in ("todo", "retest")]
        return sorted(items, key=lambda q: (q.priority is None, q.priority or 0, q.line))

    def item(self, technique: str) -> QueueItem | None:
        return next((q for q in self.queue if q.technique == technique), None)


# ---------------------------------------------------------------------------------------------- parsing


def _split_lines(text: str) -> list[str]:
    """Lines with their endings kept, split on '\\n' only (str.splitlines also splits on \\x0c etc.)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


class _Span(BaseModel):
    name: str
    begin: int  # index of the begin marker line
    end: int  # index of the end marker line


def _scan_blocks(lines: list[str], name: str) -> list[_Span]:
    spans: list[_Span] = []
    seen: dict[str, int] = {}
    open_name: str | None = None
    open_at = 0
    for i, raw in enumerate(lines):
        if not _MARKER_START.match(raw):
            continue
        where = f"{name}:{i + 1}"
        m = _MARKER.match(raw.rstrip("\r\n"))
        if not m:
            raise BattlePlanError(
                f"{where}: malformed agent marker {raw.strip()!r} "
                "(expected `<!-- golf:begin NAME -->` or `<!-- golf:end NAME -->`)"
            )
        kind, block = m.groups()
        if block not in BLOCK_NAMES:
            raise BattlePlanError(f"{where}: unknown agent block {block!r} (known: {', '.join(BLOCK_NAMES)})")
        if kind == "begin":
            if open_name is not None:
                raise BattlePlanError(
                    f"{where}: block {block!r} begins inside block {open_name!r} "
                    f"(opened at line {open_at + 1}); blocks cannot nest"
                )
            if block in seen:
                raise BattlePlanError(f"{where}: duplicate block {block!r} (first at line {seen[block] + 1})")
            open_name, open_at = block, i
            seen[block] = i
        else:
            if open_name is None:
                raise BattlePlanError(f"{where}: `golf:end {block}` without a matching begin")
            if block != open_name:
                raise BattlePlanError(
                    f"{where}: `golf:end {block}` closes block {open_name!r} (opened at line {open_at + 1})"
                )
            spans.append(_Span(name=block, begin=open_at, end=i))
            open_name = None
    if open_name is not None:
        raise BattlePlanError(
            f"{name}:{open_at + 1}: block {open_name!r} is never closed (no `<!-- golf:end {open_name} -->`)"
        )
    return spans


def _human_text(lines: list[str], spans: list[_Span]) -> str:
    inside = {j for s in spans for j in range(s.begin + 1, s.end)}
    return "".join(line for j, line in enumerate(lines) if j not in inside)


def _fingerprint(lines: list[str], spans: list[_Span]) -> str:
    return hashlib.sha256(_human_text(lines, spans).encode("utf-8")).hexdigest()


def _parse_queue_line(text: str, lineno: int, name: str) -> QueueItem:
    where = f"{name}:{lineno}"
    m = _QUEUE.match(text)
    if not m:
        raise BattlePlanError(
            f"{where}: bad queue line {text.strip()!r} "
            "(expected `- [ ] technique_id: ENV=VAL ... — notes (priority N)`)"
        )
    mark, technique, rest = m.groups()
    if mark not in _STATE_OF_MARK:
        raise BattlePlanError(
            f"{where}: unknown checkbox [{mark}] (use [ ] todo, [x] done, [-] banned, [~] retest)"
        )
    if not _TECHNIQUE.match(technique):
        raise BattlePlanError(f"{where}: technique id {technique!r} is not snake_case")
    parts = _NOTES_SPLIT.split(rest.strip(), maxsplit=1)
    env_part, notes = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")
    priority = None
    for holder in ("notes", "env"):
        src = notes if holder == "notes" else env_part
        pm = _PRIORITY.search(src)
        if pm:
            priority = int(pm.group(1))
            src = src[: pm.start()].rstrip()
            if holder == "notes":
                notes = src
            else:
                env_part = src
            break
    env: dict[str, str] = {}
    for token in env_part.split():
        em = _ENV.match(token)
        if not em:
            raise BattlePlanError(
                f"{where}: bad ENV token {token!r} in queue item {technique!r} "
                "(expected UPPER_CASE=value; put notes after ' — ')"
            )
        env[em.group(1)] = em.group(2)
    return QueueItem(
        technique=technique,
        env=env,
        notes=notes.strip(),
        priority=priority,
        state=_STATE_OF_MARK[mark],
        line=lineno,
    )


_NONE_WORDS = {"none", "unlimited", "-", ""}


def _budget_value(key: str, value: str, where: str):
    v = re.split(r"\s+(?:#|—|–|--)\s", value, maxsplit=1)[0].strip()
    low = v.lower()
    try:
        if key == "tier":
            if not re.match(r"^[A-Za-z0-9_.-]+$", v):
                raise ValueError("a tier name from tiers.toml")
            return v
        if key == "start":
            if low in _NONE_WORDS or low == "baseline":
                return None
            if not re.match(r"^[A-Za-z0-9_.-]+$", v):
                raise ValueError("a preset name from presets.toml, or baseline")
            return v
        if key == "approve_finals":
            if low in ("yes", "true", "1", "y"):
                return True
            if low in ("no", "false", "0", "n"):
                return False
            raise ValueError("yes or no")
        if key in ("minutes", "experiments", "seeds_max") and low in _NONE_WORDS:
            return None
        if key in ("dollars", "final_dollars"):
            x = float(low.lstrip("$").replace(",", ""))
            if not x >= 0:
                raise ValueError("a non-negative amount")
            return x
        if key == "minutes":
            x = float(low.removesuffix("min").removesuffix("m").strip())
            if not x > 0:
                raise ValueError("a positive number of minutes")
            return x
        n = int(low)  # experiments, seeds_max
        if n < (1 if key == "seeds_max" else 0):
            raise ValueError("a positive integer" if key == "seeds_max" else "a non-negative integer")
        return n
    except ValueError as e:
        hint = str(e) if not str(e).startswith(("could not", "invalid literal")) else "a number"
        raise BattlePlanError(f"{where}: bad budget value {key}: {value!r} (expected {hint})") from None


def parse_plan(text: str, name: str = "battle_plan.md") -> BattlePlan:
    lines = _split_lines(text)
    spans = _scan_blocks(lines, name)
    inside = {j for s in spans for j in range(s.begin, s.end + 1)}
    section: str | None = None
    seen_sections: dict[str, int] = {}
    directives: list[str] = []
    budget: dict[str, Any] = {}
    budget_lines: dict[str, int] = {}
    queue: list[QueueItem] = []
    for i, raw in enumerate(lines):
        if i in inside:
            continue
        lineno, text_line = i + 1, raw.rstrip("\r\n")
        h = _HEADING.match(text_line)
        if h:
            level, title = len(h.group(1)), h.group(2).strip().lower()
            if level <= 2:
                section = title if title in ("directives", "budget", "queue") else None
                if section:
                    if section in seen_sections:
                        raise BattlePlanError(
                            f"{name}:{lineno}: second '## {h.group(2)}' section "
                            f"(first at line {seen_sections[section]})"
                        )
                    seen_sections[section] = lineno
            continue
        if section is None or not _BULLET.match(text_line):
            continue  # prose, blank lines and indented sub-bullets are the human's commentary
        if section == "directives":
            directives.append(text_line[2:].strip())
        elif section == "budget":
            m = _BUDGET.match(text_line)
            key = m.group(1).strip().lower().replace(" ", "_") if m else ""
            if not m or key not in PlanBudget.model_fields:
                raise BattlePlanError(
                    f"{name}:{lineno}: bad budget line {text_line.strip()!r} "
                    f"(expected `- key: value` with key in {', '.join(PlanBudget.model_fields)})"
                )
            if key in budget_lines:
                raise BattlePlanError(
                    f"{name}:{lineno}: budget key {key!r} repeated (first at line {budget_lines[key]})"
                )
            budget_lines[key] = lineno
            budget[key] = _budget_value(key, m.group(2), f"{name}:{lineno}")
        else:
            queue.append(_parse_queue_line(text_line, lineno, name))
    blocks = {s.name: "".join(lines[s.begin + 1 : s.end]) for s in spans}
    return BattlePlan(
        name=name,
        directives=directives,
        budget=PlanBudget.model_validate(budget),
        queue=queue,
        blocks=blocks,
        human_sha=_fingerprint(lines, spans),
    )


def load_plan(path: str | Path) -> BattlePlan:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")  # bytes, not read_text: keep CRLF exactly as on disk
    except FileNotFoundError:
        raise BattlePlanError(f"{path}:1: no battle plan at this path") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise BattlePlanError(f"{path}:{line}: not valid UTF-8") from None
    return parse_plan(text, name=str(path))


def human_fingerprint(path: str | Path) -> str:
    """sha256 of everything outside agent block contents; changes exactly when the human edits the plan."""
    path = Path(path)
    lines = _split_lines(path.read_bytes().decode("utf-8"))
    return _fingerprint(lines, _scan_blocks(lines, str(path)))


# ---------------------------------------------------------------------------------------------- writing


def _atomic_edit(
    path: Path, edit: Callable[[str], str], _between: Callable[[], None] | None = None, attempts: int = 20
) -> None:
    """Apply `edit` to the file's current text and replace it atomically.

    The file is re-read after the new version is staged in a temp file; if someone wrote it in the
    meantime the edit is redone on their version, so their change is kept. `_between` is a test hook
    that runs at exactly that moment.
    """
    for _ in range(attempts):
        before = path.read_bytes() if path.exists() else None
        new = edit(before.decode("utf-8") if before is not None else "")
        if before is not None and new.encode("utf-8") == before:
            return  # nothing to change: leave the file (and its mtime) alone
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(new.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            if before is not None:
                os.chmod(tmp, path.stat().st_mode & 0o7777)
            if _between is not None:
                _between()
                _between = None
            now = path.read_bytes() if path.exists() else None
            if now != before:
                continue  # the human saved meanwhile: redo the edit on their text
            os.replace(tmp, path)
            tmp = ""
        finally:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return
    raise BattlePlanError(f"{path}:1: the file kept changing while the agent tried to write it; gave up")


def _check_content(name: str, content: str) -> str:
    for line in _split_lines(content):
        if _MARKER_START.match(line):
            raise BattlePlanError(f"block {name!r}: content may not contain agent markers ({line.strip()!r})")
    return content


def _replace_blocks(text: str, contents: dict[str, str], name: str) -> str:
    lines = _split_lines(text)
    spans = {s.name: s for s in _scan_blocks(lines, name)}
    nl = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"

    def body(content: str) -> list[str]:
        content = content.replace("\r\n", "\n").rstrip("\n")
        return [ln + nl for ln in content.split("\n")] if content else []

    # Replace from the bottom up so earlier spans keep their indices.
    for span in sorted((spans[b] for b in contents if b in spans), key=lambda s: -s.begin):
        lines[span.begin + 1 : span.end] = body(contents[span.name])
    missing = [b for b in contents if b not in spans]
    if missing:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += nl
        for b in missing:
            if lines and lines[-1].strip():
                lines.append(nl)
            lines.append(f"### {BLOCK_HEADINGS[b]}{nl}{nl}")
            lines.append(f"<!-- golf:begin {b} -->{nl}")
            lines.extend(body(contents[b]))
            lines.append(f"<!-- golf:end {b} -->{nl}")
    return "".join(lines)


def write_blocks(path: str | Path, contents: dict[str, str]) -> None:
    """Replace the contents of the named agent blocks, keeping every human byte (even fresh edits).

    A missing block is appended at the end under a heading. Afterwards reload the plan
    (`load_plan`) to get a fresh `human_sha`: appending a block changes the human text.
    """
    path = Path(path)
    for b, content in contents.items():
        if b not in BLOCK_NAMES:
            raise BattlePlanError(f"{path}:1: unknown agent block {b!r} (known: {', '.join(BLOCK_NAMES)})")
        _check_content(b, content)
    _atomic_edit(path, lambda text: _replace_blocks(text, contents, str(path)))


def set_queue_state(
    path: str | Path, technique: str, state: QueueState, env: dict[str, str] | None = None
) -> QueueItem | None:
    """Set the checkbox of the queue line naming `technique`; every other byte stays as the human wrote it.

    Returns the updated item, or None when no queue line names the technique (an idea from outside
    the queue). When several lines name it, `env` picks the one with exactly that env.
    """
    path = Path(path)
    if state not in _MARK_OF_STATE:
        raise BattlePlanError(f"{path}:1: unknown queue state {state!r}")
    found: list[QueueItem] = []

    def edit(text: str) -> str:
        found.clear()
        plan = parse_plan(text, name=str(path))
        hits = [q for q in plan.queue if q.technique == technique and (env is None or q.env == env)]
        if not hits:
            return text
        if len(hits) > 1:
            raise BattlePlanError(
                f"{path}:{hits[1].line}: technique {technique!r} is queued on lines "
                f"{', '.join(str(q.line) for q in hits)}; pass env= to pick one"
            )
        item = hits[0]
        lines = _split_lines(text)
        raw = lines[item.line - 1]
        m = _QUEUE.match(raw.rstrip("\r\n"))
        assert m is not None  # parse_plan accepted this line
        lines[item.line - 1] = raw[: m.start(1)] + _MARK_OF_STATE[state] + raw[m.end(1) :]
        found.append(item.model_copy(update={"state": state}))
        return "".join(lines)

    _atomic_edit(path, edit)
    return found[0] if found else None


# ------------------------------------------------------------------------------------------- rendering


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _fmt(x: float | None, digits: int = 4, sign: bool = True) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(f: FindingRecord) -> str:
    if f.ci_low is None or f.ci_high is None:
        return "–"
    return f"[{_fmt(f.ci_low)}, {_fmt(f.ci_high)}]"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


CONFIRMED_HEADER = ["technique", "tier", "delta bpb", "95% CI", "p", "n", "date", "experiment"]
DEAD_ENDS_HEADER = ["technique", "tier", "delta bpb", "95% CI", "p", "n", "date", "experiment", "note"]


def render_confirmed(findings: Iterable[FindingRecord]) -> str:
    """The confirmed-deltas table: confirmed findings only, biggest win first."""
    rows = sorted(
        (f for f in findings if f.status == "confirmed"),
        key=lambda f: (f.delta if f.delta is not None else 0.0, f.at),
    )
    return _table(
        CONFIRMED_HEADER,
        (
            [
                f.technique,
                f.tier,
                _fmt(f.delta),
                _ci(f),
                _p(f.p_value),
                str(f.n),
                f.at[:10],
                f.experiment or "–",
            ]
            for f in rows
        ),
    )


PRESET_WORTH_HEADER = ["technique", "ablation", "tier", "delta bpb with it", "95% CI", "n", "reading"]


def render_preset_worth(ablations: Iterable[tuple[FindingRecord, str]]) -> str:
    """Ablations of the start preset read the other way round: a finding for "no_ttt" (TTT_ENABLE 1->0,
    delta +0.026) says the preset's TTT is worth -0.026 on this tier. `ablations` pairs each finding with
    what it turned off; the table shows the preset's techniques, most valuable first."""

    def reading(f: FindingRecord) -> str:
        if f.status == "confirmed":
            return "hurts here: removing it won"
        if f.ci_low is not None and f.ci_low > 0:
            return "helps here: removing it is worse"
        return "no effect shown here"

    rows = sorted(ablations, key=lambda a: -(a[0].delta or 0.0))
    return _table(
        PRESET_WORTH_HEADER,
        (
            [
                f.technique,
                turned_off,
                f.tier,
                _fmt(-f.delta if f.delta is not None else None),
                "–" if f.ci_low is None or f.ci_high is None else f"[{_fmt(-f.ci_high)}, {_fmt(-f.ci_low)}]",
                str(f.n),
                reading(f),
            ]
            for f, turned_off in rows
        ),
    )


def render_dead_ends(findings: Iterable[FindingRecord]) -> str:
    """Rejected findings in the order they were found, with the judge's note."""
    rows = sorted((f for f in findings if f.status == "rejected"), key=lambda f: f.at)
    return _table(
        DEAD_ENDS_HEADER,
        (
            [
                f.technique,
                f.tier,
                _fmt(f.delta),
                _ci(f),
                _p(f.p_value),
                str(f.n),
                f.at[:10],
                f.experiment or "–",
                f.note or "",
            ]
            for f in rows
        ),
    )
