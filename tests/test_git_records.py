"""Git records: every experiment is a reachable commit, the branch holds the incumbent, user work is untouched.

Real git repositories in tmp dirs, with the machine's git identity hidden so the fallback is exercised.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from memory.git_records import (
    FALLBACK_EMAIL,
    FALLBACK_NAME,
    DirtyTreeError,
    GitRecordsError,
    dirty_paths,
    experiment_commit,
    experiment_diff,
    head_sha,
    list_experiments,
    record_experiment,
    restore_incumbent,
    script_at,
    start_session,
)

SCRIPT = "trainer/train_gpt.py"
PLAN = "battle_plan.md"
INCUMBENT = "LR = 0.04\nLAYERS = 9\n"


@pytest.fixture(autouse=True)
def no_git_identity(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        for part in ("NAME", "EMAIL", "DATE"):
            monkeypatch.delenv(f"GIT_{role}_{part}", raising=False)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Human", "-c", "user.email=human@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.rstrip("\n")


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "ws"
    (root / "trainer").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / SCRIPT).write_text(INCUMBENT)
    (root / PLAN).write_text("# Plan\n\n## Queue\n- [ ] ema\n")
    (root / "notes.txt").write_text("the user's notes\n")
    (root / ".gitignore").write_text("/.golf/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def status(root: Path) -> str:
    return git(root, "status", "--porcelain", "--untracked-files=all")


def started(repo: Path, session: str = "s1") -> Path:
    start_session(repo, session)
    return repo


# ------------------------------------------------------------------------------------------ sessions


def test_dirty_paths_lists_modified_staged_and_untracked_but_not_ignored(repo):
    assert dirty_paths(repo) == []
    (repo / "notes.txt").write_text("edited\n")
    (repo / PLAN).write_text("# staged\n")
    git(repo, "add", PLAN)
    (repo / "new dir").mkdir()
    (repo / "new dir" / "idea.py").write_text("x = 1\n")
    (repo / ".golf").mkdir()
    (repo / ".golf" / "ledger.jsonl").write_text("{}\n")
    git(repo, "mv", "notes.txt", "renamed.txt")
    assert dirty_paths(repo) == [PLAN, "new dir/idea.py", "renamed.txt"]


def test_start_session_refuses_a_dirty_tree_and_names_the_paths(repo):
    (repo / "notes.txt").write_text("half-written thought\n")
    (repo / "scratch.py").write_text("print(1)\n")
    with pytest.raises(DirtyTreeError) as e:
        start_session(repo, "s1")
    assert e.value.paths == ["notes.txt", "scratch.py"]
    assert "notes.txt" in str(e.value) and "scratch.py" in str(e.value)
    assert git(repo, "branch", "--show-current") == "main"
    assert git(repo, "branch", "--list", "golf/*") == ""
    assert (repo / "notes.txt").read_text() == "half-written thought\n"


def test_allow_dirty_starts_without_touching_the_users_changes(repo):
    (repo / "notes.txt").write_text("half-written thought\n")
    git(repo, "add", "notes.txt")
    (repo / "scratch.py").write_text("print(1)\n")
    before = status(repo)
    sha = start_session(repo, "s1", allow_dirty=True)
    assert sha == git(repo, "rev-parse", "main")
    assert git(repo, "branch", "--show-current") == "golf/s1"
    assert status(repo) == before  # still staged, still untracked
    assert (repo / "notes.txt").read_text() == "half-written thought\n"


def test_allow_paths_lets_a_fresh_plan_edit_through_but_nothing_else(repo):
    (repo / PLAN).write_text("# Plan\n\n## Directives\n- prefer cheap techniques\n")
    start_session(repo, "s1", allow_paths=[PLAN])
    (repo / "notes.txt").write_text("x\n")
    with pytest.raises(DirtyTreeError, match="notes.txt"):
        start_session(repo, "s2", allow_paths=[PLAN])


def test_start_session_branches_from_head_and_is_reentrant(repo):
    main = git(repo, "rev-parse", "HEAD")
    assert start_session(repo, "s1") == main
    assert git(repo, "rev-parse", "golf/s1") == main
    record_experiment(repo, "s1", "e1", "note", True, {SCRIPT: "LR = 0.05\n"}, [])
    moved = git(repo, "rev-parse", "golf/s1")
    assert start_session(repo, "s1") == moved  # resume: the branch as it stands, not a new one
    assert git(repo, "branch", "--show-current") == "golf/s1"
    # Resuming from another branch checks the session branch out again.
    git(repo, "checkout", "-q", "main")
    assert (repo / SCRIPT).read_text() == INCUMBENT
    assert start_session(repo, "s1") == moved
    assert (repo / SCRIPT).read_text() == "LR = 0.05\n"


def test_a_repository_without_commits_gets_a_clear_error(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q")
    (root / "train_gpt.py").write_text("x\n")
    assert dirty_paths(root) == ["train_gpt.py"]
    for call in (
        lambda: start_session(root, "s1", allow_dirty=True),
        lambda: head_sha(root),
        lambda: restore_incumbent(root, ["train_gpt.py"]),
    ):
        with pytest.raises(GitRecordsError, match="HEAD has no commits yet"):
            call()


def test_not_a_repository_and_bad_names_are_refused(tmp_path, repo):
    with pytest.raises(GitRecordsError, match="not a git repository"):
        start_session(tmp_path / "nowhere", "s1")
    with pytest.raises(GitRecordsError, match="not usable in a git ref"):
        start_session(repo, "my session")
    start_session(repo, "s1")
    with pytest.raises(GitRecordsError, match="not usable in a git ref"):
        record_experiment(repo, "s1", "../escape", "m", True, {SCRIPT: "x\n"}, [])
    with pytest.raises(GitRecordsError, match="relative to the repository root"):
        record_experiment(repo, "s1", "e1", "m", True, {"../outside.py": "x\n"}, [])


def test_recording_needs_the_session_branch_checked_out(repo):
    with pytest.raises(GitRecordsError, match="call start_session first"):
        record_experiment(repo, "s1", "e1", "m", True, {SCRIPT: "x\n"}, [])


# ------------------------------------------------------------------------------------------ experiments


def test_kept_experiment_advances_the_branch(repo):
    started(repo)
    base = head_sha(repo)
    (repo / PLAN).write_text("# Plan\n\n## Queue\n- [x] ema\n")  # the agent marked it done
    note = "ema: EMA_DECAY=0.997\n\nResult: -0.004 bpb [-0.006, -0.002], p=0.003, n=3. Decision: keep.\n"
    rec = record_experiment(repo, "s1", "e1-ema", note, True, {SCRIPT: "LR = 0.04\nEMA = 0.997\n"}, [PLAN])
    assert rec.kept and not rec.existing
    assert rec.ref == "refs/golf/s1/e1-ema"
    assert rec.candidate_sha == rec.branch_sha == git(repo, "rev-parse", "golf/s1") == head_sha(repo)
    assert git(repo, "rev-parse", f"{rec.candidate_sha}^") == base
    assert git(repo, "log", "-1", "--format=%B", rec.candidate_sha) == note.strip()
    assert script_at(repo, "golf/s1", SCRIPT) == "LR = 0.04\nEMA = 0.997\n"
    assert script_at(repo, "golf/s1", PLAN).endswith("- [x] ema\n")
    assert (repo / SCRIPT).read_text() == "LR = 0.04\nEMA = 0.997\n"
    assert status(repo) == ""  # worktree and index agree with the new head
    assert experiment_commit(repo, "s1", "e1-ema") == rec.candidate_sha


def test_discarded_experiment_stays_reachable_and_the_branch_keeps_the_incumbent(repo):
    started(repo)
    base = head_sha(repo)
    (repo / SCRIPT).write_text("LR = 0.04\nLAYERS = 10\n")  # the candidate, as the edit tool left it
    (repo / PLAN).write_text("# Plan\n\n## Queue\n- [x] ema\n")
    note = "layers10: NUM_LAYERS=10\n\nResult: +0.003 bpb [-0.001, +0.007], p=0.41. Decision: discard.\n"
    rec = record_experiment(repo, "s1", "e2", note, False, {SCRIPT: "LR = 0.04\nLAYERS = 10\n"}, [PLAN])
    assert not rec.kept
    # The idea's diff is kept under refs/golf/ ...
    assert git(repo, "rev-parse", "refs/golf/s1/e2") == rec.candidate_sha
    assert script_at(repo, rec.candidate_sha, SCRIPT) == "LR = 0.04\nLAYERS = 10\n"
    assert "+LAYERS = 10" in experiment_diff(repo, "s1", "e2")
    # ... while the branch gets a bookkeeping commit with the plan only.
    assert rec.branch_sha == head_sha(repo) != rec.candidate_sha
    assert git(repo, "rev-parse", f"{rec.branch_sha}^") == base
    msg = git(repo, "log", "-1", "--format=%B", rec.branch_sha)
    assert msg.startswith("discard e2: layers10: NUM_LAYERS=10")
    assert rec.candidate_sha in msg and "refs/golf/s1/e2" in msg and "Decision: discard." in msg
    assert git(repo, "diff", "--name-only", base, rec.branch_sha) == PLAN
    assert script_at(repo, "golf/s1", SCRIPT) == INCUMBENT
    assert (repo / SCRIPT).read_text() == INCUMBENT  # the worktree is back to the incumbent
    assert status(repo) == ""


def test_a_candidate_that_adds_a_file_is_removed_again_when_discarded(repo):
    started(repo)
    rec = record_experiment(
        repo, "s1", "e1", "new helper", False, {SCRIPT: "import helper\n", "trainer/helper.py": "X = 1\n"}, []
    )
    assert script_at(repo, rec.candidate_sha, "trainer/helper.py") == "X = 1\n"
    assert not (repo / "trainer/helper.py").exists()
    assert status(repo) == ""


def test_rerecording_returns_the_existing_commit(repo):
    started(repo)
    args = dict(message="m", candidate_files={SCRIPT: "LR = 0.05\n"}, also_files=[PLAN])
    first = record_experiment(repo, "s1", "e1", kept=True, **args)
    again = record_experiment(repo, "s1", "e1", kept=True, **args)
    assert again.existing and again.model_dump(exclude={"existing"}) == first.model_dump(exclude={"existing"})
    d1 = record_experiment(
        repo, "s1", "e2", kept=False, message="m2", candidate_files={SCRIPT: "LR = 0.09\n"}, also_files=[PLAN]
    )
    # A resumed session may not remember the decision exactly: the recorded one stands.
    d2 = record_experiment(
        repo, "s1", "e2", kept=True, message="m2", candidate_files={SCRIPT: "LR = 0.09\n"}, also_files=[PLAN]
    )
    assert d2.existing and not d2.kept and d2.branch_sha == d1.branch_sha
    assert git(repo, "rev-list", "--count", "main..golf/s1") == "2"
    assert [e for e, _ in list_experiments(repo, "s1")] == ["e1", "e2"]
    # An old experiment re-recorded later leaves the newer state of the worktree alone.
    (repo / SCRIPT).write_text("LR = 0.05\nWIP = 1\n")
    assert record_experiment(repo, "s1", "e1", kept=True, **args).existing
    assert (repo / SCRIPT).read_text() == "LR = 0.05\nWIP = 1\n"


def test_a_crash_between_the_ref_and_the_branch_update_is_completed_on_rerecord(repo):
    started(repo)
    base = head_sha(repo)
    rec = record_experiment(repo, "s1", "e1", "m", True, {SCRIPT: "LR = 0.05\n"}, [])
    # Put the repository in the state a SIGKILL right after the ref write leaves: ref set, branch not moved.
    git(repo, "update-ref", "refs/heads/golf/s1", base)
    git(repo, "reset", "-q", "--hard")
    (repo / SCRIPT).write_text("LR = 0.05\n")
    again = record_experiment(repo, "s1", "e1", "m", True, {SCRIPT: "LR = 0.05\n"}, [])
    assert again.existing and again.candidate_sha == rec.candidate_sha == head_sha(repo)
    assert status(repo) == ""
    # Same for a discard interrupted before its bookkeeping commit.
    (repo / SCRIPT).write_text("LR = 0.07\n")
    d = record_experiment(repo, "s1", "e2", "m2", False, {SCRIPT: "LR = 0.07\n"}, [])
    git(repo, "update-ref", "refs/heads/golf/s1", rec.candidate_sha)
    (repo / SCRIPT).write_text("LR = 0.07\n")
    d2 = record_experiment(repo, "s1", "e2", "m2", False, {SCRIPT: "LR = 0.07\n"}, [])
    assert d2.existing and not d2.kept and d2.candidate_sha == d.candidate_sha
    assert git(repo, "log", "-1", "--format=%s", "golf/s1").startswith("discard e2:")
    assert (repo / SCRIPT).read_text() == "LR = 0.05\n"
    assert git(repo, "rev-list", "--count", "main..golf/s1") == "2"


def test_recording_never_touches_unnamed_files_or_their_index_entries(repo):
    (repo / "notes.txt").write_text("staged user edit\n")
    git(repo, "add", "notes.txt")
    (repo / "notes.txt").write_text("staged user edit\nplus an unstaged line\n")
    (repo / "scratch.py").write_text("print('mine')\n")
    start_session(repo, "s1", allow_dirty=True)
    before = status(repo)
    staged_blob = git(repo, "rev-parse", ":notes.txt")
    record_experiment(repo, "s1", "e1", "m", True, {SCRIPT: "LR = 0.05\n"}, [])
    record_experiment(repo, "s1", "e2", "m", False, {SCRIPT: "LR = 0.06\n"}, [])
    assert status(repo) == before
    assert git(repo, "rev-parse", ":notes.txt") == staged_blob
    assert (repo / "notes.txt").read_text() == "staged user edit\nplus an unstaged line\n"
    assert (repo / "scratch.py").read_text() == "print('mine')\n"
    assert "notes.txt" not in git(repo, "diff", "--name-only", "main", "golf/s1")


def test_a_plan_edited_after_recording_is_left_on_disk_as_an_uncommitted_change(repo):
    started(repo)
    (repo / PLAN).write_text("# Plan v2\n")
    rec = record_experiment(repo, "s1", "e1", "m", False, {SCRIPT: "LR = 0.05\n"}, [PLAN])
    assert script_at(repo, rec.branch_sha, PLAN) == "# Plan v2\n"
    (repo / PLAN).write_text("# Plan v3, typed by the human meanwhile\n")
    record_experiment(repo, "s1", "e1", "m", False, {SCRIPT: "LR = 0.05\n"}, [PLAN])  # a resume
    assert (repo / PLAN).read_text() == "# Plan v3, typed by the human meanwhile\n"
    assert status(repo) == f" M {PLAN}"


def test_restore_incumbent_puts_named_files_back_and_nothing_else(repo):
    started(repo)
    (repo / SCRIPT).write_text("half-applied candidate\n")
    (repo / "trainer/extra.py").write_text("candidate helper\n")
    (repo / "notes.txt").write_text("user edit\n")
    restore_incumbent(repo, [SCRIPT, "trainer/extra.py"])
    assert (repo / SCRIPT).read_text() == INCUMBENT
    assert not (repo / "trainer/extra.py").exists()
    assert status(repo) == " M notes.txt"


def test_experiments_are_listed_in_order_with_their_scripts(repo):
    started(repo)
    for i in range(3):
        record_experiment(repo, "s1", f"e{i}", f"try {i}", i != 1, {SCRIPT: f"LR = 0.0{i}\n"}, [])
    listed = list_experiments(repo, "s1")
    assert [e for e, _ in listed] == ["e0", "e1", "e2"]
    assert [script_at(repo, sha, SCRIPT) for _, sha in listed] == [
        "LR = 0.00\n",
        "LR = 0.01\n",
        "LR = 0.02\n",
    ]
    assert script_at(repo, "HEAD", SCRIPT) == "LR = 0.02\n"
    assert git(repo, "rev-parse", "refs/golf/s1/e2^") == git(repo, "rev-parse", "HEAD~1")  # e1's discard
    assert list_experiments(repo, "other") == [] and experiment_commit(repo, "s1", "nope") is None
    with pytest.raises(GitRecordsError, match="not in HEAD"):
        script_at(repo, "HEAD", "trainer/missing.py")


def test_commits_use_the_configured_identity_or_the_pgolf_fallback(repo):
    started(repo)
    rec = record_experiment(repo, "s1", "e1", "m", True, {SCRIPT: "LR = 0.05\n"}, [])
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", rec.candidate_sha) == (
        f"{FALLBACK_NAME} <{FALLBACK_EMAIL}>|{FALLBACK_NAME} <{FALLBACK_EMAIL}>"
    )
    git(repo, "config", "user.name", "Ada")
    git(repo, "config", "user.email", "ada@example.com")
    rec = record_experiment(repo, "s1", "e2", "m", True, {SCRIPT: "LR = 0.06\n"}, [])
    assert git(repo, "log", "-1", "--format=%an <%ae>", rec.candidate_sha) == "Ada <ada@example.com>"


# ------------------------------------------------------------------------------------------ stale locks


def test_locks_left_by_a_killed_git_are_removed_and_named(repo):
    from memory.git_records import clear_stale_locks

    started(repo)
    assert clear_stale_locks(repo) == []
    (repo / ".git/index.lock").write_text("")
    (repo / ".git/refs/heads/golf/s1.lock").write_text("")
    with pytest.raises(GitRecordsError, match="s1.lock.: File exists"):  # a stale lock stops every write
        record_experiment(repo, "s1", "e001-a", "a", True, {SCRIPT: "LR = 0.05\n"})
    assert clear_stale_locks(repo) == ["index.lock", "refs/heads/golf/s1.lock"]
    record_experiment(repo, "s1", "e001-a", "a", True, {SCRIPT: "LR = 0.05\n"})
    assert git(repo, "show", "golf/s1:" + SCRIPT) == "LR = 0.05"


def test_a_lock_is_left_alone_while_a_git_process_works_in_the_repository(repo):
    from memory.git_records import clear_stale_locks

    (repo / ".git/index.lock").write_text("")
    live = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=repo / "trainer", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        # one answered request proves git has started and set itself up in the repository
        live.stdin.write(b"HEAD\n")
        live.stdin.flush()
        assert live.stdout.readline().split()[1] == b"commit"
        with pytest.raises(GitRecordsError, match=rf"held by a running git \(pid {live.pid}: git cat-file"):
            clear_stale_locks(repo)
        assert (repo / ".git/index.lock").exists()
    finally:
        live.stdin.close()
        live.wait(timeout=30)
    assert clear_stale_locks(repo) == ["index.lock"]
