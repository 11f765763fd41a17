"""The incumbent against the frontier: a projected 8xH100 score that moves with what is kept and with the
calibration, promotion only on a likely record, finals as calibration pairs, and fidelity per kind."""

from __future__ import annotations

import pytest

from agent.calibration import BASELINE_BPB, pairs_from_ledger
from agent.fidelity import fidelity_lines, kind_trust, needs_gpu_tier
from agent.planner import Budget, PlannerState
from agent.playbook import PlaybookPlanner
from agent.projection import RECORD_MARGIN_BPB, project
from memory.records import CalibrationPairRecord, DecisionRecord, FinalRecord

TIER = "cpu-smoke"


def kept(exp: str, technique: str, delta: float, session: str = "s") -> DecisionRecord:
    return DecisionRecord(
        session=session,
        experiment=exp,
        candidate=technique,
        technique=technique,
        tier=TIER,
        hardware="cpu@x",
        outcome="confirmed",
        kept=True,
        delta=delta,
        ci_low=delta - 0.004,
        ci_high=delta + 0.004,
        n_candidate=3,
        n_incumbent=3,
        noise_std=0.003,
    )


def pair(technique: str, lower: float, upper: float, kind: str = "architecture") -> CalibrationPairRecord:
    return CalibrationPairRecord(
        session="f",
        tier=TIER,
        hardware="cpu@x",
        technique=technique,
        technique_kind=kind,
        lower_delta=lower,
        lower_se=0.001,
        upper_delta=upper,
    )


def test_the_projection_starts_at_the_baseline_and_moves_with_a_kept_change():
    empty = project([], TIER)
    assert empty.mean == pytest.approx(BASELINE_BPB) and empty.base_source == "challenge baseline"
    one = project([kept("e1", "leaky_relu2", -0.01)], TIER)
    assert one.mean < empty.mean and len(one.terms) == 1
    assert one.sd > empty.sd  # the calibrated delta brings its own uncertainty
    two = project([kept("e1", "leaky_relu2", -0.01), kept("e2", "xsa", -0.02)], TIER)
    assert two.mean < one.mean


def test_the_projection_moves_with_a_new_calibration_pair():
    records = [kept("e1", "leaky_relu2", -0.01)]
    before = project(records, TIER)
    # golf fidelity measured the tier: two own pairs replace the published proxy prior's slope
    after = project(
        records + [pair("sliding_eval", -0.06, -0.0319), pair("value_residual", -0.002, -0.001)], TIER
    )
    assert after.terms[0].full_mean != pytest.approx(before.terms[0].full_mean)
    assert after.mean != pytest.approx(before.mean)


def test_a_final_is_proposed_only_when_the_projection_likely_beats_the_frontier_by_the_record_margin():
    records = [kept("e1", "leaky_relu2", -0.01)]
    real = project(records, TIER, frontier_bpb=1.0611)
    assert real.p_record is not None and real.p_record < 0.01 and not real.promote
    weak = project(records, TIER, frontier_bpb=1.30)
    assert weak.promote and weak.p_record > 0.9
    # just at the frontier is not enough: a record must clear it by 0.005 nats
    at = project(records, TIER, frontier_bpb=real.mean)
    assert not at.promote and at.margin == pytest.approx(RECORD_MARGIN_BPB)


def test_a_finals_real_score_becomes_a_calibration_pair_and_the_new_base():
    records = [
        kept("e1", "leaky_relu2", -0.01),
        FinalRecord(
            session="s",
            final_id="f1",
            experiment="e1",
            script_sha="x",
            seeds=[1, 2, 3],
            val_bpbs=[1.2200, 1.2206, 1.2203],
            status="ok",
        ),
    ]
    pairs = pairs_from_ledger(records, TIER, "h100x8-final")
    assert len(pairs) == 1 and pairs[0].lower_delta == pytest.approx(-0.01)
    assert pairs[0].upper_delta == pytest.approx(1.2203 - BASELINE_BPB)
    p = project(records, TIER)
    assert p.base_source == "final f1" and p.terms == []  # e1 is in the final's score already
    p2 = project(records + [kept("e2", "xsa", -0.005)], TIER)
    assert [t.experiment for t in p2.terms] == ["e2"] and p2.mean < p.mean


def test_fidelity_per_kind_and_a_technique_the_tier_cannot_see_needs_a_gpu_tier():
    records = [
        pair("sliding_eval", -0.06, -0.0319),
        pair("leaky_relu2", -0.01, -0.0025),
        pair("value_residual", -0.004, -0.001),
        pair("gated_attention", 0.003, -0.00075),
    ]
    trust = kind_trust(records, TIER)
    assert trust["architecture"].pairs == 4 and trust["training"].level == "unmeasured"
    assert "opposite sign" in (needs_gpu_tier(records, TIER, "gated_attention", "architecture") or "")
    assert needs_gpu_tier(records, TIER, "leaky_relu2", "architecture") is None
    assert needs_gpu_tier(records, TIER, "warmdown", "training")  # training does not transfer (PR #2005)
    text = "\n".join(fidelity_lines(records, TIER))
    assert "architecture:" in text and "needs a GPU tier" in text and "gated_attention" in text


def test_the_playbook_ranks_what_the_tier_cannot_see_last_rather_than_dropping_it():
    queue = [
        {
            "technique": t,
            "env": {f"{t.upper()}": "1"},
            "state": "todo",
            "decided": None,
            "tries": 0,
            "notes": "",
        }
        for t in ("gated_attention", "leaky_relu2")
    ]
    options = [
        {
            "action": "test",
            "technique": "gated_attention",
            "gain_per_dollar": 9.0,
            "needs_gpu_tier": "opposite sign",
        },
        {"action": "test", "technique": "leaky_relu2", "gain_per_dollar": 1.0, "needs_gpu_tier": None},
    ]
    state = PlannerState(
        session="s",
        tier=TIER,
        hardware="cpu",
        budget_left=Budget(),
        incumbent={"env": {}},
        queue=queue,
        options=options,
    )
    first = PlaybookPlanner().propose(state)
    assert first.experiment is not None and first.experiment.technique == "leaky_relu2"
    state.queue = queue[:1]
    assert PlaybookPlanner().propose(state).experiment.technique == "gated_attention"


def test_the_playbook_gives_no_second_look_on_this_tier_to_what_needs_a_gpu_tier():
    queue = [
        {
            "technique": "ema",
            "env": {"EMA_DECAY": "0.99"},
            "state": "todo",
            "decided": "inconclusive",
            "tries": 1,
            "notes": "",
        }
    ]
    options = [
        {
            "action": "test",
            "technique": "ema",
            "gain_per_dollar": 1.0,
            "needs_gpu_tier": "training changes do not transfer",
        }
    ]
    state = PlannerState(
        session="s",
        tier=TIER,
        hardware="cpu",
        budget_left=Budget(),
        incumbent={"env": {}},
        queue=queue,
        options=options,
    )
    assert PlaybookPlanner().propose(state).action == "stop"
    state.options[0]["needs_gpu_tier"] = None
    assert PlaybookPlanner().propose(state).experiment.technique == "ema"


def test_a_session_started_from_a_preset_is_projected_from_that_presets_record():
    from agent.projection import projection_lines
    from memory.records import EventRecord

    start = EventRecord(
        session="s",
        event="start_preset",
        detail={"name": "frontier", "record": "1855", "published_bpb": 1.0611, "env": {}},
    )
    lines = projection_lines([start, kept("e1", "leaky_relu2", -0.01)], TIER, "s")
    assert "= preset frontier (PR #1855) 1.0611 + 1 kept change(s)" in lines[0]
    projected = float(lines[0].split(": ")[1].split()[0])
    assert projected < 1.0611  # the kept change moves it from the record, not from the baseline's 1.2244
    # another session's start does not move this one's anchor
    other = projection_lines([start.model_copy(update={"session": "t"})], TIER, "s")
    assert "challenge baseline 1.2244" in other[0]
