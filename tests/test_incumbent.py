"""The incumbent has one home: the script and env a session stands on, read from git and the ledger.

Real git repositories in tmp dirs; the machine's git identity is hidden so the fallback identity is used.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from memory import git_records, incumbent
from memory.incumbent import INCUMBENT_FILE
from memory.records import DecisionRecord, EventRecord

SCRIPT = "trainer/train_gpt.py"


@pytest.fixture(autouse=True)
def no_git_identity(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        for part in ("NAME", "EMAIL"):
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
    (root / SCRIPT).write_text("LR = 0.04\n")
    (root / "battle_plan.md").write_text("# Plan\n")
    (root / INCUMBENT_FILE).write_text(incumbent.file_text({"GATED_ATTENTION": "1"}, "e005-gated_attention"))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def start(session: str, sha: str) -> EventRecord:
    return EventRecord(session=session, event="session_start", detail={"start_sha": sha})


def kept(session: str, exp: str, env: dict[str, str], keep: bool = True) -> DecisionRecord:
    return DecisionRecord(
        session=session,
        experiment=exp,
        candidate=exp.split("-", 1)[1],
        tier="t",
        hardware="h",
        outcome="confirmed" if keep else "rejected",
        kept=keep,
        env=env,
    )


def test_a_new_session_starts_from_the_incumbent_env_committed_on_its_branch(tmp_path):
    ws = tmp_path / "repo"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    assert incumbent.committed_env(ws) == {}  # no commit, no file: the tier's env alone
    (ws / INCUMBENT_FILE).write_text(incumbent.file_text({"GATED_ATTENTION": "1"}, "e005-gated_attention"))
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "kept")
    base = incumbent.committed_env(ws)
    assert base == {"GATED_ATTENTION": "1"}
    assert incumbent.current_env([], "new-session", base) == {"GATED_ATTENTION": "1"}
    win = kept("new-session", "e001-x", {"GATED_ATTENTION": "1", "MLP_MULT": "3"})
    assert incumbent.current_env([win], "new-session", base) == {"GATED_ATTENTION": "1", "MLP_MULT": "3"}


def test_a_malformed_or_missing_incumbent_file_means_no_overrides(repo, tmp_path):
    assert incumbent.env_from_text("{not json") == {}
    assert incumbent.env_from_text('["a list"]') == {}
    assert incumbent.env_from_text('{"env": {"A": 1}}') == {"A": "1"}
    assert incumbent.committed_env(repo, "no-such-rev") == {}
    assert incumbent.committed_env(tmp_path / "not-a-repo") == {}
    assert incumbent.committed_script(tmp_path / "not-a-repo") is None


def test_the_last_session_and_where_it_started_come_from_the_ledger(repo):
    first = git(repo, "rev-parse", "HEAD")
    records = [start("s1", first), EventRecord(session="s1", event="session_end"), start("s2", "abc")]
    assert incumbent.last_session(records) == "s2"
    assert incumbent.last_session([]) is None
    assert incumbent.start_sha(records, "s1") == first
    assert incumbent.start_sha(records, "unknown") == "HEAD"
    (repo / INCUMBENT_FILE).write_text(incumbent.file_text({"MLP_MULT": "3"}, "e002-mlp"))
    git(repo, "commit", "-qam", "later")
    # s1 started before the later commit: its base is what was committed then, not HEAD's
    assert incumbent.base_env(repo, records, "s1") == {"GATED_ATTENTION": "1"}
    assert incumbent.base_env(repo, records, "unknown") == {"MLP_MULT": "3"}


def test_in_a_session_the_incumbent_is_heads_script_with_the_ledgers_env(repo):
    (repo / SCRIPT).write_text("LR = 0.09\n")  # a candidate's edit in the worktree is not the incumbent
    records = [start("s1", git(repo, "rev-parse", "HEAD"))]
    inc = incumbent.in_session(repo, records, "s1")
    assert inc.script == "LR = 0.04\n" and inc.rev == git(repo, "rev-parse", "HEAD")
    assert inc.env == {"GATED_ATTENTION": "1"} and inc.experiment is None
    records += [
        kept("s1", "e001-mlp", {"GATED_ATTENTION": "1", "MLP_MULT": "3"}),
        kept("s1", "e002-ema", {"GATED_ATTENTION": "1", "MLP_MULT": "3", "EMA": "1"}, keep=False),
        kept("other", "e003-x", {"X": "1"}),
    ]
    inc = incumbent.in_session(repo, records, "s1")
    assert inc.env == {"GATED_ATTENTION": "1", "MLP_MULT": "3"}
    assert (inc.experiment, inc.candidate) == ("e001-mlp", "mlp")
    assert incumbent.stack(records, "s1") == ["mlp"]


def test_outside_git_the_working_tree_script_stands_in(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / SCRIPT).write_text("LR = 0.02\n")
    inc = incumbent.in_session(tmp_path, [], "s1")
    assert inc.script == "LR = 0.02\n" and inc.rev is None and inc.env == {}
    assert incumbent.in_session(tmp_path, [], "s1", working_script="X = 1\n").script == "X = 1\n"


def test_a_sessions_incumbent_honours_its_branchs_incumbent_json_even_with_no_keep_in_the_ledger(repo):
    """The finals used to take the env from the session's kept decisions alone: a session that kept
    nothing promoted the bare script, although its branch's incumbent.json said otherwise."""
    git_records.start_session(repo, "s1")
    records = [start("s1", git(repo, "rev-parse", "HEAD"))]
    inc = incumbent.of_session(repo, records, "s1")
    assert inc.env == {"GATED_ATTENTION": "1"} and inc.script == "LR = 0.04\n"
    assert inc.rev == git(repo, "rev-parse", "golf/s1")

    env = {"GATED_ATTENTION": "1", "MLP_MULT": "3"}
    commit = git_records.record_experiment(
        repo,
        "s1",
        "e001-mlp",
        "e001-mlp: kept",
        True,
        candidate_files={SCRIPT: "LR = 0.05\n", INCUMBENT_FILE: incumbent.file_text(env, "e001-mlp")},
        also_files=["battle_plan.md"],
    )
    records.append(kept("s1", "e001-mlp", env))
    git(repo, "checkout", "-q", "main")  # a final runs from any checkout: the branch is what counts
    inc = incumbent.of_session(repo, records, "s1")
    assert (inc.script, inc.env, inc.rev, inc.experiment) == (
        "LR = 0.05\n",
        env,
        commit.branch_sha,
        "e001-mlp",
    )
    # an explicit revision reads script and env from that same commit
    first = git(repo, "rev-parse", "main")
    at_start = incumbent.of_session(repo, records, "s1", rev=first)
    assert (at_start.script, at_start.env) == ("LR = 0.04\n", {"GATED_ATTENTION": "1"})


def test_a_session_with_no_branch_falls_back_to_head_then_the_working_tree(repo, tmp_path):
    records = [kept("gone", "e001-mlp", {"MLP_MULT": "3"})]
    inc = incumbent.of_session(repo, records, "gone")
    assert inc.rev == git(repo, "rev-parse", "HEAD") and inc.env == {"GATED_ATTENTION": "1"}
    plain = tmp_path / "plain"
    (plain / "trainer").mkdir(parents=True)
    (plain / SCRIPT).write_text("LR = 0.01\n")
    inc = incumbent.of_session(plain, records, "gone")
    assert inc.rev is None and inc.script == "LR = 0.01\n" and inc.env == {"MLP_MULT": "3"}


def test_commit_paths_commits_only_the_named_files_and_only_when_they_changed(repo):
    assert incumbent.commit_paths(repo, ["battle_plan.md"], "nothing to do") is None
    (repo / "battle_plan.md").write_text("# Plan\n\nedited\n")
    (repo / SCRIPT).write_text("LR = 0.5\n")  # another dirty file: must stay uncommitted
    sha = incumbent.commit_paths(repo, ["battle_plan.md"], "session s1: battle plan after the session")
    assert sha == git(repo, "rev-parse", "HEAD")
    assert git(repo, "show", "--name-only", "--format=%an <%ae>|%s", "HEAD").splitlines()[:3] == [
        f"{git_records.FALLBACK_NAME} <{git_records.FALLBACK_EMAIL}>|session s1: battle plan after the session",
        "",
        "battle_plan.md",
    ]
    assert git(repo, "status", "--porcelain") == " M trainer/train_gpt.py"
