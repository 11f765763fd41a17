"""Experiments as git history: one commit per experiment, on a session branch `golf/<session>`.

Each experiment's candidate commit (branch head + the candidate's files + bookkeeping files such as
battle_plan.md) is pinned by `refs/golf/<session>/<experiment_id>`, so a discarded idea's diff stays
reachable. A kept candidate becomes the branch head; a discarded one leaves the branch a small
"discard ..." commit carrying only the bookkeeping files. So the branch's train script is always the
incumbent.

Commits are built with plumbing (a temporary index, commit-tree, update-ref): the user's index and
worktree are touched only for the paths named, and only after the commit and refs exist. The order
of steps makes a crash at any point recoverable by calling `record_experiment` again with the same
arguments: the experiment ref is written first and the remaining steps are completed idempotently.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from git import Repo
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError
from pydantic import BaseModel

from memory.faults import crash_point, die

BRANCH_PREFIX = "golf/"
REF_PREFIX = "refs/golf/"
FALLBACK_NAME = "pgolf"
FALLBACK_EMAIL = "pgolf@localhost"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class GitRecordsError(RuntimeError):
    pass


class DirtyTreeError(GitRecordsError):
    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        shown = "\n  ".join(self.paths[:30]) + ("\n  ..." if len(self.paths) > 30 else "")
        super().__init__(
            f"the working tree has uncommitted changes; commit or stash them, or pass "
            f"allow_dirty (they are never touched either way):\n  {shown}"
        )


class ExperimentCommit(BaseModel):
    candidate_sha: str  # the experiment's own commit, pinned by `ref`
    ref: str
    branch_sha: str  # the branch commit this record produced: the candidate if kept, else the discard commit
    kept: bool
    existing: bool = False  # True when the experiment was already recorded (a resumed session)


# ------------------------------------------------------------------------------------------ helpers


def _repo(root: str | Path) -> Repo:
    try:
        repo = Repo(root)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise GitRecordsError(f"{root}: not a git repository (run `git init` and commit first)") from None
    if repo.bare:
        raise GitRecordsError(f"{root}: a bare repository has no working tree")
    return repo


def _git(repo: Repo, *args: str, env: Mapping[str, str] | None = None, binary: bool = False):
    if crash_point(f"git:{args[0]}"):
        _die_holding_lock(repo, args, env)
    try:
        return repo.git.execute(
            ["git", *args],
            env=dict(env or {}),
            strip_newline_in_stdout=not binary,
            stdout_as_string=not binary,
        )
    except GitCommandError as e:
        err = (e.stderr or "").strip() or str(e)
        raise GitRecordsError(f"git {' '.join(args[:3])}: {err}") from None


def _die_holding_lock(repo: Repo, args: Sequence[str], env: Mapping[str, str] | None) -> None:
    """Fault injection (PGOLF_CRASH_AT=git:<command>): die as if git were killed holding its lock."""
    if args[0] == "update-ref":
        lock = _common_dir(repo) / f"{args[-3] if len(args) >= 3 else args[-1]}.lock"
    elif args[0] == "symbolic-ref":
        lock = _git_dir(repo) / "HEAD.lock"
    elif env and "GIT_INDEX_FILE" in env:
        lock = Path(env["GIT_INDEX_FILE"] + ".lock")
    else:
        lock = _git_dir(repo) / "index.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    die()


def _try(repo: Repo, *args: str) -> str | None:
    """A git command whose failure means "no" (a missing ref, an unset config key)."""
    try:
        return repo.git.execute(["git", *args])
    except GitCommandError:
        return None


def _rev(repo: Repo, ref: str) -> str | None:
    return _try(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")


def _head_commit(repo: Repo) -> str:
    sha = _rev(repo, "HEAD")
    if sha is None:
        raise GitRecordsError(
            f"{repo.working_tree_dir}: HEAD has no commits yet; make an initial commit "
            "(the session branch starts from it)"
        )
    return sha


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name) or ".." in name or name.endswith(".lock"):
        raise GitRecordsError(f"{kind} {name!r} is not usable in a git ref (letters, digits, . _ - only)")
    return name


def _branch_ref(session: str) -> str:
    return f"refs/heads/{BRANCH_PREFIX}{_check_name('session', session)}"


def _experiment_ref(session: str, experiment_id: str) -> str:
    return f"{REF_PREFIX}{_check_name('session', session)}/{_check_name('experiment id', experiment_id)}"


def _relpath(path: str) -> str:
    p = PurePosixPath(str(path).replace(os.sep, "/"))
    parts = [x for x in p.parts if x != "."]
    if p.is_absolute() or not parts or ".." in parts or parts[0] == ".git":
        raise GitRecordsError(f"{path!r}: expected a path relative to the repository root")
    return "/".join(parts)


def _identity_env(repo: Repo) -> dict[str, str]:
    """Author/committer fallback for machines with no git identity, so commits never fail on that."""
    env: dict[str, str] = {}
    name = _try(repo, "config", "--get", "user.name")
    email = _try(repo, "config", "--get", "user.email")
    for role in ("AUTHOR", "COMMITTER"):
        if not name and not os.environ.get(f"GIT_{role}_NAME"):
            env[f"GIT_{role}_NAME"] = FALLBACK_NAME
        if not email and not os.environ.get(f"GIT_{role}_EMAIL"):
            env[f"GIT_{role}_EMAIL"] = FALLBACK_EMAIL
    return env


def _tree_entry(repo: Repo, commit: str, path: str) -> tuple[str, str] | None:
    """(mode, blob sha) of path in commit, or None when absent."""
    out = _git(repo, "ls-tree", "-z", commit, "--", path)
    for entry in out.split("\0"):
        if entry:
            meta, name = entry.split("\t", 1)
            mode, kind, sha = meta.split()
            if name == path and kind == "blob":
                return mode, sha
    return None


def _hash_bytes(repo: Repo, path: str, data: bytes) -> str:
    """Store data as the blob `git add path` would make of it (clean filters by path)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "blob")
        with open(tmp, "wb") as f:
            f.write(data)
        return _git(repo, "hash-object", "-w", f"--path={path}", "--", tmp)


def _worktree(repo: Repo) -> Path:
    return Path(str(repo.working_tree_dir))


def _build_commit(
    repo: Repo, parent: str, files: Mapping[str, bytes], message: str, env: Mapping[str, str]
) -> str:
    """A commit whose tree is parent's tree with `files` replaced, built in a throwaway index."""
    with tempfile.TemporaryDirectory() as d:
        idx = {"GIT_INDEX_FILE": os.path.join(d, "index")}
        _git(repo, "read-tree", parent, env=idx)
        args: list[str] = []
        for path, data in files.items():
            entry = _tree_entry(repo, parent, path)
            args += [
                "--cacheinfo",
                f"{entry[0] if entry else '100644'},{_hash_bytes(repo, path, data)},{path}",
            ]
        if args:
            _git(repo, "update-index", "--add", *args, env=idx)
        tree = _git(repo, "write-tree", env=idx)
    return _git(repo, "commit-tree", tree, "-p", parent, "-m", message, env=env)


def _write_atomic(path: Path, data: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sync_paths(repo: Repo, commit: str, paths: Iterable[str], worktree: bool) -> None:
    """Make the index entries (and, if `worktree`, the files) of `paths` match `commit`.

    With worktree=False the files are left as they are (a human may have edited battle_plan.md since);
    only their index entries move, so `git status` shows exactly the edits not yet committed.
    """
    root = _worktree(repo)
    cacheinfo: list[str] = []
    remove: list[str] = []
    refresh: list[str] = []
    for path in paths:
        entry = _tree_entry(repo, commit, path)
        file = root / path
        if entry is None:
            remove.append(path)
            if worktree and file.is_file():
                file.unlink()  # the candidate added it; the incumbent has no such file
            continue
        mode, sha = entry
        cacheinfo += ["--cacheinfo", f"{mode},{sha},{path}"]
        if worktree:
            data = _git(repo, "cat-file", "--filters", f"{commit}:{path}", binary=True)
            if not file.is_file() or file.read_bytes() != data:
                _write_atomic(file, data, 0o755 if mode == "100755" else None)
        if file.is_file() and _git(repo, "hash-object", "--", path) == sha:
            refresh.append(path)
    if cacheinfo:
        _git(repo, "update-index", "--add", *cacheinfo)
    if remove:
        _git(repo, "update-index", "--force-remove", "--", *remove)
    if refresh:  # re-add from the identical file so the index carries real stat data
        _git(repo, "update-index", "--", *refresh)


def _require_on_branch(repo: Repo, session: str) -> str:
    ref = _branch_ref(session)
    if _try(repo, "symbolic-ref", "-q", "HEAD") != ref:
        raise GitRecordsError(f"HEAD is not on {ref.removeprefix('refs/heads/')}; call start_session first")
    if _rev(repo, ref) is None:
        raise GitRecordsError(f"branch {ref} has no commits; call start_session first")
    return ref


# ------------------------------------------------------------------------------------------ public API


def dirty_paths(root: str | Path) -> list[str]:
    """Tracked files modified or staged, and untracked files not ignored, relative to the repo root."""
    repo = _repo(root)
    out = _git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", binary=True)
    entries = out.decode("utf-8", "surrogateescape").split("\0")
    paths: set[str] = set()
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.add(entry[3:])
        if entry[0] in "RC":
            i += 1  # the next field is the rename's source path
    return sorted(paths)


def start_session(
    root: str | Path, session: str, allow_dirty: bool = False, allow_paths: Iterable[str] = ()
) -> str:
    """Put HEAD on branch `golf/<session>`, creating it at the current HEAD; returns the branch head sha.

    Refuses a dirty tree (DirtyTreeError listing the paths) unless allow_dirty, or unless every dirty
    path is in allow_paths (e.g. a battle_plan.md the human just edited). Re-entrant: on resume the
    existing branch is reused as it stands. Creating the branch never touches the worktree.
    """
    repo = _repo(root)
    head = _head_commit(repo)
    ref = _branch_ref(session)
    allowed = {_relpath(p) for p in allow_paths}
    dirty = [p for p in dirty_paths(root) if p not in allowed]
    if dirty and not allow_dirty:
        raise DirtyTreeError(dirty)
    current = _try(repo, "symbolic-ref", "-q", "HEAD")
    existing = _rev(repo, ref)
    if current == ref and existing is not None:
        return existing
    if existing is None:
        _git(repo, "update-ref", "-m", f"golf: start session {session}", ref, head, "")
        existing = head
    if existing == head:  # same commit: just move HEAD, the index and worktree already match
        _git(repo, "symbolic-ref", "-m", f"golf: session {session}", "HEAD", ref)
    else:  # the branch exists elsewhere (resume from another checkout): a real checkout, which
        # git refuses rather than overwrite local changes
        _git(repo, "checkout", "-q", ref.removeprefix("refs/heads/"))
    return existing


def record_experiment(
    root: str | Path,
    session: str,
    experiment_id: str,
    message: str,
    kept: bool,
    candidate_files: Mapping[str, str],
    also_files: Sequence[str] = (),
) -> ExperimentCommit:
    """Commit one experiment and move the branch according to the decision.

    candidate_files: relpath -> full text of the candidate's version (e.g. trainer/train_gpt.py).
    also_files: bookkeeping files committed from the worktree as they are (e.g. battle_plan.md);
    they go onto the branch whether the candidate is kept or not, and are never rewritten on disk.
    Afterwards the candidate files in the worktree match the branch: the candidate if kept, the
    incumbent if not. Calling again with the same ids returns the existing record (completing any
    step a crash interrupted) instead of recording twice.
    """
    repo = _repo(root)
    branch_ref = _require_on_branch(repo, session)
    exp_ref = _experiment_ref(session, experiment_id)
    cand_paths = {_relpath(p): text for p, text in candidate_files.items()}
    also_paths = [_relpath(p) for p in also_files]
    if overlap := set(cand_paths) & set(also_paths):
        raise GitRecordsError(f"paths both candidate and bookkeeping: {sorted(overlap)}")
    root_dir = _worktree(repo)
    env = _identity_env(repo)

    candidate = _rev(repo, exp_ref)
    existing = candidate is not None
    if candidate is None:
        for p in also_paths:
            if not (root_dir / p).is_file():
                raise GitRecordsError(f"{p}: bookkeeping file missing from the working tree")
        head = _git(repo, "rev-parse", branch_ref)
        files = {p: text.encode("utf-8") for p, text in cand_paths.items()}
        files.update({p: (root_dir / p).read_bytes() for p in also_paths})
        candidate = _build_commit(repo, head, files, message, env)
        # The ref is the record's anchor: once it exists, a rerun finishes the job instead of redoing it.
        _git(repo, "update-ref", "-m", f"golf: experiment {experiment_id}", exp_ref, candidate, "")

    parent = _git(repo, "rev-parse", f"{candidate}^")
    head = _git(repo, "rev-parse", branch_ref)
    if _try(repo, "merge-base", "--is-ancestor", candidate, head) is not None:
        kept, produced = True, candidate
    elif (found := _discard_commit(repo, parent, head, candidate)) is not None:
        kept, produced = False, found
    elif head == parent:
        if kept:
            produced = candidate
        else:
            files = {p: (root_dir / p).read_bytes() for p in also_paths if (root_dir / p).is_file()}
            note = (
                f"discard {experiment_id}: {message.strip().splitlines()[0] if message.strip() else ''}\n\n"
                f"Candidate {candidate} stays reachable at {exp_ref};\n"
                f"the branch keeps the incumbent. Golf-Discarded: {candidate}\n\n{message.strip()}\n"
            )
            produced = _build_commit(repo, head, files, note, env)
        verb = "keep" if kept else "discard"
        _git(repo, "update-ref", "-m", f"golf: {verb} {experiment_id}", branch_ref, produced, head)
        head = produced
    else:
        raise GitRecordsError(
            f"{exp_ref} ({candidate[:12]}) was built on {parent[:12]}, but {branch_ref} "
            f"has moved to {head[:12]} without recording it; resolve by hand"
        )

    if head == produced:  # this was the latest record: make the worktree agree with it
        _sync_paths(repo, head, cand_paths, worktree=True)
        _sync_paths(repo, head, also_paths, worktree=False)
    return ExperimentCommit(
        candidate_sha=candidate, ref=exp_ref, branch_sha=produced, kept=kept, existing=existing
    )


def _discard_commit(repo: Repo, parent: str, head: str, candidate: str) -> str | None:
    """The branch's discard commit for `candidate`: the child of `parent` on the branch naming it."""
    if head == parent or _try(repo, "merge-base", "--is-ancestor", parent, head) is None:
        return None
    children = _git(repo, "rev-list", "--reverse", "--ancestry-path", f"{parent}..{head}").split()
    if not children:
        return None
    first = children[0]
    body = _git(repo, "log", "-1", "--format=%B", first)
    return first if f"Golf-Discarded: {candidate}" in body else None


def experiment_commit(root: str | Path, session: str, experiment_id: str) -> str | None:
    return _rev(_repo(root), _experiment_ref(session, experiment_id))


def list_experiments(root: str | Path, session: str) -> list[tuple[str, str]]:
    """(experiment_id, candidate sha) for every recorded experiment of a session, oldest first."""
    repo = _repo(root)
    prefix = f"{REF_PREFIX}{_check_name('session', session)}/"
    out = _git(
        repo,
        "for-each-ref",
        "--sort=refname",
        "--sort=committerdate",
        "--format=%(refname)%00%(objectname)",
        prefix,
    )
    rows = [line.split("\0") for line in out.splitlines() if line]
    return [(name.removeprefix(prefix), sha) for name, sha in rows]


def experiment_diff(root: str | Path, session: str, experiment_id: str) -> str | None:
    """The unified diff an experiment made to its parent (kept or discarded), or None if not recorded."""
    repo = _repo(root)
    sha = _rev(repo, _experiment_ref(session, experiment_id))
    return None if sha is None else _git(repo, "diff", f"{sha}^", sha)


def restore_incumbent(root: str | Path, paths: Iterable[str]) -> None:
    """Put the named files (worktree and index) back to HEAD's version; a file HEAD lacks is removed.

    Resume uses it after a crash left a candidate's edit in the worktree. Nothing else is touched.
    """
    repo = _repo(root)
    _sync_paths(repo, _head_commit(repo), [_relpath(p) for p in paths], worktree=True)


def head_sha(root: str | Path) -> str:
    return _head_commit(_repo(root))


def script_at(root: str | Path, rev: str, path: str) -> str:
    """The exact text of `path` at `rev` (a sha, branch or ref)."""
    repo = _repo(root)
    sha = _rev(repo, rev)
    if sha is None:
        raise GitRecordsError(f"{rev!r}: no such commit")
    rel = _relpath(path)
    if _tree_entry(repo, sha, rel) is None:
        raise GitRecordsError(f"{rel}: not in {rev} ({sha[:12]})")
    return _git(repo, "cat-file", "blob", f"{sha}:{rel}", binary=True).decode("utf-8")


def file_at(root: str | Path, rev: str, path: str) -> str | None:
    """The text of `path` at `rev`, or None when the revision or the file does not exist (or root is
    not a repository): the lenient reading for "what was committed there, if anything"."""
    try:
        repo, rel = _repo(root), _relpath(path)
    except GitRecordsError:
        return None
    try:  # one git call: this is read at every decision
        data = repo.git.execute(
            ["git", "cat-file", "blob", f"{rev}:{rel}"], strip_newline_in_stdout=False, stdout_as_string=False
        )
    except GitCommandError:
        return None
    return data.decode("utf-8")


def rev_parse(root: str | Path, rev: str) -> str | None:
    """The commit sha `rev` names, or None (no such revision, or not a repository)."""
    try:
        return _rev(_repo(root), rev)
    except GitRecordsError:
        return None


def commit_paths(root: str | Path, paths: Sequence[str], message: str) -> str | None:
    """Commit the worktree content of `paths` on the current branch when they changed; nothing else
    is staged or committed. Returns the new HEAD sha, or None when there was nothing to commit."""
    repo = _repo(root)
    rel = [_relpath(p) for p in paths]
    if not _git(repo, "status", "--porcelain", "--", *rel):
        return None
    _git(repo, "add", "--", *rel)
    _git(repo, "commit", "-q", "-m", message, "--", *rel, env=_identity_env(repo))
    return _head_commit(repo)


def commit_message(root: str | Path, rev: str) -> str:
    return _git(_repo(root), "log", "-1", "--format=%B", rev)


# ------------------------------------------------------------------------------------------ stale locks


def _git_dir(repo: Repo) -> Path:
    return Path(repo.git_dir)


def _common_dir(repo: Repo) -> Path:
    return Path(repo.common_dir)


def _lock_files(repo: Repo) -> list[Path]:
    """The locks a killed git can leave: the index, HEAD, packed-refs, config and any ref."""
    gd, cd = _git_dir(repo), _common_dir(repo)
    found = {gd / "index.lock", gd / "HEAD.lock", cd / "packed-refs.lock", cd / "config.lock"}
    found |= set((cd / "refs").rglob("*.lock")) | set((gd / "refs").rglob("*.lock"))
    return sorted(p for p in found if p.is_file())


def _live_gits(root: Path, dirs: Sequence[Path]) -> list[tuple[int, str]]:
    """Running git processes working in this repository (by their working directory), except us."""
    proc = Path("/proc")
    if not proc.is_dir():
        raise GitRecordsError(
            "cannot tell whether a git process is still running here (no /proc); "
            "remove the stale lock by hand once no git runs"
        )
    places = [root.resolve(), *(d.resolve() for d in dirs)]
    out = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            cwd = Path(os.readlink(entry / "cwd"))
            # cmdline can be empty or rewritten; the kernel's short name is the fallback
            name = os.path.basename(argv[0].decode(errors="replace")) if argv else ""
            if not name:
                name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name not in ("git", "git-remote-http"):
            continue
        if any(cwd == p or p in cwd.parents for p in places):
            out.append((int(entry.name), b" ".join(argv).decode(errors="replace").strip()[:200]))
    return out


def clear_stale_locks(root: str | Path) -> list[str]:
    """Remove lock files a killed git left behind (index.lock, ref locks), which block every later
    git command; only when no git process is running in this repository, since a live one owns its
    lock. Returns the removed locks relative to the git directory; raises naming the live git."""
    repo = _repo(root)
    locks = _lock_files(repo)
    if not locks:
        return []
    gd, cd = _git_dir(repo), _common_dir(repo)
    live = _live_gits(_worktree(repo), [gd, cd])
    if live:
        pid, cmd = live[0]
        raise GitRecordsError(
            f"{', '.join(str(p) for p in locks)}: held by a running git (pid {pid}: {cmd}); "
            "let it finish, then run this again"
        )
    removed = []
    for lock in locks:
        rel = lock.relative_to(gd) if gd in lock.parents else lock.relative_to(cd)
        lock.unlink(missing_ok=True)
        removed.append(rel.as_posix())
    return removed
