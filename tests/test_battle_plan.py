"""battle_plan.md: the human owns the file, the agent owns its blocks, and neither loses the other's text."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from memory.battle_plan import (
    BLOCK_NAMES,
    BattlePlanError,
    _atomic_edit,
    human_fingerprint,
    load_plan,
    parse_plan,
    render_confirmed,
    render_dead_ends,
    render_preset_worth,
    set_queue_state,
    write_blocks,
)
from memory.records import FindingRecord
from testing.shipped import shipped_text

REPO = Path(__file__).resolve().parents[1]

PLAN = """\
# Plan

Some prose the human wrote.

## Directives

- prefer cheap techniques
- never touch the tokenizer
  continuation text is commentary, not a new directive

## Budget

- tier: cpu-tiny
- minutes: 7.5
- experiments: 4
- dollars: $2.50
- approve_finals: yes

## Queue

A sentence about the queue.

- [ ] value_residual: VALUE_RESIDUAL=1 — -0.015 on a proxy (priority 2)
- [x] smear_gate: SMEAR_GATE=1
- [-] ttt_pre_score — illegal (PRs #338, #398)
- [~] bigram_hash: BIGRAM_HASH_BUCKETS=2048 MODEL_DIM=96 (priority 1)
- [ ] ema
  - an indented sub-bullet is the human's comment

## Agent

<!-- golf:begin confirmed -->
| old | table |
<!-- golf:end confirmed -->

Human text between blocks.

<!-- golf:begin log -->
<!-- golf:end log -->
"""


def write(tmp_path: Path, text: str = PLAN) -> Path:
    p = tmp_path / "battle_plan.md"
    p.write_text(text, encoding="utf-8")
    return p


def finding(technique: str, status: str, delta: float, **kw) -> FindingRecord:
    return FindingRecord(
        session="s1",
        technique=technique,
        status=status,
        tier="cpu-smoke",
        delta=delta,
        ci_low=delta - 0.002,
        ci_high=delta + 0.002,
        p_value=0.004,
        n=3,
        experiment=f"e-{technique}",
        at="2026-04-30T12:00:00+00:00",
        **kw,
    )


# ------------------------------------------------------------------------------------------ reading


def test_sections_queue_and_blocks_are_parsed(tmp_path):
    plan = load_plan(write(tmp_path))
    assert plan.directives == ["prefer cheap techniques", "never touch the tokenizer"]
    b = plan.budget
    assert (b.tier, b.minutes, b.experiments, b.dollars, b.approve_finals) == ("cpu-tiny", 7.5, 4, 2.5, True)
    assert b.final_dollars == 0.0 and b.seeds_max is None
    assert b.model_fields_set == {"tier", "minutes", "experiments", "dollars", "approve_finals"}

    by = {q.technique: q for q in plan.queue}
    assert list(by) == ["value_residual", "smear_gate", "ttt_pre_score", "bigram_hash", "ema"]
    vr = by["value_residual"]
    assert (vr.env, vr.notes, vr.priority, vr.state) == (
        {"VALUE_RESIDUAL": "1"},
        "-0.015 on a proxy",
        2,
        "todo",
    )
    assert PLAN.splitlines()[vr.line - 1].startswith("- [ ] value_residual")
    assert by["smear_gate"].state == "done"
    assert by["ttt_pre_score"].state == "banned" and by["ttt_pre_score"].notes == "illegal (PRs #338, #398)"
    assert by["bigram_hash"].state == "retest"
    assert by["bigram_hash"].env == {"BIGRAM_HASH_BUCKETS": "2048", "MODEL_DIM": "96"}
    assert by["ema"].env == {} and by["ema"].effective_env() == {"EMA_DECAY": "0.997"}

    # Pending = todo + retest, by priority, unprioritised items after in file order.
    assert [q.technique for q in plan.pending()] == ["bigram_hash", "value_residual", "ema"]
    assert plan.blocks == {"confirmed": "| old | table |\n", "log": ""}


def test_missing_sections_get_defaults(tmp_path):
    plan = parse_plan("# just a title\n\nnothing else\n")
    assert plan.directives == [] and plan.queue == [] and plan.blocks == {}
    b = plan.budget
    assert (b.tier, b.minutes, b.experiments, b.dollars, b.final_dollars, b.approve_finals) == (
        "cpu-smoke",
        None,
        None,
        0.0,
        0.0,
        False,
    )


@pytest.mark.parametrize(
    "bad, line, words",
    [
        ("<!-- golf:begin log -->\ntext\n", 1, "never closed"),
        (
            "<!-- golf:begin log -->\n<!-- golf:end log -->\n\n<!-- golf:begin log -->\n<!-- golf:end log -->\n",
            4,
            "duplicate block 'log'",
        ),
        ("<!-- golf:begin log -->\n<!-- golf:begin frontier -->\n", 2, "cannot nest"),
        ("x\n<!-- golf:begin scratch -->\n<!-- golf:end scratch -->\n", 2, "unknown agent block 'scratch'"),
        ("x\n\n<!-- golf:end log -->\n", 3, "without a matching begin"),
        ("<!-- golf:begin log\n", 1, "malformed agent marker"),
        ("<!-- golf:begin log -->\n<!-- golf:end frontier -->\n", 2, "closes block 'log'"),
        ("## Queue\n\n- [ ] ok: A=1\n- value_residual VALUE_RESIDUAL=1\n", 4, "bad queue line"),
        ("## Queue\n- [?] value_residual\n", 2, "unknown checkbox"),
        ("## Queue\n- [ ] ValueResidual: X=1\n", 2, "not snake_case"),
        (
            "## Queue\n- [ ] value_residual: VALUE_RESIDUAL=1 lowercase words\n",
            2,
            "bad ENV token 'lowercase'",
        ),
        ("## Budget\n- tier: cpu-smoke\n- minutes: soon\n", 3, "bad budget value minutes"),
        ("## Budget\n- approve_finals: maybe\n", 2, "expected yes or no"),
        ("## Budget\n- dollars: -5\n", 2, "non-negative"),
        ("## Budget\n- experiments: 2.5\n", 2, "bad budget value experiments"),
        ("## Budget\n- minuts: 15\n", 2, "bad budget line"),
        ("## Budget\n- minutes: 15\n- minutes: 20\n", 3, "repeated"),
        ("## Queue\n- [ ] a\n\n## Queue\n", 4, "second '## Queue' section"),
    ],
)
def test_malformed_plans_name_the_file_and_line(tmp_path, bad, line, words):
    p = write(tmp_path, "# Plan\n\n" + bad)
    with pytest.raises(BattlePlanError) as e:
        load_plan(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line + 2}:"), msg
    assert words in msg, msg


def test_marker_text_mentioned_inline_is_not_a_marker():
    plan = parse_plan("# Plan\n\nThe agent writes between `<!-- golf:begin NAME -->` lines.\n")
    assert plan.blocks == {}


def test_budget_none_words_and_inline_comments():
    plan = parse_plan(
        "## Budget\n- minutes: none\n- experiments: 12 — roughly a quarter hour\n"
        "- seeds_max: 3 # tier says 4\n"
    )
    assert (plan.budget.minutes, plan.budget.experiments, plan.budget.seeds_max) == (None, 12, 3)


# ------------------------------------------------------------------------------------------ writing


def test_write_blocks_replaces_only_block_contents(tmp_path):
    p = write(tmp_path)
    write_blocks(p, {"confirmed": "| new | table |\n| 1 | 2 |\n", "log": "- started"})
    text = p.read_text()
    assert "| old | table |" not in text
    assert load_plan(p).blocks == {"confirmed": "| new | table |\n| 1 | 2 |\n", "log": "- started\n"}
    # Every human line is still there, in order.
    human = [ln for ln in PLAN.splitlines() if ln != "| old | table |"]
    assert [
        ln for ln in text.splitlines() if ln not in ("| new | table |", "| 1 | 2 |", "- started")
    ] == human
    assert not [f for f in tmp_path.iterdir() if f.name != "battle_plan.md"], "temp file left behind"


def test_human_edit_between_load_and_write_survives(tmp_path):
    p = write(tmp_path)
    plan = load_plan(p)
    # The human adds a directive and a queue item while the session is computing its tables.
    edited = p.read_text().replace(
        "- never touch the tokenizer\n", "- never touch the tokenizer\n- stop after value_residual\n"
    )
    edited = edited.replace("- [ ] ema\n", "- [ ] ema\n- [ ] xsa: XSA_LAST_N=2\n")
    p.write_text(edited)
    assert human_fingerprint(p) != plan.human_sha  # the session can notice the edit
    write_blocks(p, {"confirmed": render_confirmed([finding("value_residual", "confirmed", -0.01)])})
    after = load_plan(p)
    assert "stop after value_residual" in after.directives
    assert after.item("xsa") is not None and after.item("xsa").env == {"XSA_LAST_N": "2"}
    assert "value_residual" in after.blocks["confirmed"]


def test_human_edit_racing_the_replace_is_redone_not_lost(tmp_path):
    """The file is re-read after the new version is staged: a save landing then is kept, and the block too."""
    p = write(tmp_path)

    def human_saves():
        p.write_text(p.read_text().replace("Some prose the human wrote.", "Prose rewritten mid-write."))

    _atomic_edit(p, lambda t: t.replace("| old | table |", "| agent | table |"), _between=human_saves)
    text = p.read_text()
    assert "Prose rewritten mid-write." in text and "| agent | table |" in text
    assert not [f for f in tmp_path.iterdir() if f.name != "battle_plan.md"]


def test_missing_blocks_are_appended_at_the_end(tmp_path):
    p = write(tmp_path, "# Plan\n\n## Queue\n- [ ] ema\n")  # no trailing agent area at all
    write_blocks(p, {"dead_ends": "| t |\n", "frontier": ""})
    text = p.read_text()
    assert text.startswith("# Plan\n\n## Queue\n- [ ] ema\n\n### Dead ends\n")
    plan = load_plan(p)
    assert plan.blocks == {"dead_ends": "| t |\n", "frontier": ""}
    assert [q.technique for q in plan.queue] == ["ema"]
    write_blocks(p, {"dead_ends": "| u |\n"})  # now present: replaced, not appended again
    assert p.read_text().count("golf:begin dead_ends") == 1


def test_block_writes_do_not_change_the_human_fingerprint(tmp_path):
    p = write(tmp_path)
    before = human_fingerprint(p)
    assert before == load_plan(p).human_sha
    write_blocks(p, {"confirmed": "anything\n", "log": "more\n"})
    assert human_fingerprint(p) == before
    p.write_text(p.read_text().replace("Human text between blocks.", "Edited between blocks."))
    assert human_fingerprint(p) != before


def test_write_blocks_refuses_unknown_names_marker_content_and_malformed_files(tmp_path):
    p = write(tmp_path)
    original = p.read_bytes()
    with pytest.raises(BattlePlanError, match="unknown agent block 'notes'"):
        write_blocks(p, {"notes": "x"})
    with pytest.raises(BattlePlanError, match="markers"):
        write_blocks(p, {"log": "ok\n<!-- golf:end log -->\nsmuggled\n"})
    assert p.read_bytes() == original
    broken = write(tmp_path, PLAN.replace("<!-- golf:end log -->\n", ""))
    with pytest.raises(BattlePlanError, match=r"battle_plan.md:\d+: block 'log' is never closed"):
        write_blocks(broken, {"confirmed": "x\n"})


def test_crlf_files_stay_crlf(tmp_path):
    p = tmp_path / "battle_plan.md"
    p.write_bytes(PLAN.replace("\n", "\r\n").encode())
    write_blocks(p, {"log": "a\nb\n"})
    data = p.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert load_plan(p).blocks["log"] == "a\r\nb\r\n"


# ------------------------------------------------------------------------------------------ queue state


def test_set_queue_state_flips_one_checkbox_and_nothing_else(tmp_path):
    p = write(tmp_path)
    item = set_queue_state(p, "value_residual", "done")
    assert item is not None and item.state == "done"
    expected = PLAN.replace("- [ ] value_residual:", "- [x] value_residual:")
    assert p.read_text() == expected
    set_queue_state(p, "bigram_hash", "banned")
    set_queue_state(p, "ttt_pre_score", "retest")
    by = {q.technique: q.state for q in load_plan(p).queue}
    assert by == {
        "value_residual": "done",
        "smear_gate": "done",
        "ttt_pre_score": "retest",
        "bigram_hash": "banned",
        "ema": "todo",
    }
    assert p.read_text().count("\n") == PLAN.count("\n")


def test_set_queue_state_for_an_unqueued_idea_changes_nothing(tmp_path):
    p = write(tmp_path)
    mtime = p.stat().st_mtime_ns
    assert set_queue_state(p, "llm_invented_idea", "done") is None
    assert p.read_text() == PLAN and p.stat().st_mtime_ns == mtime


def test_set_queue_state_with_duplicate_ids_needs_env(tmp_path):
    p = write(tmp_path, "## Queue\n- [ ] ema: EMA_DECAY=0.997\n- [ ] ema: EMA_DECAY=0.99\n")
    with pytest.raises(BattlePlanError, match=r":3: technique 'ema' is queued on lines 2, 3"):
        set_queue_state(p, "ema", "done")
    set_queue_state(p, "ema", "done", env={"EMA_DECAY": "0.99"})
    assert p.read_text() == "## Queue\n- [ ] ema: EMA_DECAY=0.997\n- [x] ema: EMA_DECAY=0.99\n"


# ------------------------------------------------------------------------------------------ rendering


def test_render_confirmed_and_dead_ends_round_trip_through_the_plan(tmp_path):
    p = write(tmp_path)
    findings = [
        finding("smear_gate", "confirmed", -0.004),
        finding("value_residual", "confirmed", -0.012),
        finding("ema", "rejected", 0.006, note="harmful | short runs"),
        finding("xsa", "inconclusive", -0.001),
    ]
    confirmed = render_confirmed(findings)
    rows = confirmed.strip().splitlines()
    assert rows[0] == "| technique | tier | delta bpb | 95% CI | p | n | date | experiment |"
    assert rows[2] == (
        "| value_residual | cpu-smoke | -0.0120 | [-0.0140, -0.0100] | 0.004 | 3 | 2026-04-30 "
        "| e-value_residual |"
    )
    assert len(rows) == 4 and "smear_gate" in rows[3]  # biggest win first; inconclusive left out
    dead = render_dead_ends(findings)
    assert "| ema | cpu-smoke | +0.0060 |" in dead and "harmful \\| short runs" in dead
    assert "xsa" not in dead and "value_residual" not in dead
    write_blocks(p, {"confirmed": confirmed, "dead_ends": dead})
    plan = load_plan(p)
    assert plan.blocks["confirmed"] == confirmed and plan.blocks["dead_ends"] == dead


def test_empty_tables_are_just_headers():
    assert render_confirmed([]).count("\n") == 2
    assert render_dead_ends([]).startswith("| technique |")


# ------------------------------------------------------------------------------------------ shipped plan


def test_shipped_battle_plan_is_a_real_starting_plan():
    """The plan as the project ships it (from git: a session branch fills in its blocks, a human edits it)
    parses, starts with empty agent blocks and a free local budget, and queues flag changes, each with its
    source. Its prose is the human's, not tested here."""
    plan = parse_plan(shipped_text("battle_plan.md"))
    b = plan.budget
    assert (b.tier, b.dollars, b.approve_finals) == ("cpu-smoke", 0.0, False)
    assert set(plan.blocks) == set(BLOCK_NAMES)
    assert plan.blocks["confirmed"] == render_confirmed([])
    assert plan.blocks["dead_ends"] == render_dead_ends([])
    assert plan.blocks["preset_worth"] == render_preset_worth([])
    assert plan.directives

    by = {q.technique: q for q in plan.queue}
    assert by["ttt_pre_score"].state == "banned"  # scoring after training on the val tokens is illegal
    pending = plan.pending()
    assert len(pending) >= 8
    assert [q.priority for q in pending] == sorted(q.priority for q in pending)  # file order = priority order
    for q in pending:
        assert q.env, f"{q.technique}: the playbook tests flag changes"
        assert re.search(r"PR #\d+|PRs? #", q.notes), f"{q.technique}: note without a source"


def test_shipped_battle_plan_starts_from_the_frontier_and_queues_only_what_changes_it():
    """Ablations and new ideas on top of the best merged record, not rediscoveries below it."""
    from memory.knobs import read_knobs
    from memory.presets import load_presets

    plan = parse_plan(shipped_text("battle_plan.md"))
    assert plan.budget.start == "frontier"
    if not (REPO / "presets.toml").is_file():
        pytest.skip("presets.toml (and the trainer flags it sets) come from the trainer branch")
    frontier = load_presets(REPO / "presets.toml")["frontier"]
    knobs = {k.name for k in read_knobs(shipped_text("trainer/train_gpt.py"))}
    pending = plan.pending()
    for q in pending:
        assert set(q.env) <= knobs, (q.technique, sorted(set(q.env) - knobs))
        assert any(frontier.env.get(k) != v for k, v in q.env.items()), (
            f"{q.technique} is already the frontier"
        )
    # ablations of the frontier come first: each turns off something the preset switches on
    first = pending[0]
    assert all(k in frontier.env and v in ("0", "0.0") for k, v in first.env.items()), first


def test_the_shipped_plan_is_read_from_git_whatever_the_checkout_holds(tmp_path):
    """After `golf run` the checkout sits on the session branch with filled-in blocks, maybe a human's edit."""

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    repo = tmp_path / "repo"
    repo.mkdir()
    plan = repo / "battle_plan.md"
    git("init", "-q", "-b", "main")
    plan.write_text("as shipped\n")
    git("add", "-A")
    git("commit", "-qm", "pgolf: the project")
    git("checkout", "-qb", "golf/20260101-120000")
    for subject in (
        "e001-smear_gate: smear_gate -> confirmed (kept)",
        "discard e002-ema: ema -> rejected",
        "session 20260101-120000: battle plan after the session (planner stopped)",
    ):
        plan.write_text(subject + "\n")
        git("commit", "-qam", subject)
    plan.write_text("a human's edit\n")
    assert shipped_text("battle_plan.md", repo) == "as shipped\n"
    not_git = tmp_path / "unpacked"
    not_git.mkdir()
    (not_git / "battle_plan.md").write_text("from an sdist\n")
    assert shipped_text("battle_plan.md", not_git) == "from an sdist\n"
