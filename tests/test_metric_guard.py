"""The metric fence on the syntax tree: code outside the protected region cannot redefine, wrap, shadow or
monkeypatch what the region computes the score with, whichever spelling it uses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from memory.ledger import Ledger
from memory.tiers import Tier
from memory.workspace import Workspace
from tools import registry
from tools.context import ToolContext
from tools.metric_guard import PROTECTED_END, check_script, violations
from tools.toolbox import load_tools

TRAINER = (Path(__file__).resolve().parents[1] / "trainer" / "train_gpt.py").read_text()
AFTER_FENCE = PROTECTED_END + "\n"

# each one, placed after the fence, makes the runs report whatever the candidate likes
BYPASSES = {
    "def": "def bits_per_byte(loss_sum_nats, token_count, byte_count):\n    return 0.03\n",
    "globals_assignment": "globals()['bits_per_byte'] = lambda *a: 0.03\n",
    "globals_split_name": "globals()['bits_' + 'per_byte'] = lambda *a: 0.03\n",
    "setattr_split_name": "import sys\nsetattr(sys.modules[__name__], 'bits_' + 'per_byte', lambda *a: 0.03)\n",
    "sys_modules_attribute": "import sys\nsys.modules[__name__].bits_per_byte = lambda *a: 0.03\n",
    "main_module": "import __main__\n__main__.bits_per_byte = lambda *a: 0.03\n",
    "wrapper": "_orig = bits_per_byte\nbits_per_byte = lambda *a: _orig(*a) * 0.1\n",
    "decorator": "def cheap(f):\n    return lambda *a: 0.03\n\n@cheap\ndef count_target_bytes(p, t, l):\n    pass\n",
    "del": "del count_target_bytes\n",
    "monkeypatch_math_log": "math.log = lambda x: 100.0\n",
    "monkeypatch_numpy": "np.zeros = np.ones\n",
    "shadow_builtin": "int = float\n",
    "shadow_parameter": "def summarize(sums, bits_per_byte=lambda *a: 0.03):\n    return bits_per_byte(*sums)\n",
    "class_attribute": "class Tricks:\n    bits_per_byte = staticmethod(lambda *a: 0.03)\n",
    "exec": "exec('bits_per_byte = lambda *a: 0.03')\n",
    "code_swap": "bits_per_byte_ref = None\n(lambda f: f)(count_target_bytes).__code__ = (lambda *a: 0).__code__\n",
    "vars_of_module": "import math as m\nvars(m)['log'] = lambda x: 100.0\n",
    "global_statement": "def f():\n    global bits_per_byte\n    bits_per_byte = None\n",
    "import_as": "from os import getcwd as bits_per_byte\n",
    "walrus": "if (bits_per_byte := (lambda *a: 0.03)):\n    pass\n",
    "for_target": "for bits_per_byte in [lambda *a: 0.03]:\n    pass\n",
    "frame_globals": "import sys\nsys._getframe().f_globals['bits_per_byte'] = None\n",
    "builtins_module": "import builtins\nbuiltins.max = min\n",
    "second_numpy": "import fake_numpy as np\n",
}


def edited(addition: str) -> str:
    return TRAINER.replace(AFTER_FENCE, AFTER_FENCE + "\n" + addition, 1)


def test_the_pristine_trainer_passes():
    assert violations(TRAINER, TRAINER) == []


def test_an_ordinary_change_after_the_fence_passes():
    text = edited("def mlp_gate(x):\n    y = x * 2\n    return y\n")
    text = text.replace(
        "self.tie_embeddings = bool(", "self.extra = 1\n        self.tie_embeddings = bool(", 1
    )
    assert violations(text, TRAINER) == []


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_each_way_around_the_fence_is_refused(name):
    text = edited(BYPASSES[name])
    compile(text, "train_gpt.py", "exec")  # each one is valid Python: the text fence alone lets it through
    problems = violations(text, TRAINER)
    assert problems, name
    with pytest.raises(ValueError, match="protected metric"):
        check_script(text, TRAINER)


def test_a_changed_or_missing_fence_is_refused():
    assert violations(TRAINER.replace(PROTECTED_END, ""), TRAINER)
    changed = TRAINER.replace(
        "(loss_sum_nats / token_count) / math.log(2.0)", "(loss_sum_nats / token_count) / 9"
    )
    assert "differs" in violations(changed, TRAINER)[0]


@pytest.fixture()
def ctx(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "train_gpt.py").write_text(TRAINER)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
        cwd=tmp_path,
        check=True,
    )
    load_tools()
    ws = Workspace.at(tmp_path)
    tier = Tier(name="cpu-tiny", hardware="cpu")
    return ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers={"cpu-tiny": tier})


@pytest.mark.parametrize(
    "name",
    ["def", "globals_split_name", "setattr_split_name", "wrapper", "decorator", "monkeypatch_math_log"],
)
def test_the_edit_tool_refuses_an_edit_that_rebinds_wraps_or_monkeypatches_the_bpb_function(ctx, name):
    out = registry.call(
        "edit_train_script",
        {
            "rationale": "a better score",
            "edits": [{"search": AFTER_FENCE, "replace": AFTER_FENCE + "\n" + BYPASSES[name]}],
        },
        ctx,
    )
    assert not out.ok and "protected metric" in out.error
    assert ctx.ws.script.read_text() == TRAINER


def test_the_sweep_refuses_a_guarded_script_before_any_run(ctx):
    ctx.ws.script.write_text(edited(BYPASSES["wrapper"]))  # written around the edit tool, e.g. by hand
    out = registry.call("launch_local_sweep", {"candidates": [{"name": "c"}], "seeds": [1]}, ctx)
    assert not out.ok and "may not touch the metric" in out.error and "bits_per_byte" in out.error
    assert not ctx.ws.runs_dir.exists() or not any(ctx.ws.runs_dir.rglob("results.json"))


def test_an_experiment_on_a_guarded_script_is_refused_and_recorded_before_any_run(ctx):
    from agent.experiment import ExperimentRunner
    from agent.planner import ExperimentSpec, Proposal
    from agent.progress import Progress
    from memory.records import EventRecord, RunRecord

    ctx.ws.script.write_text(edited(BYPASSES["setattr_split_name"]))
    spec = ExperimentSpec(name="fast_bpb", hypothesis="a better score")
    out = ExperimentRunner(ctx, Progress.quiet()).run_experiment(
        Proposal(action="experiment", experiment=spec)
    )
    assert out["outcome"] == "refused" and "protected metric" in out["reason"]
    assert not ctx.ledger.records(RunRecord)
    assert ctx.ledger.records(EventRecord)[-1].event == "proposal_refused"
