"""Calibration: a known proxy -> full-scale mapping is recovered within its interval, few pairs shrink
toward the published prior, kinds are fitted apart, and the ledger's pairs (decisions and finals) feed it."""

from __future__ import annotations

import numpy as np
import pytest

from agent.calibration import (
    Pair,
    calibrations_from_ledger,
    fit_calibration,
    load_prior,
    pairs_from_ledger,
    predict,
    published_pairs,
    slope_interval,
    technique_kind,
)
from memory.ledger import Ledger
from memory.records import Cost, DecisionRecord, FinalRecord, RunRecord, RunResult


def synthetic(
    n: int,
    slope: float,
    rng: np.random.Generator,
    *,
    kind: str = "architecture",
    noise: float = 0.0005,
    intercept: float = 0.0,
) -> list[Pair]:
    x = rng.uniform(-0.03, 0.01, n)
    y = intercept + slope * x + rng.normal(0.0, noise, n)
    return [
        Pair(
            technique=f"t{i}",
            kind=kind,
            lower_tier="cpu-smoke",
            upper_tier="h100x8-final",
            lower_delta=float(a),
            upper_delta=float(b),
        )
        for i, (a, b) in enumerate(zip(x, y, strict=True))
    ]


def test_known_mapping_is_recovered_within_its_interval():
    rng = np.random.default_rng(1)
    prior = load_prior()
    covered = 0
    for _ in range(40):
        c = fit_calibration(synthetic(30, 0.3, rng), "architecture", prior)
        lo, hi = slope_interval(c, 0.95)
        covered += lo <= 0.3 <= hi
        assert c.n == 30 and c.source == "fit"
    # a 95% interval, shrunk toward a prior that is wrong (0.07): still covers the truth nearly always
    assert covered >= 34
    c = fit_calibration(synthetic(60, 0.3, rng), "architecture", prior)
    assert abs(c.slope - 0.3) < 0.03
    assert 0.0003 < c.residual_sd < 0.0008  # the true scatter is 0.0005
    assert c.spearman is not None and c.spearman > 0.9


def test_intercept_is_fitted_when_asked():
    rng = np.random.default_rng(2)
    pairs = synthetic(80, 0.2, rng, intercept=0.0008, noise=0.0003)
    c = fit_calibration(pairs, "architecture", load_prior(), fit_intercept=True)
    assert abs(c.intercept - 0.0008) < 3 * c.intercept_sd
    assert c.intercept_sd > 0
    assert (
        fit_calibration(pairs, "architecture", load_prior()).intercept == 0.0
    )  # through the origin by default


def test_few_pairs_shrink_toward_the_prior_and_many_override_it():
    prior = load_prior()["architecture"]
    rng = np.random.default_rng(3)
    truth = 0.6
    # a noisy scatter: one pair cannot pin the line, so the prior still holds much of the weight
    many = synthetic(200, truth, rng, noise=0.003)
    few = many[:2]

    def ols(ps):
        x = np.array([p.lower_delta for p in ps])
        y = np.array([p.upper_delta for p in ps])
        return float(x @ y / (x @ x))

    c_few, c_many = fit_calibration(few, "architecture", prior), fit_calibration(many, "architecture", prior)
    lo, hi = sorted([prior.slope, ols(few)])
    assert lo < c_few.slope < hi  # strictly between the prior and the data alone
    assert abs(c_many.slope - ols(many)) < abs(c_few.slope - ols(few))
    assert abs(c_many.slope - truth) < 0.1
    assert c_many.slope_sd < c_few.slope_sd < prior.slope_sd * 1.5


def test_pairs_with_large_measurement_errors_move_the_fit_less():
    prior = load_prior()["architecture"]
    exact = synthetic(3, 0.6, np.random.default_rng(6), noise=0.0002)
    noisy = [p.model_copy(update={"lower_se": 0.01, "upper_se": 0.001}) for p in exact]
    c_exact = fit_calibration(exact, "architecture", prior)
    c_noisy = fit_calibration(noisy, "architecture", prior)
    assert abs(c_noisy.slope - prior.slope) < abs(c_exact.slope - prior.slope)
    assert c_noisy.slope_sd > c_exact.slope_sd


def test_without_pairs_the_fit_is_the_published_prior():
    prior = load_prior()
    for kind in ("architecture", "training"):
        c = fit_calibration([], kind, prior)
        assert c.source == "prior" and c.n == 0 and c.spearman is None
        assert c.slope == pytest.approx(prior[kind].slope)
        assert c.slope_sd == pytest.approx(prior[kind].slope_sd)
        assert c.residual_sd == pytest.approx(prior[kind].residual_sd)


def test_published_prior_reads_the_challenge_figures():
    pairs = {p.technique: p for p in published_pairs()}
    assert pairs["value_residual"].lower_delta == pytest.approx(-0.0151)
    assert pairs["ema"].upper_delta == pytest.approx(0.0025)
    prior = load_prior()
    arch = [p for p in pairs.values() if p.kind == "architecture"]
    x = np.array([p.lower_delta for p in arch])
    y = np.array([p.upper_delta for p in arch])
    assert prior["architecture"].slope == pytest.approx(float(x @ y / (x @ x)))
    assert 0 < prior["architecture"].slope < 0.3  # proxy wins shrink a lot at full scale
    assert prior["training"].slope < 0  # the published EMA pair flips sign
    assert prior["training"].slope_sd >= 0.4 > prior["architecture"].slope_sd
    near = load_prior("h100x1")
    assert near["architecture"].slope == pytest.approx(0.8) and near["architecture"].lower_tier == "h100x1"


def test_kinds_are_fitted_separately():
    rng = np.random.default_rng(4)
    pairs = synthetic(50, 0.3, rng) + synthetic(50, -0.2, rng, kind="training", noise=0.0005)
    arch = fit_calibration(pairs, "architecture", load_prior())
    train = fit_calibration(pairs, "training", load_prior())
    assert arch.n == 50 and train.n == 50
    assert abs(arch.slope - 0.3) < 0.05 and abs(train.slope + 0.2) < 0.05


def test_prediction_carries_every_uncertainty():
    c = fit_calibration(synthetic(10, 0.3, np.random.default_rng(5)), "architecture", load_prior())
    mean, sd = predict(c, -0.02)
    assert mean == pytest.approx(c.slope * -0.02)
    assert sd > c.residual_sd
    assert predict(c, -0.04)[1] > sd  # slope uncertainty grows with distance from zero
    assert predict(c, -0.02, proxy_se=0.01)[1] > sd  # and the proxy's own error adds


def test_technique_kind():
    assert technique_kind("ema") == "training"
    assert technique_kind("smear_gate") == "architecture"
    assert technique_kind("lr_sweep", ["MATRIX_LR", "SCALAR_LR"], script_changed=False) == "training"
    assert technique_kind("ten_layers", ["NUM_LAYERS"], script_changed=False) == "architecture"
    assert technique_kind("lr_plus_gate", ["MATRIX_LR"], script_changed=True) == "architecture"


# ---------------------------------------------------------------------------------------------- ledger


def _run(run_id, exp, sha, env, val, tier="cpu-smoke"):
    return RunRecord(
        session="s",
        run_id=run_id,
        experiment=exp,
        candidate=exp,
        tier=tier,
        hardware="cpu",
        seed=1,
        env=env,
        script_sha=sha,
        result=RunResult(status="ok", val_bpb=val),
        cost=Cost(device_seconds=20),
    )


def _decision(exp, tech, sha, env, delta, kept, inc_runs, tier="cpu-smoke", outcome="confirmed"):
    return DecisionRecord(
        session="s",
        experiment=exp,
        candidate=tech,
        technique=tech,
        tier=tier,
        hardware="cpu",
        outcome=outcome,
        kept=kept,
        delta=delta,
        n_candidate=3,
        n_incumbent=3,
        noise_std=0.006,
        candidate_runs=[f"{exp}-r"],
        incumbent_runs=inc_runs,
        env=env,
        script_sha=sha,
    )


def _final(fid, exp, vals):
    return FinalRecord(
        session="s",
        final_id=fid,
        experiment=exp,
        script_sha="x",
        seeds=[1, 2, 3],
        val_bpbs=vals,
        status="ok",
        dollars=22.0,
    )


def test_pairs_from_ledger_match_decisions_and_finals(tmp_path):
    led = Ledger(tmp_path / "ledger.jsonl")
    for r in [
        _run("inc-r", "inc", "aaa", {}, 2.31),
        _final("f0", None, [1.2244, 1.2250, 1.2240]),  # the starting script at full scale
        _run("e1-r", "e1", "bbb", {}, 2.29),
        _decision("e1", "gate", "bbb", {}, -0.02, True, ["inc-r"]),
        _run("e2-r", "e2", "ccc", {}, 2.30),
        _decision("e2", "junk", "ccc", {}, 0.01, False, ["e1-r"], outcome="rejected"),
        _run("e3-r", "e3", "ddd", {}, 2.28),
        _decision("e3", "bigram", "ddd", {}, -0.01, True, ["e1-r"]),
        _final("f1", "e3", [1.2220, 1.2226, 1.2216]),  # the stack gate + bigram
        _run("e4-r", "e4", "ddd", {"MATRIX_LR": "0.06"}, 2.27),
        _decision("e4", "lr", "ddd", {"MATRIX_LR": "0.06"}, -0.012, True, ["e3-r"]),
        _final("f2", "e4", [1.2240, 1.2236, 1.2238]),  # a training change that did not transfer
        # the same technique on one H100 makes a decision pair between the two local tiers
        _decision("h1", "gate", "bbb", {}, -0.003, False, [], tier="h100x1"),
    ]:
        led.append(r)
    records = led.records()

    finals = {p.technique: p for p in pairs_from_ledger(records, "cpu-smoke", "h100x8-final")}
    assert set(finals) == {"gate+bigram", "lr"}  # 'junk' was not kept, so it is in no final's stack
    stack = finals["gate+bigram"]
    assert stack.kind == "architecture"
    assert stack.lower_delta == pytest.approx(-0.03)
    assert stack.upper_delta == pytest.approx(
        np.mean([1.2220, 1.2226, 1.2216]) - np.mean([1.2244, 1.2250, 1.2240])
    )
    assert stack.upper_se > 0 and stack.lower_se > 0
    lr = finals["lr"]
    assert lr.kind == "training"  # env-only change of a learning rate on the incumbent's script
    assert lr.upper_delta > 0

    between = pairs_from_ledger(records, "cpu-smoke", "h100x1")
    assert [(p.technique, p.lower_delta, p.upper_delta) for p in between] == [("gate", -0.02, -0.003)]

    # every new final moves the fit: the calibration is recomputed from the ledger, no stored state
    before = calibrations_from_ledger(records[:-2], "cpu-smoke")
    after = calibrations_from_ledger(records, "cpu-smoke")
    assert before["training"].n == 0 and after["training"].n == 1
    assert after["training"].slope != before["training"].slope
    assert after["architecture"].n == 1
