"""The one rule for environment overrides: the trainer's own knobs and a few safe runtime names."""

from pathlib import Path

import pytest

from memory.knobs import HARNESS_ENV, allowed_override_names, check_env_allowed, check_env_syntax, read_knobs

SCRIPT = (Path(__file__).resolve().parents[1] / "trainer" / "train_gpt.py").read_text()


def test_knobs_are_read_from_the_hyperparameters_class_with_defaults_and_meanings():
    knobs = {k.name: k for k in read_knobs(SCRIPT)}
    assert knobs["NUM_LAYERS"].default == "9" and knobs["NUM_LAYERS"].kind == "int"
    assert knobs["MLP_ACT_SLOPE"].kind == "float" and "LeakyReLU" in knobs["MLP_ACT_SLOPE"].meaning
    assert "RANK" not in knobs  # torchrun's variables are read outside Hyperparameters: not knobs


def test_a_knob_added_to_the_script_becomes_allowed():
    edited = SCRIPT.replace(
        'self.seed = get("SEED", 1337, int)',
        'self.seed = get("SEED", 1337, int)\n        self.my_idea = get("MY_IDEA", 0, int)  # new',
    )
    assert "MY_IDEA" not in allowed_override_names(SCRIPT)
    assert "MY_IDEA" in allowed_override_names(edited)


@pytest.mark.parametrize("name", ["PYTHONPATH", "LD_PRELOAD", "BASH_ENV", "PYTHONSTARTUP", "NOT_A_KNOB"])
def test_loader_variables_and_unknown_names_are_refused(name):
    with pytest.raises(ValueError, match=name):
        check_env_allowed({name: "/tmp/x", "NUM_LAYERS": "4"}, SCRIPT)


@pytest.mark.parametrize(
    "env", [{n: "x"} for n in sorted(HARNESS_ENV)] + [{"_X": "1"}, {"lower": "1"}, {"NUM_LAYERS": "4\n5"}]
)
def test_syntax_refuses_harness_names_bad_names_and_control_characters(env):
    with pytest.raises(ValueError):
        check_env_syntax(env)


def test_knobs_and_safe_runtime_names_pass():
    assert check_env_allowed({"NUM_LAYERS": 4, "OMP_NUM_THREADS": "1"}, SCRIPT) == {
        "NUM_LAYERS": "4",
        "OMP_NUM_THREADS": "1",
    }


def test_a_script_that_does_not_parse_allows_only_runtime_names():
    with pytest.raises(ValueError, match="NUM_LAYERS"):
        check_env_allowed({"NUM_LAYERS": "4"}, "def broken(:\n")
