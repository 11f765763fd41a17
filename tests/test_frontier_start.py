"""Starting from the frontier: presets (memory/presets.py), the plan's `start:` key, a session whose incumbent
begins as a preset, the playbook deferring what newer records dropped, and the frontier block's ready queue
lines for new techniques the trainer can already express."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.planner import Budget, PlannerState
from agent.playbook import PlaybookPlanner
from agent.progress import Progress
from agent.session import run_session
from memory import frontier as F
from memory.battle_plan import BattlePlanError, parse_plan
from memory.knobs import read_knobs
from memory.ledger import Ledger
from memory.presets import Preset, PresetError, get_preset, load_presets, starting_env
from memory.records import DecisionRecord, EventRecord, NoiseRecord, RunRecord
from testing.workspace import PLAN, ROOT, git, make_workspace

TRAINER_TEXT = (ROOT / "trainer" / "train_gpt.py").read_text()

FIXTURE = """
[preset.frontier]
description = "the best merged record as flags (test fixture)"
record = "#1855"
published_bpb = 1.0611
env = { NUM_LAYERS = 11, MLP_MULT = 4, MLP_ACT_SLOPE = 0.5, GATED_ATTENTION = true, EMA_DECAY = 0.9965 }

[preset.bare]
env = {}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ presets


def test_presets_load_with_their_record_and_env_as_the_trainer_reads_it(tmp_path):
    presets = load_presets(write(tmp_path, FIXTURE))
    p = presets["frontier"]
    assert (p.record, p.published_bpb) == ("1855", 1.0611)
    assert p.env == {
        "NUM_LAYERS": "11",
        "MLP_MULT": "4",
        "MLP_ACT_SLOPE": "0.5",
        "GATED_ATTENTION": "1",
        "EMA_DECAY": "0.9965",
    }
    assert presets["bare"] == Preset(name="bare")


def test_a_tier_keeps_its_shape_and_the_preset_brings_the_rest(tmp_path):
    p = get_preset(write(tmp_path, FIXTURE), "frontier")
    tier_env = {"NUM_LAYERS": "4", "MODEL_DIM": "128", "MLP_MULT": "2"}
    assert p.env_on_tier(tier_env) == {"MLP_ACT_SLOPE": "0.5", "GATED_ATTENTION": "1", "EMA_DECAY": "0.9965"}
    assert p.env_on_tier({}) == p.env  # a full-scale tier sets no shape: the record's shape applies
    # a branch that already won on top of the preset keeps its wins
    assert starting_env(p, tier_env, {"EMA_DECAY": "0", "QK_GAIN_INIT": "5"}) == {
        "MLP_ACT_SLOPE": "0.5",
        "GATED_ATTENTION": "1",
        "EMA_DECAY": "0",
        "QK_GAIN_INIT": "5",
    }
    assert starting_env(None, tier_env, {"X_Y": "1"}) == {"X_Y": "1"}


@pytest.mark.parametrize(
    "text, problem",
    [
        (None, "no presets file"),
        ("[preset.frontier\n", "not valid TOML"),
        ('preset = "frontier"', "must be tables"),
        ('[preset.frontier]\nenv = { "lower-case" = 1 }', "not an environment variable name"),
        ('[preset.frontier]\nenv = { DATA_PATH = "/elsewhere" }', "set by the harness"),
        ('[preset.frontier]\npublished_bpb = "one"', "published_bpb"),
        ('[preset.frontier]\ncolour = "blue"', "colour"),
    ],
)
def test_a_bad_presets_file_is_refused_naming_file_preset_and_problem(tmp_path, text, problem):
    path = tmp_path / "presets.toml" if text is None else write(tmp_path, text)
    with pytest.raises(PresetError) as err:
        load_presets(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    if text and "[preset.frontier]" in text:
        assert "'frontier'" in str(err.value)


def test_an_unknown_preset_names_the_known_ones(tmp_path):
    with pytest.raises(PresetError, match=r"no preset 'frontierr' \(known: bare, frontier\)"):
        get_preset(write(tmp_path, FIXTURE), "frontierr")


def test_the_shipped_presets_set_only_knobs_of_the_shipped_trainer():
    path = ROOT / "presets.toml"
    if not path.is_file():
        pytest.skip("presets.toml is written by the trainer branch; not merged here yet")
    knobs = {k.name for k in read_knobs(TRAINER_TEXT)}
    presets = load_presets(path)
    assert "frontier" in presets and presets["frontier"].record and presets["frontier"].published_bpb
    for p in presets.values():
        assert set(p.env) <= knobs, (p.name, sorted(set(p.env) - knobs))


# ---------------------------------------------------------------------------------------------- the plan


def plan_with(budget_line: str) -> str:
    return PLAN.replace("- tier: cpu-tiny", f"- tier: cpu-tiny\n{budget_line}")


def test_the_plan_names_the_preset_its_session_starts_from():
    assert parse_plan(plan_with("- start: frontier")).budget.start == "frontier"
    assert parse_plan(plan_with("- start: baseline")).budget.start is None
    assert parse_plan(PLAN).budget.start is None
    with pytest.raises(BattlePlanError, match=r":\d+: bad budget value start"):
        parse_plan(plan_with("- start: the frontier please"))


def test_a_session_starting_from_a_preset_measures_every_candidate_on_top_of_it(
    tmp_path, tiny_dataset, capsys
):
    ws = make_workspace(tmp_path, tiny_dataset, plan=plan_with("- start: frontier"))
    (ws / "presets.toml").write_text(FIXTURE)
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "presets")
    run_session(
        ws,
        planner=PlaybookPlanner(),
        tier="cpu-tiny",
        budget=Budget(experiments=1),
        session="fr",
        progress=Progress.quiet(),
    )
    ledger = Ledger(ws / ".golf" / "ledger.jsonl")
    # cpu-tiny sets NUM_LAYERS and MLP_MULT: the tier's shape stays, the preset's techniques apply
    on_tier = {"MLP_ACT_SLOPE": "0.5", "GATED_ATTENTION": "1", "EMA_DECAY": "0.9965"}
    noise = ledger.records(NoiseRecord)
    assert noise, "the incumbent's noise was measured"
    runs = ledger.records(RunRecord)
    assert runs and all(on_tier.items() <= r.env.items() for r in runs), [r.env for r in runs]
    start = [e for e in ledger.records(EventRecord) if e.event == "start_preset"]
    assert [(e.detail["name"], e.detail["record"], e.detail["published_bpb"]) for e in start] == [
        ("frontier", "1855", 1.0611)
    ]
    decision = ledger.records(DecisionRecord)[0]
    # leaky_relu2 (MLP_ACT_SLOPE=0.5) is already part of the preset; mlp3x and lzma are what newer records
    # superseded (MLP 4x, lrzip), so the shipped frontier defers them: bad_lr is the first to run
    assert decision.technique == "bad_lr"
    assert decision.env == on_tier | {"MATRIX_LR": "1000", "TIED_EMBED_LR": "1000", "SCALAR_LR": "1000"}
    note = git(ws, "log", "-1", "--format=%B", decision.git_commit)
    assert "deferred: " in note and "mlp3x (superseded by mlp4x (#1218))" in note
    assert "lzma (superseded by lrzip (#1218))" in note
    # golf status says where the incumbent started and scores it from the preset's record
    from agent.cli import main

    capsys.readouterr()
    assert main(["--workspace", str(ws), "status"]) == 0
    shown = capsys.readouterr().out
    assert "incumbent env: preset frontier (" in shown
    assert "= preset frontier (PR #1855) 1.0611 +" in shown


def test_a_preset_naming_a_flag_the_trainer_lacks_stops_the_session_before_any_run(tmp_path, tiny_dataset):
    from agent.session import SessionError

    ws = make_workspace(tmp_path, tiny_dataset, plan=plan_with("- start: frontier"))
    (ws / "presets.toml").write_text('[preset.frontier]\nenv = { NO_SUCH_FLAG = "1" }\n')
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "presets")
    with pytest.raises(SessionError, match="NO_SUCH_FLAG"):
        run_session(
            ws,
            planner=PlaybookPlanner(),
            tier="cpu-tiny",
            budget=Budget(experiments=1),
            session="x",
            progress=Progress.quiet(),
        )
    assert not Ledger(ws / ".golf" / "ledger.jsonl").records(RunRecord)


# --------------------------------------------------------------------------------- the playbook defers


def state(queue: list[dict], obsolete: dict[str, str], **kw) -> PlannerState:
    items = [
        {
            "technique": t,
            "env": env,
            "state": "todo",
            "priority": None,
            "notes": "",
            "decided": None,
            "tries": 0,
        }
        | extra
        for t, env, extra in queue
    ]
    return PlannerState(
        session="s",
        tier="cpu-smoke",
        hardware="cpu",
        budget_left=Budget(),
        queue=items,
        frontier_obsolete=obsolete,
        **kw,
    )


def test_the_playbook_takes_what_newer_records_dropped_last_and_says_so():
    obsolete = {
        "value_residual": "dropped by #1218, not re-added since",
        "mlp3x": "superseded by mlp4x (#1218)",
    }
    queue = [
        ("value_residual", {"VALUE_RESIDUAL": "1"}, {}),
        ("mlp3x", {"MLP_MULT": "3"}, {}),
        ("no_ttt", {"TTT_ENABLE": "0"}, {}),
    ]
    first = PlaybookPlanner().propose(state(queue, obsolete))
    assert first.experiment is not None and first.experiment.technique == "no_ttt"
    assert (
        "deferred: value_residual (dropped by #1218" in first.reason
        and "mlp3x (superseded by mlp4x" in first.reason
    )

    done = [(t, env, {"decided": "rejected", "tries": 1} if t == "no_ttt" else {}) for t, env, _ in queue]
    second = PlaybookPlanner().propose(state(done, obsolete))
    assert second.experiment is not None and second.experiment.technique == "value_residual"
    assert "taken after the rest of the queue because it is dropped by #1218" in second.reason


def test_the_whole_queue_deferred_items_included_runs_before_any_second_look():
    obsolete = {"value_residual": "dropped by #1218, not re-added since"}
    queue = [
        ("value_residual", {"VALUE_RESIDUAL": "1"}, {}),
        ("ema_off", {"EMA_DECAY": "0"}, {"decided": "inconclusive", "tries": 1}),
    ]
    p = PlaybookPlanner().propose(state(queue, obsolete))
    assert (
        p.experiment is not None
        and p.experiment.technique == "value_residual"
        and "second look" not in p.reason
    )


def test_a_cost_ranking_does_not_pull_a_deferred_item_forward():
    obsolete = {"value_residual": "dropped by #1218, not re-added since"}
    queue = [("value_residual", {"VALUE_RESIDUAL": "1"}, {}), ("no_ttt", {"TTT_ENABLE": "0"}, {})]
    options = [
        {"action": "test", "technique": "value_residual", "gain_per_dollar": 9.0},
        {"action": "test", "technique": "no_ttt", "gain_per_dollar": 1.0},
    ]
    p = PlaybookPlanner().propose(state(queue, obsolete, options=options))
    assert (
        p.experiment is not None
        and p.experiment.technique == "no_ttt"
        and "deferred: value_residual" in p.reason
    )


def test_without_frontier_news_the_playbook_order_is_unchanged():
    queue = [("value_residual", {"VALUE_RESIDUAL": "1"}, {}), ("mlp3x", {"MLP_MULT": "3"}, {})]
    p = PlaybookPlanner().propose(state(queue, {}))
    assert (
        p.experiment is not None and p.experiment.technique == "value_residual" and "deferred" not in p.reason
    )


# -------------------------------------------------------------------------- ready queue lines, frontier


def knob_script(*names: str) -> str:
    gets = "\n".join(f'        self.k{i} = get("{n}", 0, int)  # {n.lower()}' for i, n in enumerate(names))
    return f"class Hyperparameters:\n    def __init__(self, env):\n{gets}\n"


def test_new_techniques_the_trainer_expresses_become_ready_queue_lines():
    d = F.diff(None, F.shipped_snapshot(), ["ema", "value_residual"])
    script = knob_script("MUON_ROW_NORM", "DOC_MASK", "EMA_DECAY", "NUM_LOOPS", "LOOP_START")
    lines = F.ready_queue_lines(d, script, ["ema", "value_residual"], covered_env={"DOC_MASK": "1"})
    ids = [re.match(r"- \[ \] (\w+):", line).group(1) for line in lines]  # type: ignore[union-attr]
    # muoneq_r: in the stack since #1334, its flag is a knob; varlen_attn: already on in the starting env;
    # ema: already queued; depth_recurrence: LOOP_END is not a knob of this script, so never offered
    assert ids == ["muoneq_r"]
    assert "MUON_ROW_NORM=1" in lines[0] and "PR #1334" in lines[0]
    # a starting env that sets a technique's flag, to any value, already has the technique (tuned its own way)
    unqueued = F.ready_queue_lines(d, script, [], covered_env={"EMA_DECAY": "0.9965", "DOC_MASK": "1"})
    assert not any(line.startswith("- [ ] ema:") for line in unqueued)
    # a ready line is a queue line the plan parser accepts as it is
    plan = parse_plan("## Queue\n" + "\n".join(lines) + "\n")
    assert [(q.technique, q.env) for q in plan.queue] == [("muoneq_r", {"MUON_ROW_NORM": "1"})]


def test_a_technique_entering_the_stack_is_offered_and_a_declined_one_never_again():
    snap = F.shipped_snapshot()
    before = snap.model_copy(update={"entries": [e for e in snap.entries if e.pr != "1787"]})
    script = knob_script("MUON_NS")
    assert not F.ready_queue_lines(F.diff(None, before, []), script)  # Polar Express not on the board yet
    d = F.diff(before, snap, [], base_name="seen")
    assert d.entered == ["polar_express"]
    assert [line.split(":")[0] for line in F.ready_queue_lines(d, script)] == ["- [ ] polar_express"]
    assert "MUON_NS=polar" in F.ready_queue_lines(d, script)[0]
    declined = parse_plan("## Queue\n- [-] polar_express — not for us\n")
    assert not F.ready_queue_lines(d, script, [q.technique for q in declined.queue])


def test_the_frontier_block_and_digest_show_the_ready_lines(tmp_path):
    (tmp_path / "trainer").mkdir()
    d = F.frontier_diff_for(tmp_path, ["ema"], script_text=knob_script("MUON_ROW_NORM"))
    assert d.ready and d.ready[0].startswith("- [ ] muoneq_r: MUON_ROW_NORM=1 — ")
    block = F.frontier_block_markdown(d)
    assert "**Ready to queue**" in block and d.ready[0] in block.split("```")[1]
    assert "muoneq_r: MUON_ROW_NORM=1" in F.frontier_digest(d, max_chars=4000)
    assert not F.frontier_diff_for(tmp_path, ["ema"]).ready  # no script given: nothing offered


def test_every_flag_of_the_synonym_table_names_a_defined_technique_and_valid_env():
    table = F.load_synonyms()
    for tid, env in table.flags.items():
        assert tid in table.techniques and env, tid
        assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", k) for k in env), (tid, env)


def test_the_synonym_flags_are_knobs_of_the_shipped_trainer_where_it_has_them():
    """A flag the trainer lacks is silently never offered; list them so a rename is noticed."""
    knobs = {k.name for k in read_knobs(TRAINER_TEXT)}
    table = F.load_synonyms()
    baseline_flags = [
        "value_residual",
        "gated_attention",
        "partial_rope",
        "ln_scale",
        "ema",
        "bigram_hash",
        "smear_gate",
        "qat_int6",
        "xsa",
        "leaky_relu2",
        "mlp3x",
        "layers10",
        "ttt",
        "sliding_eval",
        "warmdown_time",
        "zstd",
    ]
    missing = {t: sorted(set(table.flags[t]) - knobs) for t in baseline_flags if set(table.flags[t]) - knobs}
    assert not missing, missing


# ------------------------------------------------------------------------------- data at the preset's vocab


def test_a_run_reads_the_embedded_data_tokenized_at_its_vocabulary_size(tmp_path):
    from types import SimpleNamespace

    from agent.session import data_variants_in_use
    from memory.workspace import Workspace
    from tools.sweep import data_env

    ctx = SimpleNamespace(ws=Workspace.at(tmp_path))
    assert data_env(ctx, {"VOCAB_SIZE": "8192"}) == {  # type: ignore[arg-type]
        "DATA_PATH": str(tmp_path / "data/datasets/embedded_sp8192"),
        "TOKENIZER_PATH": str(tmp_path / "data/tokenizers/embedded_8192_bpe.model"),
    }
    assert data_env(ctx, {})["DATA_PATH"].endswith("embedded_sp1024")  # type: ignore[arg-type]
    # the session builds every size its runs may use: the starting env's and the queue's (plain: no CASEOPS)
    assert data_variants_in_use({"VOCAB_SIZE": "8192"}, {}, [{"VOCAB_SIZE": "4096"}, {"EMA_DECAY": "0"}]) == (
        (4096, False),
        (8192, False),
    )
    assert data_variants_in_use({}, {}, []) == ((1024, False),)
