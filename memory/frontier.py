"""The leaderboard as data: snapshots, technique identifiers, legality flags and diffs.

Pure data, no network (tools/frontier_sync.py fetches). A snapshot is a dated JSON file holding
`FrontierEntry` rows; the project ships one built from memory/data/leaderboard.tsv so that the watcher
works offline. Techniques are mapped to the identifiers the battle plan and the trainer flags use
through memory/data/technique_synonyms.toml; phrases it does not know are kept and reported.

The "best stack" is an approximation worth stating: leaderboard rows list what a record changed, so
the stack is accumulated over the legal records in date order (each assumed to build on the frontier
before it), minus explicit removals ("removed TTT", "EMA replacing SWA") and minus the older member of
an exclusive choice (sp4096 -> sp8192, MLP 3x -> 4x).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from memory.knobs import read_knobs
from memory.records import FrontierEntry, utcnow
from memory.workspace import Workspace

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_TSV = DATA_DIR / "leaderboard.tsv"
SYNONYMS_FILE = DATA_DIR / "technique_synonyms.toml"

ARTIFACT_CAP_BYTES = 16_000_000
TIME_LIMIT_S = 600.0
# A bpb this far below the best legal record of its day, from an entry that touched the tokenizer or
# the byte accounting, is the #1184 pattern. Legit tokenizer records moved the frontier by < 0.01.
BYTE_ANOMALY_DROP = 0.02
# Far below the frontier with no tokenizer change: not proof of a bug, but nothing to build on unseen.
IMPLAUSIBLE_DROP = 0.06
KEEP_SNAPSHOTS = 60

# Flags. Trust (where the entry stands), then rule checks from the data available.
MERGED = "merged_record"
OPEN_CLAIM = "open_claim"
NON_RECORD = "non_record"
REJECTED = "rejected"
OVER_CAP = "over_artifact_cap"
OVER_TRAIN_TIME = "over_train_time"
OVER_EVAL_TIME = "over_eval_time"
ILLEGAL_TTT = "illegal_ttt"
INVALID_BYTES = "invalid_byte_count"
IMPLAUSIBLE = "implausible_gain"
RULE_FLAGS = (OVER_CAP, OVER_TRAIN_TIME, OVER_EVAL_TIME, ILLEGAL_TTT, INVALID_BYTES, IMPLAUSIBLE)
BLOCKING = frozenset((REJECTED, *RULE_FLAGS))
FLAG_TEXT = {
    MERGED: "merged record",
    OPEN_CLAIM: "open claim (pull request not merged)",
    NON_RECORD: "non-record submission",
    REJECTED: "rejected by the maintainers",
    OVER_CAP: f"artifact over {ARTIFACT_CAP_BYTES:,} bytes",
    OVER_TRAIN_TIME: f"training over {TIME_LIMIT_S:.0f} s",
    OVER_EVAL_TIME: f"evaluation over {TIME_LIMIT_S:.0f} s",
    ILLEGAL_TTT: "test-time training on validation tokens before scoring them (PRs #338/#398 pattern)",
    INVALID_BYTES: "byte accounting anomaly: bpb far below the frontier with a changed tokenizer (#1184 pattern)",
    IMPLAUSIBLE: "bpb implausibly far below the frontier of its day",
}


# ---------------------------------------------------------------------------------------------------
# Technique identifiers


@dataclass(frozen=True)
class SynonymTable:
    techniques: dict[str, list[re.Pattern[str]]]
    ignore: list[re.Pattern[str]]
    removal: list[re.Pattern[str]]
    exclusive: dict[str, list[str]]
    supersedes: dict[str, list[str]]
    illegal: frozenset[str]
    tokenizer_evidence: list[re.Pattern[str]]
    group_of: dict[str, str] = field(default_factory=dict)
    flags: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> the trainer env switching it on

    @property
    def ids(self) -> list[str]:
        return list(self.techniques)


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def load_synonyms(path: str | Path | None = None) -> SynonymTable:
    """Load a synonym table (default: the maintained one shipped in memory/data)."""
    if path is None:
        return _default_table()
    return _load_table(Path(path))


@lru_cache(maxsize=1)
def _default_table() -> SynonymTable:
    return _load_table(SYNONYMS_FILE)


def _load_table(path: Path) -> SynonymTable:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    exclusive = {g: list(ids) for g, ids in raw.get("exclusive", {}).items()}
    techniques = {tid: _compile(pats) for tid, pats in raw["techniques"].items()}
    known = set(techniques)
    referenced = [t for ids in exclusive.values() for t in ids]
    referenced += [t for k, ids in raw.get("supersedes", {}).items() for t in [k, *ids]]
    referenced += raw.get("illegal", {}).get("ids", [])
    referenced += list(raw.get("flags", {}))
    if missing := sorted(set(referenced) - known):
        raise ValueError(f"{path}: ids referenced but not defined under [techniques]: {missing}")
    return SynonymTable(
        techniques=techniques,
        ignore=_compile(raw.get("ignore", {}).get("patterns", [])),
        removal=_compile(raw.get("removal", {}).get("patterns", [])),
        exclusive=exclusive,
        supersedes={k: list(v) for k, v in raw.get("supersedes", {}).items()},
        illegal=frozenset(raw.get("illegal", {}).get("ids", [])),
        tokenizer_evidence=_compile(raw.get("evidence", {}).get("tokenizer_change", [])),
        group_of={t: g for g, ids in exclusive.items() for t in ids},
        flags={tid: {k: str(v) for k, v in env.items()} for tid, env in raw.get("flags", {}).items()},
    )


class TechniqueMap(BaseModel):
    techniques: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    unknown: list[str] = Field(default_factory=list)


_PART_SPLIT = re.compile(r"\s\+\s|,\s|\s[—–|]\s|\s-\s")


def map_techniques(text: str, table: SynonymTable | None = None) -> TechniqueMap:
    """Map a leaderboard description to technique ids; unknown phrases are returned as text.

    Cells are split on ';'. A phrase with a removal word ("removed TTT, QAT") is read whole: ids named
    after the word are removals. Other phrases are split further on ' + ' and ', ' so that each part is
    either mapped, recognised as a no-id phrase ([ignore]), or reported unknown.
    """
    table = table or load_synonyms()
    added: list[str] = []
    removed: list[str] = []
    unknown: list[str] = []
    for phrase in text.split(";"):
        phrase = phrase.strip()
        if not phrase:
            continue
        cut = min((m.start() for p in table.removal if (m := p.search(phrase))), default=None)
        parts = [phrase] if cut is not None else [p.strip() for p in _PART_SPLIT.split(phrase) if p.strip()]
        for part in parts:
            hits: dict[str, int] = {}
            for tid, pats in table.techniques.items():
                starts = [m.start() for p in pats if (m := p.search(part))]
                if starts:
                    hits[tid] = min(starts)
            for key, suppressed in table.supersedes.items():
                if key in hits:
                    for s in suppressed:
                        hits.pop(s, None)
            if not hits:
                if not any(p.search(part) for p in table.ignore):
                    unknown.append(part)
                continue
            for tid, pos in sorted(hits.items(), key=lambda kv: kv[1]):
                target = removed if cut is not None and pos > cut else added
                if tid not in target:
                    target.append(tid)
    return TechniqueMap(techniques=added, removed=[t for t in removed if t not in added], unknown=unknown)


# ---------------------------------------------------------------------------------------------------
# Flags


def _status_flags(status: str) -> list[str]:
    s = status.lower()
    if s.startswith("rejected") or s == "closed":
        out = [REJECTED]
        if "bytes" in s:
            out.append(INVALID_BYTES)
        return out
    if s in ("record", "merged"):
        return [MERGED]
    if s == "open-claim":
        return [OPEN_CLAIM]
    if s == "non-record":
        return [NON_RECORD]
    return []


def is_legal_record(e: FrontierEntry) -> bool:
    return MERGED in e.flags and not BLOCKING.intersection(e.flags)


def _day(date: str) -> str:
    return (date or "")[:10]


def annotate(entries: list[FrontierEntry], table: SynonymTable | None = None) -> list[FrontierEntry]:
    """Recompute technique ids and every flag from the entries' data (deterministic, idempotent)."""
    table = table or load_synonyms()
    first: list[FrontierEntry] = []
    for e in entries:
        update: dict = {}
        if e.raw_techniques:
            m = map_techniques(e.raw_techniques, table)
            update = {
                "techniques": m.techniques,
                "removed_techniques": m.removed,
                "unknown_phrases": m.unknown,
            }
        flags = _status_flags(e.status)
        techniques = update.get("techniques", e.techniques)
        if e.bytes_total is not None and e.bytes_total > ARTIFACT_CAP_BYTES:
            flags.append(OVER_CAP)
        if e.train_time_s is not None and e.train_time_s > TIME_LIMIT_S:
            flags.append(OVER_TRAIN_TIME)
        if e.eval_time_s is not None and e.eval_time_s > TIME_LIMIT_S:
            flags.append(OVER_EVAL_TIME)
        if table.illegal.intersection(techniques):
            flags.append(ILLEGAL_TTT)
        first.append(e.model_copy(update={**update, "flags": flags}))

    # The byte-accounting check compares with the best legal record of the entry's day, which the first
    # pass settled (rule flags other than this one never depend on other entries).
    # Non-record runs (unlimited compute) are expected to beat the 10-minute frontier: not checked.
    legal = [e for e in first if is_legal_record(e)]
    out = []
    for e in first:
        before = [r.val_bpb for r in legal if r is not e and _day(r.date) <= _day(e.date)]
        flags = list(e.flags)
        exempt = NON_RECORD in flags or OVER_TRAIN_TIME in flags
        if before and not exempt and e.val_bpb < min(before):
            drop = min(before) - e.val_bpb
            text = f"{e.raw_techniques} {e.status}"
            tokenizer = any(p.search(text) for p in table.tokenizer_evidence) or "bytes" in e.status
            if tokenizer and drop > BYTE_ANOMALY_DROP and INVALID_BYTES not in flags:
                flags.append(INVALID_BYTES)
            elif not tokenizer and drop > IMPLAUSIBLE_DROP:
                flags.append(IMPLAUSIBLE)
        out.append(e.model_copy(update={"flags": flags}))
    return out


def blocking_flags(e: FrontierEntry) -> list[str]:
    return [f for f in e.flags if f in BLOCKING]


# ---------------------------------------------------------------------------------------------------
# Snapshots


class FrontierSnapshot(BaseModel):
    schema_version: int = 1
    taken_at: str = Field(default_factory=utcnow)
    source: str = "shipped"  # "shipped" | "github:owner/repo"
    note: str = ""
    entries: list[FrontierEntry] = Field(default_factory=list)


def entries_from_tsv(path: str | Path = SHIPPED_TSV) -> list[FrontierEntry]:
    """Rows of a leaderboard.tsv (date, val_bpb, pr, author, status, techniques)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        FrontierEntry(
            date=r["date"].strip(),
            val_bpb=float(r["val_bpb"]),
            pr=r["pr"].strip(),
            author=r["author"].strip(),
            status=r["status"].strip(),
            raw_techniques=r["techniques"].strip(),
            source="snapshot",
        )
        for r in rows
    ]


@lru_cache(maxsize=1)
def _shipped_json() -> str:
    entries = annotate(entries_from_tsv(SHIPPED_TSV))
    as_of = max(_day(e.date) for e in entries)
    snap = FrontierSnapshot(
        taken_at=f"{as_of}T00:00:00+00:00",
        source="shipped",
        note="built from memory/data/leaderboard.tsv",
        entries=entries,
    )
    return snap.model_dump_json()


def shipped_snapshot() -> FrontierSnapshot:
    """The snapshot the project ships, dated by its newest row."""
    return FrontierSnapshot.model_validate_json(_shipped_json())


def snapshot_name(snap: FrontierSnapshot) -> str:
    stamp = _parse_time(snap.taken_at).strftime("%Y%m%dT%H%M%SZ")
    return f"frontier-{stamp}"


def save_snapshot(directory: str | Path, snap: FrontierSnapshot) -> Path:
    """Write a dated snapshot (never overwriting one), then prune the oldest beyond KEEP_SNAPSHOTS."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    base = snapshot_name(snap)
    # Same-second snapshots get a rising suffix (above any pruned one's, so sort order stays true).
    taken = [p.stem[len(base) :] for p in d.glob(f"{base}*.json")]
    suffixes = [int(t[1:]) for t in taken if t[1:].isdigit()] + [0 for t in taken if t == ""]
    path = d / (f"{base}-{max(suffixes) + 1}.json" if suffixes else f"{base}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(snap.model_dump_json(indent=1), encoding="utf-8")
    tmp.replace(path)
    for old in list_snapshots(d)[:-KEEP_SNAPSHOTS]:
        old.unlink(missing_ok=True)
    return path


def list_snapshots(directory: str | Path) -> list[Path]:
    """Stored snapshot files, oldest first (names sort by time)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(d.glob("frontier-*.json"), key=lambda p: (p.stem.split("-")[1], len(p.stem), p.stem))


def load_snapshot(path: str | Path) -> FrontierSnapshot:
    return FrontierSnapshot.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _load_ok(path: Path) -> FrontierSnapshot | None:
    try:
        return load_snapshot(path)
    except (OSError, ValueError, ValidationError) as e:
        log.warning("skipping unreadable frontier snapshot %s: %s", path.name, str(e)[:200])
        return None


def load_latest(directory: str | Path) -> tuple[FrontierSnapshot, Path] | None:
    for path in reversed(list_snapshots(directory)):
        if (snap := _load_ok(path)) is not None:
            return snap, path
    return None


def _parse_time(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def age_text(snap: FrontierSnapshot, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    days = (now - _parse_time(snap.taken_at)).total_seconds() / 86400
    age = f"{days * 24:.0f} h" if days < 2 else f"{days:.0f} days"
    what = "shipped snapshot (offline data)" if snap.source == "shipped" else f"snapshot of {snap.source}"
    return f"{what} taken {snap.taken_at[:16].replace('T', ' ')} UTC, {age} old"


@dataclass
class Current:
    snapshot: FrontierSnapshot
    name: str
    path: Path | None  # None: the shipped snapshot (no stored one)


def current(directory: str | Path) -> Current:
    """The latest stored snapshot, or the shipped one when none is stored (the offline fallback)."""
    if (found := load_latest(directory)) is not None:
        snap, path = found
        return Current(snap, path.stem, path)
    return Current(shipped_snapshot(), "shipped", None)


SEEN_FILE = "seen.json"


def mark_seen(directory: str | Path, name: str | None = None) -> str:
    """Record which snapshot a session has acted on; the next `--diff` starts from it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    name = name or current(d).name
    (d / SEEN_FILE).write_text(json.dumps({"snapshot": name, "at": utcnow()}), encoding="utf-8")
    return name


def _base_for_diff(directory: Path, cur: Current) -> tuple[FrontierSnapshot | None, str | None]:
    """What the last session saw: the marked snapshot, else the one before the latest, else shipped."""
    seen = directory / SEEN_FILE
    if seen.exists():
        try:
            name = json.loads(seen.read_text(encoding="utf-8"))["snapshot"]
        except (ValueError, KeyError, TypeError):
            name = None
        if name == "shipped":
            return shipped_snapshot(), "shipped"
        if name and (directory / f"{name}.json").exists() and (snap := _load_ok(directory / f"{name}.json")):
            return snap, name
    stored = list_snapshots(directory)
    if cur.path is None:
        return cur.snapshot, cur.name
    older = [p for p in stored if p != cur.path]
    for p in reversed(older):
        if (snap := _load_ok(p)) is not None:
            return snap, p.stem
    return shipped_snapshot(), "shipped"


# ---------------------------------------------------------------------------------------------------
# Merging fetched entries into a snapshot


def _num_pr(pr: str) -> bool:
    return pr.lstrip("#").isdigit()


def _norm_author(a: str) -> str:
    return re.sub(r"[^a-z0-9]", "", a.lower())


def same_entry(a: FrontierEntry, b: FrontierEntry) -> bool:
    """Two sources describing one submission: same PR, or same author and score, or same day and score."""
    if a.pr and a.pr == b.pr:
        return True
    if _num_pr(a.pr) and _num_pr(b.pr):
        return False
    close = abs(a.val_bpb - b.val_bpb)
    if _norm_author(a.author) and _norm_author(a.author) == _norm_author(b.author) and close <= 6e-4:
        return True
    try:
        days = abs((dt.date.fromisoformat(_day(a.date)) - dt.date.fromisoformat(_day(b.date))).days)
    except ValueError:
        return False
    return close <= 1e-4 and days <= 1


_STATUS_RANK = {"merged": 3, "record": 3, "non-record": 2, "open-claim": 1, "rejected": 1, "closed": 1}


def _merge_pair(old: FrontierEntry, new: FrontierEntry) -> FrontierEntry:
    # A curated rejection ("rejected-illegal") is more specific than "closed"/"rejected"/"open";
    # a merge seen on GitHub beats an open claim.
    if old.status.startswith("rejected-") and new.status not in ("merged", "record"):
        status = old.status
    elif old.status in ("merged", "record") and new.status in ("merged", "record"):
        status = old.status
    elif _STATUS_RANK.get(new.status, 0) >= _STATUS_RANK.get(old.status, 0) or old.status == "open-claim":
        status = new.status
    else:
        status = old.status
    official = any(s in new.source for s in ("readme", "records"))
    sources = list(dict.fromkeys([*old.source.split("+"), *new.source.split("+")]))
    return old.model_copy(
        update={
            "pr": old.pr if _num_pr(old.pr) or not _num_pr(new.pr) else new.pr,
            "status": status,
            "val_bpb": new.val_bpb if official else old.val_bpb,
            "author": old.author or new.author,
            "date": old.date or new.date,
            "raw_techniques": old.raw_techniques or new.raw_techniques,
            "bytes_total": new.bytes_total if new.bytes_total is not None else old.bytes_total,
            "train_time_s": new.train_time_s if new.train_time_s is not None else old.train_time_s,
            "eval_time_s": new.eval_time_s if new.eval_time_s is not None else old.eval_time_s,
            "source": "+".join(sources),
        }
    )


def merge_entries(
    old: list[FrontierEntry], fetched: list[FrontierEntry], table: SynonymTable | None = None
) -> list[FrontierEntry]:
    """Fold freshly fetched entries into stored ones (nothing stored is dropped), then re-annotate."""
    merged = list(old)
    for f in fetched:
        i = _closest(f, merged)
        if i is None:
            merged.append(f)
        else:
            merged[i] = _merge_pair(merged[i], f)
    return annotate(merged, table)


def _closest(e: FrontierEntry, pool: list[FrontierEntry]) -> int | None:
    """Index of the entry in `pool` describing the same submission (closest score: a PR can hold two rows)."""
    hits = [i for i, o in enumerate(pool) if same_entry(o, e)]
    return min(hits, key=lambda i: abs(pool[i].val_bpb - e.val_bpb)) if hits else None


# ---------------------------------------------------------------------------------------------------
# Stack and diff


@dataclass
class StackState:
    stack: dict[str, str]  # id -> pr of the record that (re)introduced it
    dropped: dict[str, str]  # id -> pr of the record that removed or superseded it, not re-added since


def best_legal(entries: list[FrontierEntry]) -> FrontierEntry | None:
    legal = [e for e in entries if is_legal_record(e)]
    return min(legal, key=lambda e: (e.val_bpb, _day(e.date))) if legal else None


def stack_state(entries: list[FrontierEntry], table: SynonymTable | None = None) -> StackState:
    table = table or load_synonyms()
    stack: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for e in sorted((e for e in entries if is_legal_record(e)), key=lambda e: (_day(e.date), -e.val_bpb)):
        for t in e.removed_techniques:
            stack.pop(t, None)
            dropped[t] = e.pr
        for t in e.techniques:
            group = table.group_of.get(t)
            rivals = [r for r in table.exclusive.get(group, []) if r != t] if group else []
            for r in [*rivals, *table.supersedes.get(t, [])]:
                if stack.pop(r, None) is not None:
                    dropped[r] = e.pr
            stack[t] = e.pr
            dropped.pop(t, None)
    return StackState(stack, dropped)


class EntryChange(BaseModel):
    pr: str
    what: str


class TechniqueNote(BaseModel):
    technique: str
    reason: str
    by: str | None = None  # the pr that dropped or superseded it


class FrontierDiff(BaseModel):
    base: str | None = None
    base_taken_at: str | None = None
    current: str
    current_taken_at: str
    current_source: str
    age: str
    new_entries: list[FrontierEntry] = Field(default_factory=list)
    changes: list[EntryChange] = Field(default_factory=list)
    best: FrontierEntry | None = None
    previous_best: FrontierEntry | None = None
    new_best: bool = False
    stack: list[str] = Field(default_factory=list)
    introduced_by: dict[str, str] = Field(default_factory=dict)  # stack id -> the pr that (re)introduced it
    entered: list[str] = Field(default_factory=list)
    left: list[str] = Field(default_factory=list)
    dropped: list[TechniqueNote] = Field(default_factory=list)  # frontier-wide, not re-added since
    obsolete: list[TechniqueNote] = Field(default_factory=list)  # the queue's ids the frontier left behind
    queue_unknown: list[str] = Field(default_factory=list)  # queue ids the synonym table does not define
    rule_flagged: list[FrontierEntry] = Field(default_factory=list)  # entries failing a rule check
    open_claims: list[FrontierEntry] = Field(default_factory=list)  # unmerged claims below the best
    unknown_phrases: list[str] = Field(default_factory=list)
    ready: list[str] = Field(default_factory=list)  # queue lines for new techniques the trainer expresses


def diff(
    base: FrontierSnapshot | None,
    cur: FrontierSnapshot,
    queue: list[str] | None = None,
    *,
    base_name: str | None = None,
    current_name: str = "current",
    now: dt.datetime | None = None,
    table: SynonymTable | None = None,
) -> FrontierDiff:
    """What changed from `base` (what the last session saw) to `cur`, and what it means for the queue."""
    table = table or load_synonyms()
    old_entries = base.entries if base else []
    new_entries, changes = [], []
    for e in cur.entries:
        i = _closest(e, old_entries)
        o = old_entries[i] if i is not None else None
        if o is None:
            new_entries.append(e)
            continue
        if o.status != e.status:
            changes.append(EntryChange(pr=e.pr, what=f"status {o.status} -> {e.status}"))
        if gained := [f for f in e.flags if f not in o.flags]:
            changes.append(EntryChange(pr=e.pr, what="new flags: " + ", ".join(gained)))
        if abs(o.val_bpb - e.val_bpb) > 5e-5:
            changes.append(EntryChange(pr=e.pr, what=f"val_bpb {o.val_bpb:.4f} -> {e.val_bpb:.4f}"))

    best, prev_best = best_legal(cur.entries), best_legal(old_entries) if base else None
    now_state = stack_state(cur.entries, table)
    old_stack = stack_state(old_entries, table).stack if base else now_state.stack
    stack = sorted(now_state.stack)

    obsolete, unknown_q = [], []
    for tid in dict.fromkeys(t.strip().lower() for t in (queue or []) if t.strip()):
        if tid not in table.techniques:
            unknown_q.append(tid)
        elif tid in table.illegal:
            obsolete.append(TechniqueNote(technique=tid, reason="illegal under the rules"))
        elif tid in now_state.stack:
            continue
        elif tid in now_state.dropped:
            by = now_state.dropped[tid]
            group = table.group_of.get(tid)
            rival = (
                next((r for r in table.exclusive.get(group, []) if r in now_state.stack), None)
                if group
                else None
            )
            why = (
                f"superseded by {rival} ({_pr(by)})" if rival else f"dropped by {_pr(by)}, not re-added since"
            )
            obsolete.append(TechniqueNote(technique=tid, reason=why, by=by))

    best_bpb = best.val_bpb if best else None
    open_claims = sorted(
        (
            e
            for e in cur.entries
            if OPEN_CLAIM in e.flags
            and not BLOCKING.intersection(e.flags)
            and (best_bpb is None or e.val_bpb < best_bpb)
        ),
        key=lambda e: e.val_bpb,
    )
    unknown = sorted({p for e in cur.entries for p in e.unknown_phrases})
    return FrontierDiff(
        base=base_name if base else None,
        base_taken_at=base.taken_at if base else None,
        current=current_name,
        current_taken_at=cur.taken_at,
        current_source=cur.source,
        age=age_text(cur, now),
        new_entries=sorted(new_entries, key=lambda e: e.val_bpb),
        changes=changes,
        best=best,
        previous_best=prev_best,
        new_best=bool(base and best and (prev_best is None or not same_entry(best, prev_best))),
        stack=stack,
        introduced_by=dict(now_state.stack),
        entered=sorted(set(now_state.stack) - set(old_stack)),
        left=sorted(set(old_stack) - set(now_state.stack)),
        dropped=[
            TechniqueNote(technique=t, reason="dropped by the frontier", by=pr)
            for t, pr in sorted(now_state.dropped.items())
        ],
        obsolete=obsolete,
        queue_unknown=unknown_q,
        rule_flagged=sorted(
            (e for e in cur.entries if set(RULE_FLAGS).intersection(e.flags)), key=lambda e: e.val_bpb
        ),
        open_claims=open_claims,
        unknown_phrases=unknown,
    )


def ready_queue_lines(
    d: FrontierDiff,
    script_text: str,
    queue: Iterable[str] = (),
    covered_env: Mapping[str, str] | None = None,
    table: SynonymTable | None = None,
) -> list[str]:
    """Battle-plan queue lines, ready to accept, for techniques on the leaderboard that are new to this plan
    and that the trainer can already express: in the best stack, not named by any queue line (a `[-]` line
    declines one for good), none of its flags already set by `covered_env` (the tier's and the starting
    preset's env: a preset that sets EMA_DECAY=0.9965 has EMA, tuned its own way), and with every flag of the
    [flags] table a knob of this script. As the frontier moves, what enters the stack shows up here."""
    table = table or load_synonyms()
    knobs = {k.name for k in read_knobs(script_text)}
    named = {t.strip().lower() for t in queue}
    covered = dict(covered_env or {})
    lines = []
    for tid in d.stack:
        env = table.flags.get(tid)
        if tid in named or tid in table.illegal or not env or not set(env) <= knobs:
            continue
        if any(k in covered for k in env):
            continue
        flags = " ".join(f"{k}={v}" for k, v in env.items())
        since = d.introduced_by.get(tid, "")
        lines.append(
            f"- [ ] {tid}: {flags} — new on the leaderboard: in the best record's stack since "
            f"{'PR ' + _pr(since) if since else 'an unnumbered entry'}; the trainer has the flags"
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# Text for people, the battle plan and the LLM


def _pr(pr: str) -> str:
    return f"#{pr}" if _num_pr(pr) else pr


def _short(e: FrontierEntry) -> str:
    return f"{e.val_bpb:.4f} ({_pr(e.pr)}, {e.author}, {_day(e.date)})"


def _ids(ids: list[str]) -> str:
    return ", ".join(ids) if ids else "none"


def _closed_only(e: FrontierEntry) -> bool:
    """A pull request closed unmerged with no rule failure: usually superseded, rarely worth a row."""
    return e.flags == [REJECTED] and e.source == "pr"


def format_table(
    snap: FrontierSnapshot,
    now: dt.datetime | None = None,
    limit: int | None = None,
    show_all: bool = False,
    table: SynonymTable | None = None,
) -> str:
    """The frontier as a text table: legal records first by score, then everything flagged."""
    best = best_legal(snap.entries)
    state = stack_state(snap.entries, table)
    lines = [
        f"Frontier: {age_text(snap, now)}; {len(snap.entries)} entries",
        f"Best legal record: {_short(best) if best else 'none'}",
        f"Best stack ({len(state.stack)}): {_ids(sorted(state.stack))}",
        "",
    ]
    rows = sorted(snap.entries, key=lambda e: (not is_legal_record(e), e.val_bpb))
    hidden = 0 if show_all else sum(map(_closed_only, rows))
    rows = rows if show_all else [e for e in rows if not _closed_only(e)]
    if limit is not None:
        hidden += max(0, len(rows) - limit)
        rows = rows[:limit]
    lines.append(f"{'val_bpb':>7}  {'date':10}  {'pr':>12}  {'author':18}  {'flags':34}  techniques")
    for e in rows:
        mark = "!" if BLOCKING.intersection(e.flags) else " "
        pr = _pr(e.pr).rsplit("/", 1)[-1]
        pr = pr if len(pr) <= 12 else pr[:11] + "…"
        lines.append(
            f"{e.val_bpb:7.4f}{mark} {_day(e.date):10}  {pr:>12}  {e.author[:18]:18}  "
            f"{','.join(e.flags)[:34]:34}  {_ids(e.techniques)}"
            + (f"  [removed: {_ids(e.removed_techniques)}]" if e.removed_techniques else "")
        )
    if hidden:
        lines.append(
            f"({hidden} more rows hidden: closed pull requests without a rule failure, or past the limit)"
        )
    flagged = [e for e in snap.entries if set(RULE_FLAGS).intersection(e.flags)]
    if flagged:
        lines += ["", "Rule checks ('!' rows are not built on without saying so):"]
        for e in sorted(flagged, key=lambda e: e.val_bpb):
            why = "; ".join(FLAG_TEXT[f] for f in e.flags if f in RULE_FLAGS)
            lines.append(f"  {_pr(e.pr)} {e.val_bpb:.4f}: {why}")
    unknown = sorted({p for e in snap.entries for p in e.unknown_phrases})
    if unknown:
        lines += ["", f"Unknown phrases (extend memory/data/technique_synonyms.toml): {'; '.join(unknown)}"]
    return "\n".join(lines)


def _change_lines(d: FrontierDiff) -> list[str]:
    if d.base is None:
        return ["No earlier snapshot to compare with."]
    if not (d.new_entries or d.changes or d.entered or d.left):
        return [f"No change since {d.base}."]
    out = [f"Since {d.base}: {len(d.new_entries)} new entries, {len(d.changes)} changed."]
    if d.new_best and d.best:
        was = f" (was {_short(d.previous_best)})" if d.previous_best else ""
        out.append(f"New best legal record: {_short(d.best)}{was}.")
    if d.entered or d.left:
        out.append(f"Best stack: entered {_ids(d.entered)}; left {_ids(d.left)}.")
    return out


def _entry_line(e: FrontierEntry) -> str:
    flags = blocking_flags(e) or [f for f in e.flags if f in (OPEN_CLAIM, NON_RECORD)]
    tag = f" [{', '.join(flags)}]" if flags else ""
    return f"{_short(e)}{tag}: {_ids(e.techniques)}"


def frontier_block_markdown(d: FrontierDiff, max_items: int = 8) -> str:
    """The battle plan's frontier block (markdown, no heading: the plan owns its headings)."""
    lines = [f"_{d.age}_", ""]
    lines.append(f"- **Best legal record:** {_short(d.best) if d.best else 'none'}")
    lines.append(f"- **Best stack:** {_ids(d.stack)}")
    lines += [f"- {x}" for x in _change_lines(d)]
    for e in d.new_entries[:max_items]:
        lines.append(f"  - new: {_entry_line(e)}")
    for c in d.changes[:max_items]:
        lines.append(f"  - {_pr(c.pr)}: {c.what}")
    if d.obsolete:
        lines.append(
            "- **Obsolete in our queue:** " + "; ".join(f"{n.technique} ({n.reason})" for n in d.obsolete)
        )
    if d.dropped:
        lines.append(
            "- **Dropped by the frontier:** "
            + ", ".join(f"{n.technique} ({_pr(n.by or '?')})" for n in d.dropped)
        )
    if d.open_claims:
        lines.append(
            "- **Open claims below the best (unverified):** "
            + "; ".join(_short(e) for e in d.open_claims[:max_items])
        )
    if d.rule_flagged:
        lines.append("- **Flagged (never build on these without saying so):**")
        for e in d.rule_flagged[:max_items]:
            lines.append(
                f"  - {_pr(e.pr)} {e.val_bpb:.4f}: "
                + "; ".join(FLAG_TEXT[f] for f in e.flags if f in RULE_FLAGS)
            )
    if d.unknown_phrases:
        lines.append(f"- Unknown phrases: {'; '.join(d.unknown_phrases[:max_items])}")
    if d.ready:
        lines += [
            "- **Ready to queue** (new on the leaderboard, and the trainer has the flags; copy a line "
            "into `## Queue` to accept it):",
            "",
            "```",
            *d.ready,
            "```",
        ]
    return "\n".join(lines)


def frontier_digest(d: FrontierDiff, max_chars: int = 2000) -> str:
    """The frontier for the LLM prompt: most decision-relevant lines first, cut at `max_chars`."""
    lines = [
        f"Frontier ({d.age}).",
        f"Best legal record: {_short(d.best) if d.best else 'none'}; stack: {_ids(d.stack)}.",
    ]
    lines += _change_lines(d)
    if d.obsolete:
        lines.append(
            "Obsolete in the queue: " + "; ".join(f"{n.technique} ({n.reason})" for n in d.obsolete) + "."
        )
    if d.rule_flagged:
        lines.append(
            "Flagged entries (do not build on them without saying so): "
            + "; ".join(
                f"{_pr(e.pr)} {e.val_bpb:.4f} {'/'.join(f for f in e.flags if f in RULE_FLAGS)}"
                for e in d.rule_flagged
            )
            + "."
        )
    lines += [f"New: {_entry_line(e)}" for e in d.new_entries]
    lines += [f"Changed: {_pr(c.pr)} {c.what}" for c in d.changes]
    if d.dropped:
        lines.append("Dropped by the frontier: " + ", ".join(n.technique for n in d.dropped) + ".")
    if d.open_claims:
        lines.append("Open claims (unverified): " + "; ".join(_short(e) for e in d.open_claims) + ".")
    if d.ready:
        lines.append(
            "New techniques the trainer can express (not in the queue): "
            + "; ".join(line.removeprefix("- [ ] ").split(" — ")[0] for line in d.ready)
            + "."
        )
    out: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > max_chars:
            rest = f"... ({len(lines) - len(out)} more lines)"
            if used + len(rest) <= max_chars:
                out.append(rest)
            elif not out:
                out.append(line[: max(0, max_chars - 1)] + "…" if max_chars > 1 else "")
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)[:max_chars]


# ---------------------------------------------------------------------------------------------------
# What the CLI and the tools call


def frontier_dir(ws_root: str | Path) -> Path:
    return Workspace.at(ws_root).frontier_dir


def frontier_diff_for(
    ws_root: str | Path,
    queue: list[str] | None = None,
    now: dt.datetime | None = None,
    *,
    script_text: str | None = None,
    covered_env: Mapping[str, str] | None = None,
) -> FrontierDiff:
    """The diff since the last session's snapshot; with the trainer's text, also the ready queue lines."""
    d = frontier_dir(ws_root)
    cur = current(d)
    base, base_name = _base_for_diff(d, cur)
    out = diff(base, cur.snapshot, queue, base_name=base_name, current_name=cur.name, now=now)
    if script_text is not None:
        out.ready = ready_queue_lines(out, script_text, queue or [], covered_env)
    return out


def frontier_show(
    ws_root: str | Path, now: dt.datetime | None = None, show_all: bool = False, limit: int | None = None
) -> str:
    """`golf frontier`: the current frontier as a table, with its flags and its age."""
    return format_table(current(frontier_dir(ws_root)).snapshot, now, limit=limit, show_all=show_all)


def frontier_diff_text(
    ws_root: str | Path, queue: list[str] | None = None, now: dt.datetime | None = None
) -> str:
    """`golf frontier --diff`: what changed since the snapshot the last session saw."""
    return frontier_block_markdown(frontier_diff_for(ws_root, queue, now), max_items=50)
