"""The report renders from a ledger alone: valid PNGs of the expected size and content, a table of every
decision, and it neither needs a frontier file nor writes to the ledger it reads."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from agent import report
from agent.calibration import predict
from memory.records import FinalRecord

FIXTURE = Path(__file__).parent / "fixtures" / "ledger_report.jsonl"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGES = ("val_bpb.png", "deltas.png", "calibration.png", "spend.png")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_picture(path: Path, width_in: float, height_in: float) -> None:
    w, h = png_size(path)
    assert (w, h) == (round(width_in * report.DPI), round(height_in * report.DPI))
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (h, w)
    assert float(np.std(pixels[..., :3])) > 0.01  # something was drawn, not a blank canvas


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    (ws / ".golf").mkdir()
    shutil.copy(FIXTURE, ws / ".golf" / "ledger.jsonl")
    before = (ws / ".golf" / "ledger.jsonl").read_bytes()
    path = report.write_report(ws)
    assert (ws / ".golf" / "ledger.jsonl").read_bytes() == before
    return ws, path


def test_report_writes_markdown_pictures_and_data_into_the_workspace(rendered):
    ws, path = rendered
    assert path == ws / "reports" / "report.md"
    text = path.read_text()
    for name in IMAGES:
        assert f"]({name})" in text and (path.parent / name).exists()
    data = json.loads((path.parent / "report.json").read_text())
    assert len(data["decisions"]) == 7
    assert data["frontier"] == {"best_bpb": 1.0611, "source": "leaderboard PR #1855"}
    assert "spend $50.00" in text  # the finals' spend increments, 22.00 + 23.50, plus 4.50 of one-H100 runs


def test_every_picture_is_a_valid_png_of_the_planned_size(rendered):
    _, path = rendered
    out = path.parent
    # two tiers (cpu-smoke, h100x1) and the finals: three panels
    assert_picture(out / "val_bpb.png", report.WIDTH_IN, 3 * 3.2)
    assert_picture(out / "deltas.png", report.WIDTH_IN, 0.35 * 4 + 1.2)  # four confirmed (technique, tier)
    assert_picture(out / "calibration.png", report.WIDTH_IN, 4.0)
    assert_picture(out / "spend.png", report.WIDTH_IN, 3.5)


def test_val_bpb_plot_has_one_point_per_decision_and_the_frontier(tmp_path):
    data = report.collect(report.read_records(FIXTURE))
    fig = report.plot_val_bpb(data, tmp_path / "v.png")
    drawn = [
        tuple(xy)
        for ax in fig.axes
        for c in ax.collections
        if c.get_gid() == "decisions"
        for xy in c.get_offsets()
    ]
    expected = [(p["index"], p["candidate_bpb"]) for p in data["decisions"]]
    assert len(drawn) == len(expected)
    for got, want in zip(
        sorted(drawn), sorted(expected), strict=True
    ):  # flat approx: pytest 9.2 refuses nesting
        assert list(got) == pytest.approx(list(want))
    assert len(drawn) == 7
    frontier = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "frontier"]
    assert len(frontier) == 1 and frontier[0].get_ydata()[0] == pytest.approx(1.0611)
    # candidates are the means of their runs: leaky_relu2 ran 2.2900, 2.2920, 2.2880
    assert data["decisions"][0]["candidate_bpb"] == pytest.approx(2.29)
    assert data["decisions"][0]["incumbent_bpb"] == pytest.approx(np.mean([2.3100, 2.3180, 2.3050]))


def test_calibration_plot_draws_the_ledger_pair_and_the_fit(tmp_path):
    data = report.collect(report.read_records(FIXTURE))
    arch = data["calibration"]["kinds"]["architecture"]
    assert [p["technique"] for p in arch["pairs"]] == ["leaky_relu2+bigram_hash"]
    fig = report.plot_calibration(data, tmp_path / "c.png")
    fit = next(ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "fit")
    x, y = fit.get_xdata(), fit.get_ydata()
    calib = report.Calibration(**arch["fit"])
    assert y[0] == pytest.approx(predict(calib, x[0])[0])
    assert (y[-1] - y[0]) / (x[-1] - x[0]) == pytest.approx(calib.slope)


def test_decision_table_lists_every_decision(rendered):
    _, path = rendered
    text = path.read_text()
    table = text[text.index("## Every decision") :]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| #")]
    assert len(rows) == 7
    for exp in ["e1", "e2", "e3", "e4", "h1", "e6", "e7"]:
        assert sum(f"| {exp} |" in r for r in rows) == 1
    assert "better by 0.0093 bpb \\| p 0.01" in table  # a pipe in a reason does not break the table


def test_report_handles_an_empty_ledger_and_no_frontier_file(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("")
    path = report.write_report(ledger, leaderboard=None)
    assert path == tmp_path / "report" / "report.md"
    for name in IMAGES:
        png_size(path.parent / name)
    assert "frontier: unknown (no frontier data)" in path.read_text()


def test_frontier_falls_back_to_the_finals_and_a_torn_tail_is_skipped(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    final = FinalRecord(
        session="s",
        final_id="f",
        script_sha="x",
        seeds=[1],
        val_bpbs=[1.10],
        status="ok",
        frontier_bpb=1.0700,
    )
    torn = final.model_dump_json() + "\n" + '{"kind": "decision", "sess'
    ledger.write_text(torn)
    path = report.write_report(ledger, tmp_path / "out", leaderboard=None)
    assert ledger.read_text() == torn  # the report never repairs or rewrites the ledger
    data = json.loads((path.parent / "report.json").read_text())
    assert data["frontier"] == {"best_bpb": 1.07, "source": "finals' frontier"}
    assert len(data["finals"]) == 1
