"""The default CPU tier is chosen by measured fidelity (issue 10, item 5): every CPU tier carries its
`golf fidelity` figures, and every place that names the default names the same tier."""

from __future__ import annotations

from pathlib import Path

from agent.session import DEFAULT_TIER
from memory.battle_plan import PlanBudget, parse_plan
from memory.tiers import load_tiers
from testing.shipped import shipped_text

ROOT = Path(__file__).resolve().parents[1]
TIERS = load_tiers(ROOT / "tiers.toml")
CPU = {name: t for name, t in TIERS.items() if t.hardware == "cpu"}


def test_every_cpu_tier_records_its_measured_fidelity_and_run_time():
    # the choice between CPU shapes is only as good as these figures; a new shape without them cannot be
    # compared (golf fidelity --tier NAME prints all three)
    assert len(CPU) >= 3
    for name, t in CPU.items():
        assert t.fidelity_spearman is not None and -1.0 <= t.fidelity_spearman <= 1.0, name
        assert t.fidelity_pairs is not None and t.fidelity_pairs >= 3, name  # Spearman needs three
        assert t.seconds_per_run is not None and 0 < t.seconds_per_run < t.run_timeout_s, name


def test_the_default_tier_is_the_same_everywhere_and_a_measured_step_matched_cpu_tier():
    shipped = parse_plan(shipped_text("battle_plan.md")).budget.tier
    assert shipped == DEFAULT_TIER == PlanBudget().tier
    default = TIERS[DEFAULT_TIER]
    # step-matched: a verdict on a shared machine must not move with its load
    assert default.hardware == "cpu" and default.step_matched
    # the rule of issue 10: the best measured fidelity that still leaves a useful 15-minute session. Today
    # the best Spearman is also the cheapest tier; a new tier measured better has to be weighed against its
    # run time, and then either becomes the default or this check changes with the reason
    assert default.fidelity_spearman == max(t.fidelity_spearman or -1.0 for t in CPU.values())
