"""The frontier watcher: the leaderboard as data, technique ids, legality flags, diffs, and a sync
against a fake GitHub API (a real HTTP server on 127.0.0.1 serving testing/fixtures/github)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from memory import frontier as F
from memory.records import FrontierEntry
from memory.workspace import Workspace
from testing.fakes.fake_github import FIXTURES, FakeGitHub
from tools import frontier_sync as S
from tools import registry

NOW = dt.datetime(2026, 5, 2, 12, 0, tzinfo=dt.UTC)
QUEUE = ["value_residual", "bigram_hash", "mlp3x", "ttt_prescore", "smear_gate", "lqer", "warp_drive"]


def by_pr(entries: list[FrontierEntry], pr: str) -> FrontierEntry:
    (hit,) = [e for e in entries if e.pr == pr]
    return hit


@pytest.fixture
def github():
    with FakeGitHub() as gh:
        yield gh


def do_sync(ws: Path, gh: FakeGitHub, **kw) -> S.SyncReport:
    kw.setdefault("token", "")
    kw.setdefault("retry_wait", 0.0)
    return S.sync(ws, base_url=gh.url, now=kw.pop("now", NOW), **kw)


# --- technique identifiers -------------------------------------------------------------------------


def test_phrases_map_to_trainer_ids_and_removals_are_read():
    m = F.map_techniques(
        "sp4096; MLP 4x; WD 0.085; GPTQ; brotli; removed TTT, QAT, gated attention, "
        "value residual, BigramHash, SmearGate"
    )
    assert m.techniques == ["sp4096", "mlp4x", "muon_wd", "gptq", "brotli"]
    assert m.removed == ["ttt", "qat_int6", "gated_attention", "value_residual", "bigram_hash", "smear_gate"]
    assert m.unknown == []

    m = F.map_techniques("XSA on last 4 layers; EMA 0.997 replacing SWA")
    assert (m.techniques, m.removed) == (["xsa", "ema"], ["swa"])


def test_illegal_ttt_is_told_from_legal_score_first_ttt():
    assert F.map_techniques("legal score-first TTT").techniques == ["ttt"]
    assert F.map_techniques("per-document LoRA TTT (score first)").techniques == ["ttt"]
    pre = F.map_techniques("11L XSA + EMA + 3-epoch TTT on validation before scoring (train-then-score)")
    assert pre.techniques == ["layers11", "xsa", "ema", "ttt_prescore"]
    assert "ttt_prescore" in F.map_techniques("11L EMA + 20-epoch pre-eval TTT on validation").techniques


def test_unknown_phrases_are_kept_as_text_and_known_noise_is_not():
    m = F.map_techniques("Hyperbolic Attention Lattice + LQER; warmdown 3500; tuned LRs")
    assert m.techniques == ["lqer"]
    assert m.unknown == ["Hyperbolic Attention Lattice"]


def test_every_phrase_of_the_shipped_leaderboard_is_mapped():
    snap = F.shipped_snapshot()
    assert {p for e in snap.entries for p in e.unknown_phrases} == set()
    table = F.load_synonyms()
    for e in snap.entries:
        assert set(e.techniques) <= set(table.ids)


def test_a_synonym_table_naming_undefined_ids_is_refused(tmp_path):
    bad = tmp_path / "syn.toml"
    bad.write_text("[techniques]\nema = ['ema']\n[exclusive]\nmlp = ['mlp3x', 'mlp4x']\n")
    with pytest.raises(ValueError, match="mlp3x"):
        F.load_synonyms(bad)


# --- flags -----------------------------------------------------------------------------------------


def test_shipped_snapshot_flags_illegal_ttt_and_invalid_byte_count():
    snap = F.shipped_snapshot()
    for pr in ("338", "398"):
        e = by_pr(snap.entries, pr)
        assert F.ILLEGAL_TTT in e.flags and F.REJECTED in e.flags
        assert not F.is_legal_record(e)
    e1184 = by_pr(snap.entries, "1184")
    assert F.INVALID_BYTES in e1184.flags and not F.is_legal_record(e1184)
    assert F.NON_RECORD in by_pr(snap.entries, "413").flags
    best = F.best_legal(snap.entries)
    assert (best.pr, best.val_bpb) == ("1855", 1.0611)
    # legitimate tokenizer records (sp4096, sp8192, CaseOps) moved the frontier a little: not flagged
    for pr in ("1218", "1394", "1729"):
        assert by_pr(snap.entries, pr).flags == [F.MERGED]


def test_rule_checks_use_the_data_not_the_status():
    base = dict(date="2026-04-10", author="x", raw_techniques="", source="pr")
    entries = F.annotate(
        [
            FrontierEntry(val_bpb=1.08, pr="1", status="record", **base),
            FrontierEntry(val_bpb=1.079, pr="2", status="open-claim", bytes_total=16_000_001, **base),
            FrontierEntry(
                val_bpb=1.079, pr="3", status="open-claim", train_time_s=640.0, eval_time_s=601, **base
            ),
            FrontierEntry(
                val_bpb=1.02, pr="4", status="open-claim", **{**base, "raw_techniques": "new tokenizer"}
            ),
            FrontierEntry(
                val_bpb=1.07, pr="5", status="open-claim", **{**base, "raw_techniques": "vocab 2048"}
            ),
            FrontierEntry(val_bpb=0.90, pr="6", status="open-claim", **base),
            FrontierEntry(val_bpb=0.90, pr="7", status="non-record", **base),
            FrontierEntry(
                val_bpb=1.05, pr="8", status="open-claim", **{**base, "raw_techniques": "TTT pre-score"}
            ),
            FrontierEntry(val_bpb=1.079, pr="9", status="open-claim", bytes_total=16_000_000, **base),
        ]
    )
    flags = {e.pr: e.flags for e in entries}
    assert flags["1"] == [F.MERGED]
    assert flags["2"] == [F.OPEN_CLAIM, F.OVER_CAP]
    assert flags["3"] == [F.OPEN_CLAIM, F.OVER_TRAIN_TIME, F.OVER_EVAL_TIME]
    assert flags["4"] == [F.OPEN_CLAIM, F.INVALID_BYTES]  # 0.06 below with a changed tokenizer
    assert flags["5"] == [F.OPEN_CLAIM]  # a tokenizer change that moves the score a little
    assert flags["6"] == [F.OPEN_CLAIM, F.IMPLAUSIBLE]
    assert flags["7"] == [F.NON_RECORD]  # unlimited compute is expected to beat the 10-minute frontier
    assert flags["8"] == [F.OPEN_CLAIM, F.ILLEGAL_TTT]
    assert flags["9"] == [F.OPEN_CLAIM]  # the cap is inclusive


# --- stack, obsolescence and diffs -----------------------------------------------------------------


def test_best_stack_follows_removals_and_exclusive_choices():
    state = F.stack_state(F.shipped_snapshot().entries)
    assert {"sp8192", "mlp4x", "lqer", "depth_recurrence", "parallel_residuals", "ttt"} <= set(state.stack)
    assert not {"sp4096", "mlp3x", "value_residual", "bigram_hash", "qat_int6", "ttt_prescore"} & set(
        state.stack
    )
    assert state.dropped["value_residual"] == "1218" and state.dropped["sp4096"] == "1394"
    assert "smear_gate" in state.stack  # removed by #1218, brought back by #1667 and #1851


def test_diff_of_the_shipped_snapshot_marks_the_queue_obsolete_ids():
    snap = F.shipped_snapshot()
    d = F.diff(snap, snap, QUEUE, base_name="shipped", now=NOW)
    notes = {n.technique: n for n in d.obsolete}
    assert set(notes) == {"value_residual", "bigram_hash", "mlp3x", "ttt_prescore"}
    assert notes["value_residual"].by == "1218"
    assert notes["mlp3x"].reason == "superseded by mlp4x (#1218)"
    assert notes["ttt_prescore"].reason.startswith("illegal")
    assert d.queue_unknown == ["warp_drive"]
    assert (d.new_entries, d.changes, d.entered, d.left, d.new_best) == ([], [], [], [], False)
    assert [e.pr for e in d.rule_flagged] == ["1184", "398", "338"]


def test_diff_reports_new_entries_new_best_and_stack_changes():
    old = F.shipped_snapshot()
    new_rec = FrontierEntry(
        date="2026-04-29",
        val_bpb=1.0590,
        pr="1903",
        author="Ada",
        status="merged",
        raw_techniques="LQER + Value Residual revival",
        source="pr",
    )
    cur = F.FrontierSnapshot(
        taken_at="2026-05-01T00:00:00+00:00",
        source="github:o/r",
        entries=F.merge_entries(old.entries, [new_rec]),
    )
    d = F.diff(old, cur, QUEUE, base_name="shipped", current_name="frontier-x", now=NOW)
    assert [e.pr for e in d.new_entries] == ["1903"]
    assert d.new_best and d.best.pr == "1903" and d.previous_best.pr == "1855"
    assert d.entered == ["value_residual"] and d.left == []
    assert "value_residual" not in {n.technique for n in d.obsolete}


def test_digest_is_bounded_and_block_names_the_flags():
    snap = F.shipped_snapshot()
    d = F.diff(snap, snap, QUEUE, base_name="shipped", now=NOW)
    for n in (120, 400, 2000):
        assert len(F.frontier_digest(d, n)) <= n
    full = F.frontier_digest(d, 20_000)
    assert full.splitlines()[1].startswith("Best legal record: 1.0611 (#1855")
    assert "#338 1.1254 illegal_ttt" in full and "#1184 0.9485 invalid_byte_count" in full
    block = F.frontier_block_markdown(d)
    assert "**Best legal record:** 1.0611 (#1855" in block
    assert "value_residual (dropped by #1218, not re-added since)" in block
    assert "#398 1.1213: test-time training on validation tokens before scoring" in block


# --- snapshots and the offline fallback ------------------------------------------------------------


def test_offline_the_shipped_snapshot_is_used_and_its_age_is_told(tmp_path):
    text = F.frontier_show(tmp_path, now=NOW)
    assert text.startswith("Frontier: shipped snapshot (offline data) taken 2026-04-27 00:00 UTC, 6 days old")
    assert "Best legal record: 1.0611 (#1855" in text
    assert "#338 1.1254: " in text and "#1184 0.9485: byte accounting anomaly" in text
    row_338 = next(line for line in text.splitlines() if " #338 " in line)
    assert "1.1254!" in row_338 and "illegal_ttt" in row_338


def test_the_latest_readable_stored_snapshot_wins(tmp_path):
    d = Workspace.at(tmp_path).frontier_dir
    older = F.FrontierSnapshot(
        taken_at="2026-04-30T00:00:00+00:00", source="github:o/r", entries=F.shipped_snapshot().entries[:3]
    )
    F.save_snapshot(d, older)
    (d / "frontier-20260501T000000Z.json").write_text("{ torn")
    cur = F.current(d)
    assert cur.name == "frontier-20260430T000000Z" and len(cur.snapshot.entries) == 3
    assert "snapshot of github:o/r taken 2026-04-30 00:00 UTC, 2 days old" in F.frontier_show(
        tmp_path, now=NOW
    )


def test_snapshots_are_never_overwritten_and_old_ones_are_pruned(tmp_path):
    snap = F.FrontierSnapshot(taken_at="2026-04-30T00:00:00+00:00", source="github:o/r")
    paths = [F.save_snapshot(tmp_path, snap) for _ in range(F.KEEP_SNAPSHOTS + 3)]
    assert len(set(paths)) == len(paths)
    kept = F.list_snapshots(tmp_path)
    assert len(kept) == F.KEEP_SNAPSHOTS and kept[-1] == paths[-1]


# --- sync against the fake GitHub ------------------------------------------------------------------


def test_sync_writes_a_snapshot_joining_readme_records_and_pull_requests(tmp_path, github):
    r = do_sync(tmp_path, github)
    assert r.ok and Path(r.snapshot).exists()
    assert (r.readme_rows, r.records, r.pull_requests) == (4, 3, 8)
    assert any("2026-04-28_BrokenJson/submission.json: malformed" in w for w in r.warnings)

    entries = F.current(Workspace.at(tmp_path).frontier_dir).snapshot.entries
    new = by_pr(entries, "1903")  # README row + submission.json + merged PR, joined
    assert new.source == "readme+records+pr" and new.val_bpb == 1.0590
    assert (new.bytes_total, new.train_time_s, new.eval_time_s) == (15_998_000, 598.0, 512.5)
    assert new.techniques == ["lqer", "value_residual"] and new.flags == [F.MERGED]
    assert F.best_legal(entries).pr == "1903"

    assert by_pr(entries, "1855").source == "snapshot+readme+records"  # matched by author and score
    assert by_pr(entries, "1851").flags == [F.MERGED]  # a merged PR folded into its shipped row
    assert by_pr(entries, "1900").flags == [F.OPEN_CLAIM, F.OVER_CAP]  # size read from the PR body
    assert by_pr(entries, "1901").flags == [F.REJECTED, F.ILLEGAL_TTT]
    assert by_pr(entries, "1902").flags == [F.OPEN_CLAIM, F.INVALID_BYTES]
    assert by_pr(entries, "1905").unknown_phrases == ["Hyperbolic Attention Lattice"]
    assert by_pr(entries, "1898").flags == [F.NON_RECORD]
    four_hours = by_pr(entries, "records/track_non_record_16mb/2026-04-20_FourHourRun")
    assert four_hours.flags == [F.NON_RECORD, F.OVER_CAP, F.OVER_TRAIN_TIME]
    assert not [e for e in entries if e.pr == "1904"]  # a typo fix claims nothing
    # shipped knowledge survives a sync: GitHub's window does not reach #338
    assert F.ILLEGAL_TTT in by_pr(entries, "338").flags and F.INVALID_BYTES in by_pr(entries, "1184").flags

    assert by_pr(entries, "1897").flags == [F.REJECTED]  # closed unmerged, no rule failure
    table = F.frontier_show(tmp_path, now=NOW)
    assert "#1897" not in table and "1 more rows hidden" in table
    assert "#1897" in F.frontier_show(tmp_path, now=NOW, show_all=True)
    assert " #1901 " in table and "1.0400!" in table

    text = F.frontier_diff_text(tmp_path, QUEUE, now=NOW)
    assert "New best legal record: 1.0590 (#1903, Ada Tester, 2026-04-29) (was 1.0611 (#1855" in text
    assert "Best stack: entered value_residual; left none." in text
    assert "new: 1.0550 (#1900, hopeful, 2026-04-28) [over_artifact_cap]" in text
    assert "value_residual (" not in text.split("**Obsolete in our queue:**")[1].splitlines()[0]
    assert "Hyperbolic Attention Lattice" in text


def test_second_sync_is_conditional_and_fetches_no_blob_twice(tmp_path, github):
    assert do_sync(tmp_path, github).ok
    first = len(github.log)
    r = do_sync(tmp_path, github)
    second = github.log[first:]
    assert r.ok and r.not_modified == len(second) == 4
    assert all(s.if_none_match and s.status == 304 for s in second)
    assert not [s for s in second if "/git/blobs/" in s.path]
    assert len(F.list_snapshots(Workspace.at(tmp_path).frontier_dir)) == 2


def test_diff_since_the_last_session_starts_from_the_seen_snapshot(tmp_path, github):
    do_sync(tmp_path, github)
    d = Workspace.at(tmp_path).frontier_dir
    seen = F.mark_seen(d)
    do_sync(tmp_path, github)
    assert "No change since " + seen in F.frontier_diff_text(tmp_path, now=NOW)

    github.pulls.insert(
        0,
        {
            "number": 1910,
            "title": "Record: LQER + XSA all (val_bpb 1.0570)",
            "state": "open",
            "merged_at": None,
            "created_at": "2026-05-01T00:00:00Z",
            "user": {"login": "z"},
        },
    )
    do_sync(tmp_path, github)
    diff = F.frontier_diff_for(tmp_path, now=NOW)
    assert diff.base == seen and [e.pr for e in diff.new_entries] == ["1910"]
    assert [e.pr for e in diff.open_claims] == ["1910"]  # unmerged: shown, never the best
    assert diff.best.pr == "1903"


def test_rate_limit_stops_politely_and_keeps_the_old_snapshot(tmp_path, github):
    github.rate_limited = True
    r = do_sync(tmp_path, github)
    assert not r.ok and r.rate_limited and r.requests == 1
    assert (
        "rate limit reached (HTTP 403); it resets at" in r.message
        and "kept the shipped snapshot" in r.message
    )
    assert F.list_snapshots(Workspace.at(tmp_path).frontier_dir) == []
    assert "shipped snapshot (offline data)" in r.using


def test_rate_limit_mid_sync_keeps_the_previous_stored_snapshot(tmp_path, github):
    first = do_sync(tmp_path, github)
    github.pulls.insert(
        0,
        {
            "number": 1911,
            "title": "Record: x 1.0500",
            "state": "open",
            "user": {"login": "z"},
            "created_at": "2026-05-01T00:00:00Z",
        },
    )
    github.rate_limit_after = len(github.log) + 2
    r = do_sync(tmp_path, github)
    assert r.rate_limited and r.requests == 3
    assert F.list_snapshots(Workspace.at(tmp_path).frontier_dir) == [Path(first.snapshot)]


def test_transient_errors_are_retried(tmp_path, github):
    github.fail_503 = {"/readme": 2}
    r = do_sync(tmp_path, github, retries=3)
    assert r.ok and r.readme_rows == 4
    assert [s.status for s in github.log if s.path.endswith("/readme")] == [503, 503, 200]


def test_an_unreachable_github_keeps_the_snapshot(tmp_path):
    with FakeGitHub() as gh:
        url = gh.url  # a port that is closed once the server stops
    r = S.sync(tmp_path, base_url=url, token="", retries=2, retry_wait=0.0, now=NOW)
    assert not r.ok and not r.rate_limited and r.requests == 2
    assert (
        r.message.startswith("GitHub unreachable (ConnectError") and "kept the shipped snapshot" in r.message
    )


def test_token_is_sent_but_never_logged_or_stored(tmp_path, github, caplog, monkeypatch):
    secret = "ghp_" + "s3cr3t" * 6
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    r = S.sync(tmp_path, base_url=github.url, retry_wait=0.0, now=NOW)
    assert r.ok and {s.authorization for s in github.log} == {f"Bearer {secret}"}
    github.rate_limited = True
    r2 = S.sync(tmp_path, base_url=github.url, retry_wait=0.0, now=NOW)
    assert secret not in r.model_dump_json() + r2.model_dump_json() + caplog.text
    for f in Workspace.at(tmp_path).state_dir.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(encoding="utf-8", errors="replace"), f
    gh = S.GitHubClient("o", "r", base_url=github.url, token=secret)
    assert secret not in repr(gh)
    gh.close()


def test_api_url_and_repository_are_configurable(tmp_path, monkeypatch):
    with FakeGitHub(owner="someone", repo="sister-golf") as gh:
        monkeypatch.setenv("GITHUB_API_URL", gh.url)
        r = S.sync(tmp_path, "someone", "sister-golf", token="", retry_wait=0.0, now=NOW)
    assert r.ok and r.repo == "someone/sister-golf"
    assert {s.path.split("/")[3] for s in gh.log} == {"sister-golf"}
    assert F.current(Workspace.at(tmp_path).frontier_dir).snapshot.source == "github:someone/sister-golf"


# --- parsing ---------------------------------------------------------------------------------------


def test_readme_tables_with_and_without_rank_are_read():
    text = (FIXTURES / "README.md").read_text()
    rows = S.parse_readme_leaderboard(text)
    assert [(r.score, r.non_record) for r in rows] == [
        (1.059, False),
        (1.0611, False),
        (1.2244, False),
        (1.0412, True),
    ]
    assert rows[0].folder == "records/track_10min_16mb/2026-04-29_LQER_ValueResidualRevival"
    assert rows[0].author == "Ada Tester" and rows[0].date == "2026-04-29"


def test_claim_titles_are_parsed_and_cleaned():
    pr = {
        "number": 7,
        "title": "Record: SP8192 + Parallel Residuals — val_bpb 1.0835 (3-seed mean, p<0.01)",
        "state": "open",
        "created_at": "2026-04-06T00:00:00Z",
        "user": {"login": "r"},
    }
    entry, login = S.parse_pull(pr)
    assert (entry.val_bpb, entry.status, login) == (1.0835, "open-claim", "r")
    assert F.map_techniques(entry.raw_techniques).techniques == ["sp8192", "parallel_residuals"]
    assert S.parse_pull({"number": 8, "title": "Docs: explain bpb"}) is None
    assert S.parse_pull({"number": 9, "title": "Speed up the data loader 2x"}) is None


# --- the planner's tool ----------------------------------------------------------------------------


def test_frontier_diff_tool_through_the_registry(tmp_path):
    ctx = SimpleNamespace(ws=Workspace.at(tmp_path), queue=["value_residual", "mlp3x"])
    out = registry.call("frontier_diff", {"max_chars": 400}, ctx)
    assert out.ok, out.error
    res = out.result
    assert res["best"] == "1.0611 (#1855, codemath3000, 2026-04-27)"
    assert [o.split(":")[0] for o in res["obsolete"]] == ["value_residual", "mlp3x"]
    assert any(f.startswith("338 1.1254:") and "illegal_ttt" in f for f in res["flagged"])
    assert len(res["digest"]) <= 400 and len(out.text()) < 4000
    assert json.loads(out.text())["age"].startswith("shipped snapshot")

    bad = registry.call("frontier_diff", {"max_chars": 10}, ctx)
    assert not bad.ok and "max_chars" in bad.error
