"""`golf fidelity`: techniques with published full-scale deltas run on a tier's matched seeds, written as
the tier's own calibration pairs, which the calibration then fits on (real trainer, cpu-tiny tier)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from agent.calibration import calibrations_from_ledger
from agent.fidelity import fidelity_of, load_panel
from memory.ledger import Ledger
from memory.records import CalibrationPairRecord, RunRecord
from testing.workspace import ROOT, make_workspace


def golf(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ) | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "--workspace", str(ws), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_golf_fidelity_on_cpu_tiny_writes_pairs_the_calibration_reads(tmp_path, tiny_dataset):
    ws = make_workspace(tmp_path, tiny_dataset)
    r = golf(ws, "fidelity", "--tier", "cpu-tiny", "--seeds", "2", "--panel", "leaky_relu2,value_residual")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Spearman" in r.stdout and "architecture: full =" in r.stdout
    records = Ledger(ws / ".golf" / "ledger.jsonl").records()
    pairs = {c.technique: c for c in records if isinstance(c, CalibrationPairRecord)}
    assert sorted(pairs) == ["leaky_relu2", "value_residual"]
    runs = {r.run_id: r for r in records if isinstance(r, RunRecord)}
    published = {p.technique: p.full_delta for p in load_panel()}
    for name, p in pairs.items():
        assert p.tier == "cpu-tiny" and p.seeds == [1337, 1338] and p.upper_delta == published[name]
        # the pair's delta is the mean of matched per-seed differences against the baseline's runs
        cand = {runs[i].seed: runs[i].result.val_bpb for i in p.runs if runs[i].candidate != "baseline"}
        base = {runs[i].seed: runs[i].result.val_bpb for i in p.runs if runs[i].candidate == "baseline"}
        assert p.seed_diffs == pytest.approx([cand[s] - base[s] for s in p.seeds])
        assert p.lower_delta == pytest.approx(statistics.fmean(p.seed_diffs))
    # the tier's calibration now fits on its own two pairs instead of the prior alone
    own = calibrations_from_ledger(records, "cpu-tiny")["architecture"]
    prior = calibrations_from_ledger([], "cpu-tiny")["architecture"]
    assert own.source == "fit" and own.n == 2 and prior.source == "prior"
    assert own.slope != prior.slope
    assert fidelity_of(records, "cpu-tiny").sign_agreement is not None


def test_an_unknown_panel_technique_is_refused_before_any_run(tmp_path, tiny_dataset):
    ws = make_workspace(tmp_path, tiny_dataset)
    r = golf(ws, "fidelity", "--tier", "cpu-tiny", "--panel", "leaky_relu2,warp_drive")
    assert r.returncode == 2 and "warp_drive" in r.stderr
    assert not (ws / ".golf" / "ledger.jsonl").exists() or not Ledger(ws / ".golf" / "ledger.jsonl").records(
        RunRecord
    )


def test_every_panel_entry_names_flags_the_trainer_accepts():
    from memory.knobs import check_env_allowed

    script = (ROOT / "trainer" / "train_gpt.py").read_text()
    panel = load_panel()
    assert len(panel) >= 8
    for item in panel:
        check_env_allowed(item.env, script)
        assert "PR #" in item.source


def test_the_report_plots_a_tiers_fidelity_pairs_and_fits_on_them(tmp_path):
    from agent import report

    records = [
        CalibrationPairRecord(
            session="f",
            tier="cpu-smoke",
            hardware="cpu@x",
            technique=t,
            technique_kind="architecture",
            lower_delta=lo,
            lower_se=0.001,
            upper_delta=up,
        )
        for t, lo, up in [
            ("sliding_eval", -0.05, -0.0319),
            ("leaky_relu2", -0.01, -0.0025),
            ("value_residual", -0.004, -0.001),
        ]
    ]
    data = report.collect(records)
    cal = data["calibration"]
    assert cal["lower_tier"] == "cpu-smoke"
    arch = cal["kinds"]["architecture"]
    assert sorted(p["technique"] for p in arch["pairs"]) == ["leaky_relu2", "sliding_eval", "value_residual"]
    assert (
        arch["fit"]["source"] == "fit"
        and arch["fit"]["n"] == 3
        and arch["fit"]["spearman"] == pytest.approx(1.0)
    )
    fig = report.plot_calibration(data, tmp_path / "c.png")
    drawn = [c for c in fig.axes[0].containers]  # the errorbar of the tier's own pairs
    assert drawn and len(drawn[0].lines[0].get_xdata()) == 3
    f = fidelity_of(records, "cpu-smoke")
    assert f.spearman == pytest.approx(1.0) and f.sign_agreement == 1.0


def test_a_fresh_ledger_gets_the_tiers_shipped_measurement_once_and_a_users_own_pairs_win(tmp_path):
    from pathlib import Path

    from agent.fidelity import fidelity_of, seed_shipped_pairs
    from memory.ledger import Ledger
    from memory.records import CalibrationPairRecord
    from memory.tiers import load_tiers

    tiers = load_tiers(Path(__file__).resolve().parents[1] / "tiers.toml")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert seed_shipped_pairs(ledger, "cpu-smoke") == 8
    assert seed_shipped_pairs(ledger, "cpu-smoke") == 0  # once
    measured = fidelity_of(ledger.records(), "cpu-smoke")
    # the shipped pairs are the measurement tiers.toml records for the default tier
    assert measured.spearman == pytest.approx(tiers["cpu-smoke"].fidelity_spearman, abs=0.005)
    assert seed_shipped_pairs(ledger, "cpu-tiny") == 0  # the test tier ships none: it proves plumbing only

    own = Ledger(tmp_path / "own.jsonl")
    own.append(
        CalibrationPairRecord(
            session="me",
            tier="cpu-smoke",
            hardware="cpu@x",
            technique="ema",
            technique_kind="training",
            lower_delta=-0.01,
            upper_delta=0.0025,
        )
    )
    assert seed_shipped_pairs(own, "cpu-smoke") == 0
    assert [c.session for c in own.records(CalibrationPairRecord)] == ["me"]


def test_an_unreadable_shipped_pairs_file_is_named_and_seeds_nothing(tmp_path):
    from agent.fidelity import SHIPPED_PAIRS, seed_shipped_pairs
    from memory.ledger import Ledger

    bad = tmp_path / "pairs.jsonl"
    good = SHIPPED_PAIRS.read_text().splitlines()[0]
    bad.write_text(good + "\n{not json\n")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    tier = json.loads(good)["tier"]
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not a calibration pair"):
        seed_shipped_pairs(ledger, tier, bad)
    assert ledger.records() == []
