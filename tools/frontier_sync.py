"""Sync the frontier from the challenge repository on GitHub, and the `frontier_diff` tool.

Sources (REST API, owner/repo configurable): the README leaderboard tables, the
`records/<track>/<folder>/submission.json` files (found through one recursive tree listing and fetched
as blobs, cached by content hash so an unchanged record is never fetched twice), and pull requests
whose titles claim a record. Polite by construction: ETag conditional requests cached on disk, no
retry on a rate limit (the sync stops, says when the limit resets, and keeps the old snapshot),
tenacity retries only on transient errors. `GITHUB_TOKEN` is optional and never logged or stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from memory.frontier import (
    FrontierSnapshot,
    age_text,
    annotate,
    current,
    frontier_diff_for,
    frontier_digest,
    merge_entries,
    save_snapshot,
)
from memory.frontier import frontier_diff_text as frontier_diff_text
from memory.frontier import frontier_show as frontier_show
from memory.records import FrontierEntry, utcnow
from memory.workspace import Workspace
from tools.registry import tool

log = logging.getLogger(__name__)

DEFAULT_OWNER = "openai"
DEFAULT_REPO = "parameter-golf"
DEFAULT_API_URL = "https://api.github.com"
USER_AGENT = "pgolf-frontier-watcher"
SUBMISSION_PATH = re.compile(r"^records/([^/]+)/([^/]+)/submission\.json$")


class GitHubError(RuntimeError):
    """A non-transient failure for one request (404, 401, a malformed answer)."""


class RateLimited(GitHubError):
    """GitHub said stop (403/429 with no requests left or a retry-after): never retried."""


class _Transient(Exception):
    pass


def _rate_limit_message(r: httpx.Response) -> str:
    reset = r.headers.get("x-ratelimit-reset")
    after = r.headers.get("retry-after")
    if reset and reset.isdigit():
        when = dt.datetime.fromtimestamp(int(reset), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"GitHub rate limit reached (HTTP {r.status_code}); it resets at {when}"
    if after:
        return f"GitHub rate limit reached (HTTP {r.status_code}); retry after {after} s"
    return f"GitHub rate limit reached (HTTP {r.status_code})"


class GitHubClient:
    """A small REST client: conditional requests with an on-disk ETag cache, transient retries."""

    def __init__(
        self,
        owner: str,
        repo: str,
        *,
        base_url: str | None = None,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 20.0,
        retries: int = 3,
        retry_wait: float = 1.0,
    ):
        self.owner, self.repo = owner, repo
        self.base_url = (base_url or os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": USER_AGENT,
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.authenticated = bool(token)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, follow_redirects=True
        )
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.retries, self.retry_wait = retries, retry_wait
        self.requests = 0
        self.not_modified = 0

    def __repr__(self) -> str:  # no headers: the token must not reach a log through a repr
        return (
            f"GitHubClient({self.owner}/{self.repo} at {self.base_url}, authenticated={self.authenticated})"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prefix(self) -> str:
        return f"/repos/{self.owner}/{self.repo}"

    def _cache_file(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def get(self, path: str, params: dict[str, Any] | None = None, accept: str | None = None) -> str:
        """GET a path under the API; returns the body text (from the cache on a 304)."""
        key = json.dumps([path, sorted((params or {}).items()), accept])
        cache_file = self._cache_file(key)
        cached = None
        if cache_file is not None and cache_file.exists():
            try:
                cached = json.loads(cache_file.read_text(encoding="utf-8"))
            except ValueError:
                cached = None
        headers = {"Accept": accept} if accept else {}
        if cached and cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]

        def once() -> httpx.Response:
            self.requests += 1
            r = self._http.get(path, params=params, headers=headers)
            if r.status_code in (403, 429) and (
                r.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in r.headers
            ):
                raise RateLimited(_rate_limit_message(r))
            if r.status_code >= 500:
                raise _Transient(f"HTTP {r.status_code} from {path}")
            return r

        retrying = Retrying(
            stop=stop_after_attempt(self.retries),
            reraise=True,
            wait=wait_exponential(multiplier=self.retry_wait, max=30),
            retry=retry_if_exception_type((_Transient, httpx.TransportError)),
        )
        r = retrying(once)
        if r.status_code == 304 and cached is not None:
            self.not_modified += 1
            return cached["body"]
        if r.status_code != 200:
            raise GitHubError(f"HTTP {r.status_code} for {path}")
        if cache_file is not None and r.headers.get("etag"):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({"etag": r.headers["etag"], "body": r.text}), encoding="utf-8")
        return r.text

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        text = self.get(path, params)
        try:
            return json.loads(text)
        except ValueError as e:
            raise GitHubError(f"{path}: not JSON ({e})") from e


# ---------------------------------------------------------------------------------------------------
# Parsing: README tables, submission.json, pull request titles


class ReadmeRow(BaseModel):
    run: str
    score: float
    author: str
    summary: str = ""
    date: str = ""
    folder: str | None = None  # records/<track>/<folder>, from the info link
    non_record: bool = False


_SCORE = re.compile(r"\d+\.\d+")
_INFO = re.compile(r"\((?:\./)?(records/[^/)]+/[^/)]+)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_readme_leaderboard(text: str) -> list[ReadmeRow]:
    """Rows of every markdown table with Run and Score columns; a table under a heading that says
    non-record holds non-record runs."""
    rows: list[ReadmeRow] = []
    lines = text.splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            heading = line.lower()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{2,}", lines[i + 1].strip()):
            header = [c.lower() for c in _cells(line)]
            i += 2
            if not {"run", "score"} <= set(header):
                continue
            col = {name: header.index(name) for name in header}
            non_record = bool(re.search(r"non[- ]?record", heading))
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = _cells(lines[i])
                i += 1
                if len(cells) < len(header):
                    continue
                m = _SCORE.search(cells[col["score"]])
                if not m:
                    continue
                cell = {name: re.sub(r"\*\*|__", "", cells[j]) for name, j in col.items()}
                info = _INFO.search(cell.get("info", "")) or _INFO.search(lines[i - 1])
                rows.append(
                    ReadmeRow(
                        run=cell["run"],
                        score=float(m.group()),
                        author=cell.get("author", ""),
                        summary=cell.get("summary", ""),
                        date=cell.get("date", "")[:10],
                        folder=info.group(1) if info else None,
                        non_record=non_record,
                    )
                )
            continue
        i += 1
    return rows


_TRAIN_KEYS = (
    "train_time_s",
    "training_time_seconds",
    "train_seconds",
    "wallclock_seconds",
    "train_time_seconds",
)
_EVAL_KEYS = ("eval_time_s", "eval_seconds", "eval_time_seconds", "evaluation_seconds")


def _first_number(d: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def parse_submission(text: str, path: str) -> tuple[FrontierEntry, str | None]:
    """One records/<track>/<folder>/submission.json -> (entry, github_id). Raises ValueError if unusable."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("submission.json is not a JSON object")
    bpb = data.get("val_bpb")
    if isinstance(bpb, str):
        bpb = float(bpb)
    if not isinstance(bpb, int | float) or isinstance(bpb, bool) or not 0.0 < bpb < 10.0:
        raise ValueError(f"val_bpb missing or not a number: {data.get('val_bpb')!r}")
    m = SUBMISSION_PATH.match(path)
    track = m.group(1) if m else ""
    bytes_total = data.get("bytes_total")
    entry = FrontierEntry(
        date=str(data.get("date") or "")[:10],
        val_bpb=float(bpb),
        pr=path.rsplit("/", 1)[0],
        author=str(data.get("author") or data.get("github_id") or ""),
        status="non-record" if "non_record" in track or "non-record" in track else "record",
        raw_techniques=str(data.get("name") or ""),
        source="records",
        bytes_total=int(bytes_total) if isinstance(bytes_total, int | float) and bytes_total > 0 else None,
        train_time_s=_first_number(data, _TRAIN_KEYS),
        eval_time_s=_first_number(data, _EVAL_KEYS),
    )
    gid = data.get("github_id")
    return entry, str(gid) if gid else None


_CLAIM = re.compile(r"\b(record|sota|new best|leaderboard|val_bpb|bpb)\b", re.IGNORECASE)
_NON_RECORD = re.compile(r"non[- _]?record", re.IGNORECASE)
_BPB_NEAR = re.compile(r"(?:val_)?bpb\W{0,3}([0-2]\.\d{3,8})|([0-2]\.\d{3,8})\s*(?:val_)?bpb", re.IGNORECASE)
_BPB_ANY = re.compile(r"(?<![\d.])([0-2]\.\d{3,8})(?![\d.])")
_BODY_BYTES = re.compile(
    r"(?:bytes_total|artifact|total)[^\n\d]{0,40}(\d{1,2},?\d{3},?\d{3})\b", re.IGNORECASE
)


def _title_bpb(title: str) -> float | None:
    m = _BPB_NEAR.search(title)
    if m:
        return float(m.group(1) or m.group(2))
    vals = [float(x) for x in _BPB_ANY.findall(title) if 0.2 < float(x) < 2.0]
    return vals[0] if vals else None


def clean_title(title: str) -> str:
    """The technique part of a claim title: claim words and scores stripped."""
    t = re.sub(r"\([^)]*\d\.\d{3}[^)]*\)", " ", title)
    t = _BPB_NEAR.sub(" ", t)
    t = _BPB_ANY.sub(" ", t)
    t = re.sub(
        r"\b(?:\d+[- ]seeds?(?: mean)?|mean of \d+ seeds|p\s*[<=]\s*0?\.\d+)\b", " ", t, flags=re.IGNORECASE
    )
    t = re.sub(
        r"^\W*(?:\[?(?:non[- _]?)?record\]?|new sota|sota|submission)\b\W*",
        "",
        t.strip(),
        flags=re.IGNORECASE,
    )
    t = re.sub(r"\s*:\s*", "; ", t)
    t = re.sub(r"\s{2,}", " ", t)
    return t.strip(" ;-—–|,")


def parse_pull(pr: dict[str, Any]) -> tuple[FrontierEntry, str | None] | None:
    """A pull request whose title claims a score -> (entry, login), else None."""
    title = str(pr.get("title") or "")
    if not _CLAIM.search(title):
        return None
    bpb = _title_bpb(title)
    if bpb is None:
        return None
    if _NON_RECORD.search(title):
        status = "non-record"
    elif pr.get("merged_at"):
        status = "merged"
    elif pr.get("state") == "open":
        status = "open-claim"
    else:
        status = "rejected"  # closed without merging
    body = str(pr.get("body") or "")[:20000]
    sizes = [int(m.replace(",", "")) for m in _BODY_BYTES.findall(body)]
    login = (pr.get("user") or {}).get("login")
    date = str(pr.get("merged_at") or pr.get("created_at") or "")[:10]
    entry = FrontierEntry(
        date=date,
        val_bpb=bpb,
        pr=str(pr.get("number")),
        author=str(login or ""),
        status=status,
        raw_techniques=clean_title(title),
        source="pr",
        bytes_total=max(sizes) if sizes else None,
    )
    return entry, login


# ---------------------------------------------------------------------------------------------------
# Fetching


class FetchResult(BaseModel):
    entries: list[FrontierEntry] = Field(default_factory=list)
    readme_rows: int = 0
    records: int = 0
    pull_requests: int = 0
    deferred_records: int = 0
    warnings: list[str] = Field(default_factory=list)


def _decode_blob(body: str) -> str:
    data = json.loads(body)
    if data.get("encoding") == "base64":
        return base64.b64decode(data.get("content") or "").decode("utf-8")
    return str(data.get("content") or "")


def _readme_text(gh: GitHubClient) -> str:
    body = gh.get(f"{gh.prefix}/readme", accept="application/vnd.github.raw+json")
    if body.lstrip().startswith("{"):
        try:
            return _decode_blob(body)
        except (ValueError, UnicodeDecodeError):
            pass
    return body


def fetch_frontier(
    gh: GitHubClient, *, max_pages: int = 5, max_new_records: int = 40, blob_cache: Path | None = None
) -> FetchResult:
    """Everything the repository says about the frontier, joined into entries (not yet merged)."""
    out = FetchResult()

    readme: list[ReadmeRow] = []
    try:
        readme = parse_readme_leaderboard(_readme_text(gh))
    except GitHubError as e:
        if isinstance(e, RateLimited):
            raise
        out.warnings.append(f"README: {e}")
    out.readme_rows = len(readme)

    submissions: dict[str, tuple[FrontierEntry, str | None]] = {}  # folder -> (entry, github_id)
    try:
        repo = gh.get_json(gh.prefix)
        branch = repo.get("default_branch") or "main"
        tree = gh.get_json(f"{gh.prefix}/git/trees/{branch}", {"recursive": "1"})
        if tree.get("truncated"):
            out.warnings.append("tree listing truncated by GitHub: some records may be missing")
        blobs = [
            (t["path"], t["sha"])
            for t in tree.get("tree", [])
            if t.get("type") == "blob" and SUBMISSION_PATH.match(str(t.get("path")))
        ]
        fetched_new = 0
        for path, sha in blobs:
            cached = blob_cache / f"{sha}.json" if blob_cache else None
            if cached is not None and cached.exists():
                text = cached.read_text(encoding="utf-8")
            else:
                if fetched_new >= max_new_records:
                    out.deferred_records += 1
                    continue
                fetched_new += 1
                text = _decode_blob(gh.get(f"{gh.prefix}/git/blobs/{sha}"))
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(text, encoding="utf-8")
            try:
                entry, gid = parse_submission(text, path)
            except (ValueError, TypeError) as e:
                out.warnings.append(f"{path}: malformed submission.json skipped ({str(e)[:120]})")
                continue
            submissions[entry.pr] = (entry, gid)
        if out.deferred_records:
            out.warnings.append(
                f"{out.deferred_records} new submission.json files left for the next sync "
                f"(at most {max_new_records} per sync)"
            )
    except GitHubError as e:
        if isinstance(e, RateLimited):
            raise
        out.warnings.append(f"records: {e}")
    out.records = len(submissions)

    pulls: list[tuple[FrontierEntry, str | None]] = []
    try:
        for page in range(1, max_pages + 1):
            batch = gh.get_json(
                f"{gh.prefix}/pulls",
                {"state": "all", "sort": "created", "direction": "desc", "per_page": 100, "page": page},
            )
            if not isinstance(batch, list):
                raise GitHubError("pull request listing is not a list")
            pulls += [p for pr in batch if isinstance(pr, dict) and (p := parse_pull(pr)) is not None]
            if len(batch) < 100:
                break
    except GitHubError as e:
        if isinstance(e, RateLimited):
            raise
        out.warnings.append(f"pull requests: {e}")
    out.pull_requests = len(pulls)

    # Join: a README row and its submission.json share a folder; a merged PR is linked to a record by
    # its author's login and score. What cannot be joined stands alone.
    entries: list[tuple[FrontierEntry, str | None]] = []
    for row in readme:
        text = "; ".join(x for x in (row.run, re.sub(r"^On PR #\d+:\s*", "", row.summary)) if x)
        base, gid = submissions.pop(row.folder, (None, None)) if row.folder else (None, None)
        entry = FrontierEntry(
            date=row.date or (base.date if base else ""),
            val_bpb=row.score,
            author=row.author,
            pr=row.folder or f"readme:{row.run[:60]}",
            status="non-record" if row.non_record else "record",
            raw_techniques=text,
            source="readme+records" if base else "readme",
            bytes_total=base.bytes_total if base else None,
            train_time_s=base.train_time_s if base else None,
            eval_time_s=base.eval_time_s if base else None,
        )
        entries.append((entry, gid))
    entries += list(submissions.values())
    for pr_entry, login in pulls:
        for i, (entry, gid) in enumerate(entries):
            if (
                pr_entry.status == "merged"
                and login
                and gid
                and login.lower() == gid.lower()
                and abs(entry.val_bpb - pr_entry.val_bpb) <= 6e-4
                and not entry.pr.isdigit()
            ):
                entries[i] = (
                    entry.model_copy(update={"pr": pr_entry.pr, "source": entry.source + "+pr"}),
                    gid,
                )
                break
        else:
            entries.append((pr_entry, login))
    out.entries = [e for e, _ in entries]
    return out


# ---------------------------------------------------------------------------------------------------
# The sync the CLI calls


class SyncReport(BaseModel):
    ok: bool
    repo: str
    message: str
    snapshot: str | None = None  # path of the snapshot written (None: the old one is kept)
    using: str = ""  # the snapshot now in use, with its age
    rate_limited: bool = False
    requests: int = 0
    not_modified: int = 0
    readme_rows: int = 0
    records: int = 0
    pull_requests: int = 0
    entries: int = 0
    new_entries: int = 0
    warnings: list[str] = Field(default_factory=list)

    def text(self) -> str:
        lines = [self.message, f"using: {self.using}"]
        if self.ok:
            lines.append(
                f"{self.requests} requests ({self.not_modified} not modified); README rows "
                f"{self.readme_rows}, records {self.records}, claiming PRs {self.pull_requests}; "
                f"{self.entries} entries, {self.new_entries} new"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def sync(
    ws_root: str | Path,
    owner: str = DEFAULT_OWNER,
    repo: str = DEFAULT_REPO,
    *,
    token: str | None = None,
    base_url: str | None = None,
    max_pages: int = 5,
    max_new_records: int | None = None,
    retries: int = 3,
    retry_wait: float = 1.0,
    now: dt.datetime | None = None,
) -> SyncReport:
    """Fetch the frontier from GitHub and write a dated snapshot; on any stop, keep the old one."""
    ws = Workspace.at(ws_root)
    d = ws.frontier_dir
    prev = current(d)
    token = token if token is not None else os.environ.get("GITHUB_TOKEN") or None
    name = f"{owner}/{repo}"
    limit = max_new_records if max_new_records is not None else (300 if token else 40)

    def kept(msg: str, **kw: Any) -> SyncReport:
        return SyncReport(
            ok=False,
            repo=name,
            message=f"{msg}; kept the {prev.name} snapshot",
            using=age_text(prev.snapshot, now),
            **kw,
        )

    gh = GitHubClient(
        owner,
        repo,
        base_url=base_url,
        token=token,
        cache_dir=d / "http_cache",
        retries=retries,
        retry_wait=retry_wait,
    )
    try:
        got = fetch_frontier(gh, max_pages=max_pages, max_new_records=limit, blob_cache=d / "blobs")
    except RateLimited as e:
        log.warning("frontier sync stopped: %s", e)
        return kept(str(e), rate_limited=True, requests=gh.requests, not_modified=gh.not_modified)
    except (_Transient, httpx.HTTPError, RetryError) as e:
        log.warning("frontier sync failed: %s", type(e).__name__)
        return kept(f"GitHub unreachable ({type(e).__name__}: {str(e)[:160]})", requests=gh.requests)
    finally:
        gh.close()
    if not got.entries:
        return kept("GitHub returned no frontier data", requests=gh.requests, warnings=got.warnings)

    before = len(prev.snapshot.entries)
    entries = merge_entries(prev.snapshot.entries, annotate(got.entries))
    snap = FrontierSnapshot(
        taken_at=(now.isoformat(timespec="seconds") if now else utcnow()),
        source=f"github:{name}",
        entries=entries,
        note=f"merged onto {prev.name}; {len(got.entries)} fetched entries",
    )
    path = save_snapshot(d, snap)
    log.info("frontier sync %s: %d requests, %d entries", name, gh.requests, len(entries))
    return SyncReport(
        ok=True,
        repo=name,
        message=f"synced {name} -> {path.name}",
        snapshot=str(path),
        using=age_text(snap, now),
        requests=gh.requests,
        not_modified=gh.not_modified,
        readme_rows=got.readme_rows,
        records=got.records,
        pull_requests=got.pull_requests,
        entries=len(entries),
        new_entries=len(entries) - before,
        warnings=got.warnings,
    )


# ---------------------------------------------------------------------------------------------------
# The planner's tool


class FrontierDiffArgs(BaseModel):
    queue: list[str] = Field(
        default_factory=list,
        description=("technique ids to check for obsolescence (default: the session's battle-plan queue)"),
    )
    max_chars: int = Field(default=3000, ge=200, le=12000, description="bound on the digest's length")


class FrontierDiffResult(BaseModel):
    age: str
    best: str | None
    stack: list[str]
    entered: list[str]
    left: list[str]
    obsolete: list[str]
    flagged: list[str]
    new_entries: list[str]
    digest: str


def _queue_from(ctx: Any) -> list[str]:
    out = []
    for item in getattr(ctx, "queue", None) or []:
        tid = item.get("technique") if isinstance(item, dict) else item
        if isinstance(tid, str) and tid:
            out.append(tid)
    return out


LIST_CAP = 20


@tool(
    "frontier_diff",
    "The current Parameter Golf frontier and what changed since the last session: best legal record, "
    "its technique stack, techniques that entered or left it, queue ids the frontier made obsolete, and "
    "entries flagged by rule checks (never build on a flagged entry without saying so). No network.",
    FrontierDiffArgs,
)
def frontier_diff_tool(args: FrontierDiffArgs, ctx: Any) -> FrontierDiffResult:
    ws = getattr(ctx, "ws", None)
    root = ws.root if ws is not None else Path(ctx)
    d = frontier_diff_for(root, args.queue or _queue_from(ctx))
    best = f"{d.best.val_bpb:.4f} (#{d.best.pr}, {d.best.author}, {d.best.date[:10]})" if d.best else None
    return FrontierDiffResult(
        age=d.age,
        best=best,
        stack=d.stack[:60],
        entered=d.entered[:LIST_CAP],
        left=d.left[:LIST_CAP],
        obsolete=[f"{n.technique}: {n.reason}" for n in d.obsolete][:LIST_CAP],
        flagged=[f"{e.pr} {e.val_bpb:.4f}: {', '.join(e.flags)}" for e in d.rule_flagged][:LIST_CAP],
        new_entries=[f"{e.pr} {e.val_bpb:.4f} {e.status}" for e in d.new_entries][:LIST_CAP],
        digest=frontier_digest(d, args.max_chars),
    )
