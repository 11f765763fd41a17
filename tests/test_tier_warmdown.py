"""Step-matched tiers warm down by iterations, as their env says: the real trainer under a tier's env."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory.tiers import TiersError, load_tiers
from testing.trainer_fixtures import read_metrics, run_in_process

ROOT = Path(__file__).resolve().parents[1]


def test_every_step_matched_tier_runs_without_a_wallclock_cap():
    tiers = load_tiers(ROOT / "tiers.toml")
    matched = [t for t in tiers.values() if t.step_matched]
    assert matched, "tiers.toml has no step-matched tier"
    assert all(t.env["MAX_WALLCLOCK_SECONDS"] == "0" for t in matched)


def test_a_step_matched_tier_with_a_wallclock_cap_is_refused_with_the_reason(tmp_path):
    bad = tmp_path / "tiers.toml"
    bad.write_text(
        '[tier.x]\nhardware = "cpu"\nstep_matched = true\nenv = { ITERATIONS = 40, '
        "MAX_WALLCLOCK_SECONDS = 120 }\n"
    )
    with pytest.raises(TiersError, match="without a wallclock cap"):
        load_tiers(bad)


def test_cpu_smoke_lr_scale_reaches_the_warmdown_in_the_real_trainer(tg, tiny_data, tmp_path):
    tier = load_tiers(ROOT / "tiers.toml")["cpu-smoke"]
    # the tier's env as the sweep passes it; only the evaluation is shrunk to fit the tiny test data
    # (it runs after training and cannot touch the schedule)
    env = dict(tier.env, VAL_MAX_TOKENS="4096", VAL_HOLDOUT_TOKENS="2048", VAL_BATCH_SIZE="4096")
    env.pop("DATA_PATH", None)
    res = run_in_process(tg, tiny_data, tmp_path / "run", **env)
    assert res["status"] == "ok", res.get("error")
    iterations, warmdown = int(tier.env["ITERATIONS"]), int(tier.env["WARMDOWN_ITERS"])
    assert res["steps"] == iterations
    scale = {m["step"]: m["lr_scale"] for m in read_metrics(tmp_path / "run") if "lr_scale" in m}
    start = iterations - warmdown  # the step whose update first uses a reduced LR
    assert all(v == 1.0 for s, v in scale.items() if s <= start)
    # metrics log the scale of the step just taken (step s used scale (iterations - (s-1)) / warmdown)
    for s, v in scale.items():
        if s > start:
            assert v == pytest.approx((iterations - s + 1) / warmdown)
    assert scale[iterations] == pytest.approx(1 / warmdown)
