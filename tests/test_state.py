"""The planner state: typed views derived from the ledger and the plan, and refusals that stick."""

from __future__ import annotations

from agent.planner import Budget, IncumbentView, PlannerState, QueueRow
from agent.playbook import PlaybookPlanner
from agent.state import build_state
from memory.battle_plan import parse_plan
from memory.records import DecisionRecord, EventRecord, FindingRecord, NoiseRecord

PLAN = """# Plan

## Queue
- [ ] bad_flag: NOT_A_KNOB=1 — refused by the env rule
- [ ] mlp3x: MLP_MULT=3 — wider MLP
"""


def state(records: list, plan: str = PLAN) -> PlannerState:
    return build_state(
        records=records,
        plan=parse_plan(plan),
        session="s1",
        tier="cpu-tiny",
        hardware="cpu",
        script_sha="abc123",
        budget_left=Budget(experiments=5),
    )


def refused(technique: str, env: dict[str, str], session: str = "s1") -> EventRecord:
    spec = {"name": technique, "technique": technique, "hypothesis": "", "env": env}
    return EventRecord(
        session=session,
        event="proposal_refused",
        detail={"experiment": spec, "why": "NOT_A_KNOB is not a knob of trainer/train_gpt.py"},
    )


def test_a_refused_queue_line_is_not_proposed_again_until_the_line_changes():
    planner = PlaybookPlanner()
    assert planner.propose(state([])).experiment.technique == "bad_flag"
    records = [refused("bad_flag", {"NOT_A_KNOB": "1"})]
    s = state(records)
    assert s.queue[0].refused and "not a knob" in s.queue[0].refused
    assert planner.propose(s).experiment.technique == "mlp3x"
    # the human edits the line: the refusal was of the old line, so the new one is proposed
    edited = PLAN.replace("NOT_A_KNOB=1", "MLP_ACT_SLOPE=0.5")
    assert planner.propose(state(records, edited)).experiment.technique == "bad_flag"
    # another session's refusal does not bind this one
    assert (
        planner.propose(state([refused("bad_flag", {"NOT_A_KNOB": "1"}, session="s0")])).experiment.technique
        == "bad_flag"
    )
    # refused and nothing else left: the playbook stops instead of proposing it forever
    both = records + [refused("mlp3x", {"MLP_MULT": "3"})]
    assert planner.propose(state(both)).action == "stop"


def test_the_state_is_typed_and_still_reads_like_the_dicts_it_replaced():
    records = [
        NoiseRecord(
            session="s1",
            tier="cpu-tiny",
            hardware="cpu",
            script_sha="abc123",
            values=[1.0, 1.01],
            std=0.007,
            mean=1.005,
            df=3.0,
            source="pooled",
        ),
        DecisionRecord(
            session="s1",
            experiment="e001-mlp3x",
            candidate="mlp3x",
            technique="mlp3x",
            tier="cpu-tiny",
            hardware="cpu",
            outcome="confirmed",
            kept=True,
            delta=-0.01,
            ci_low=-0.02,
            ci_high=-0.001,
            p_value=0.01,
            n_candidate=3,
            env={"MLP_MULT": "3"},
        ),
        FindingRecord(
            session="s1", technique="mlp3x", status="confirmed", tier="cpu-tiny", note="wider is better"
        ),
    ]
    s = state(records)
    assert s.incumbent.env == {"MLP_MULT": "3"} and s.incumbent.stack == ["mlp3x"]
    assert s.incumbent["env"] == s.incumbent.get("env") == {"MLP_MULT": "3"}
    assert s.noise.source == "pooled"  # what the noise record says, not a fixed "measured"
    assert (s.findings[0].technique, s.findings[0].note, s.findings[0].ci) == (
        "mlp3x",
        "wider is better",
        [-0.02, -0.001],
    )
    row = s.queue[1]
    assert (row.decided, row.tries, row["decided"], row.get("missing", "d")) == (
        "confirmed",
        1,
        "confirmed",
        "d",
    )
    assert s.recent[0].experiment == "e001-mlp3x" and s.recent[0].kept
    assert not IncumbentView() and IncumbentView(n=0)  # empty like {} until something is set
    assert PlannerState.model_validate_json(s.model_dump_json()) == s
    assert isinstance(s.queue[0], QueueRow)


def test_a_research_note_carries_its_decision_and_an_unreadable_one_is_no_decision():
    from agent.recovery import decision_in_note, note_with_decision

    dec = DecisionRecord(
        session="s1",
        experiment="e001-mlp3x",
        candidate="mlp3x",
        technique="mlp3x",
        tier="t",
        hardware="h",
        outcome="inconclusive",
        kept=False,
        delta=-0.001,
        p_value=0.2,
        reason="ambiguous\nat 2 of 3 seeds",
        git_commit="abc",
        git_ref="refs/golf/s1/e001-mlp3x",
    )
    note = note_with_decision("e001-mlp3x: mlp3x -> inconclusive (discarded)\n\nResult: ...", dec)
    assert note.startswith("e001-mlp3x: mlp3x -> inconclusive (discarded)\n")
    assert decision_in_note(note) == dec.model_copy(update={"git_commit": None, "git_ref": None})
    assert decision_in_note('a note\n\nGolf-Decision: {"kind": "decision"}\n') is None
    assert decision_in_note("e001-x: a hand-made commit") is None
