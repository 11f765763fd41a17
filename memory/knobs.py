"""The trainer's knobs, read from its source, and the one rule for which environment names a run may set.

The trainer is never imported (it is a standalone file the agent mutates), so its knobs are read from the
text of its Hyperparameters class: every `get("NAME", default, cast)  # meaning` line is a knob. Overrides
from any source (the LLM, the battle plan's queue, incumbent.json) may set only those knobs and a few
runtime variables that cannot load code; anything else (PYTHONPATH, LD_PRELOAD, BASH_ENV, an unknown
name) is refused before a run starts.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

from pydantic import BaseModel

# one syntax for every env name the project handles (plan, sweep, incumbent.json)
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# the harness decides where data comes from and where results go; no override may redirect them
HARNESS_ENV = frozenset({"DATA_PATH", "TOKENIZER_PATH", "RUN_DIR", "RUN_ID", "SEED"})
# runtime variables that tune threads and devices but cannot make the interpreter load other code
SAFE_RUNTIME_ENV = frozenset(
    {
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "PYTORCH_CUDA_ALLOC_CONF",
        "NCCL_DEBUG",
        "TORCHINDUCTOR_MAX_AUTOTUNE",
        "TRITON_INTERPRET",
    }
)
MAX_VALUE_CHARS = 200
MAX_OVERRIDES = 48  # the frontier preset alone sets 41 knobs (presets.toml)


class Knob(BaseModel):
    name: str
    default: str
    kind: str  # int | float | str
    meaning: str = ""


def read_knobs(script_text: str) -> list[Knob]:
    """Every `get("NAME", default[, cast])` of the Hyperparameters class, in source order, with the
    comment on its line as the meaning. A script that does not parse has no knobs (so nothing is allowed)."""
    try:
        tree = ast.parse(script_text)
    except SyntaxError:
        return []
    lines = script_text.splitlines()
    calls = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == "Hyperparameters"
        for node in ast.walk(cls)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "get"
        and len(node.args) >= 2
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and ENV_NAME.match(node.args[0].value)
    ]
    seen: dict[str, Knob] = {}
    for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        name = str(node.args[0].value)  # type: ignore[attr-defined]
        if name in seen:
            continue
        default = node.args[1]
        value = str(default.value) if isinstance(default, ast.Constant) else ast.unparse(default)
        kind = node.args[2].id if len(node.args) > 2 and isinstance(node.args[2], ast.Name) else "str"
        line = lines[node.lineno - 1]
        seen[name] = Knob(
            name=name, default=value, kind=kind, meaning=line.split("#", 1)[1].strip() if "#" in line else ""
        )
    return list(seen.values())


def allowed_override_names(script_text: str) -> frozenset[str]:
    """What an override may set for this script: its own knobs (less the harness's) and safe runtime names."""
    return frozenset(k.name for k in read_knobs(script_text)) - HARNESS_ENV | SAFE_RUNTIME_ENV


def env_syntax_error(name: str, value: object) -> str | None:
    """Why this single name=value can never be an override (None when its form is fine)."""
    if not isinstance(name, str) or not ENV_NAME.match(name):
        return f"{str(name)[:70]!r} is not an environment variable name (A-Z, 0-9, _, starting with a letter)"
    if name in HARNESS_ENV:
        return f"{name} is set by the harness and cannot be overridden"
    text = str(value)
    if len(text) > MAX_VALUE_CHARS or any(c in text for c in "\n\r\x00"):
        return f"{name}: value longer than {MAX_VALUE_CHARS} characters or contains a control character"
    return None


def check_env_syntax(env: Mapping[str, object]) -> dict[str, str]:
    """The form check every source of overrides shares; raises ValueError naming each bad entry."""
    if len(env) > MAX_OVERRIDES:
        raise ValueError(f"at most {MAX_OVERRIDES} overrides, got {len(env)}")
    problems = [p for k, v in env.items() if (p := env_syntax_error(k, v))]
    if problems:
        raise ValueError("; ".join(problems))
    return {k: str(v) for k, v in env.items()}


def check_env_allowed(env: dict[str, str], script_text: str) -> dict[str, str]:
    """Form check plus the allow-list of this script: raises ValueError before any run can start."""
    env = check_env_syntax(env)
    allowed = allowed_override_names(script_text)
    unknown = sorted(k for k in env if k not in allowed)
    if unknown:
        raise ValueError(
            f"not a knob of trainer/train_gpt.py nor a safe runtime variable: {', '.join(unknown)} "
            f"(overrides may set only the Hyperparameters names, e.g. NUM_LAYERS, and "
            f"{', '.join(sorted(SAFE_RUNTIME_ENV))})"
        )
    return env


# What a tier fixes so that its runs compare: the training budget and what is scored. An override may not
# move these (a 40-step tier "won" by ITERATIONS=400, or a score on fewer validation tokens, is no
# finding); the challenge's own limits (600 s, 16 MB, GPTQ inside the training time) are tier values too.
TIER_FIXED = frozenset(
    {
        "MAX_WALLCLOCK_SECONDS",
        "VAL_MAX_TOKENS",
        "VAL_HOLDOUT_TOKENS",
        "ARTIFACT_CAP_BYTES",
        "GPTQ_RESERVE_SECONDS",
    }
)
# How a run executes on the tier's machine, not what it learns: the tier sets these (device, precision,
# compilation, accumulation, logging, eval batching, divergence guard) and a planner gains nothing by
# moving them, so the LLM planner's knob list and enum leave them out (~200 tokens a request).
RUN_SHAPE = frozenset(
    {
        "DEVICE",
        "DTYPE",
        "COMPILE",
        "COMPILE_NS",
        "GRAD_ACCUM_STEPS",
        "WARMUP_STEPS",
        "VAL_BATCH_SIZE",
        "VAL_LOSS_EVERY",
        "TRAIN_LOG_EVERY",
        "DIVERGE_LOSS",
        "DIVERGE_GRACE_STEPS",
    }
)
# on a step-matched tier the step count and the tokens per step are the compute budget as well
STEP_MATCHED_FIXED = frozenset({"ITERATIONS", "TRAIN_BATCH_TOKENS"})


def check_tier_fixed(env: Mapping[str, str], tier_env: Mapping[str, object], step_matched: bool) -> None:
    """Raises ValueError naming each override that moves a knob the tier fixes (see TIER_FIXED); setting
    one to the tier's own value is allowed."""
    fixed = TIER_FIXED | (STEP_MATCHED_FIXED if step_matched else frozenset())
    moved = [
        f"{k}={v} (the tier's {tier_env[k]})" if k in tier_env else f"{k}={v} (the trainer's default here)"
        for k, v in env.items()
        if k in fixed and (k not in tier_env or str(v) != str(tier_env[k]))
    ]
    if moved:
        raise ValueError(
            f"fixed by the tier so that runs compare (training budget and what is scored): {', '.join(moved)}"
        )


def caseops_on(env: Mapping[str, str] | None) -> bool:
    """The trainer's CASEOPS knob as it reads it (an integer, 0 = off): which data variant a run needs."""
    v = str((env or {}).get("CASEOPS", "0")).strip()
    return v.lstrip("-").isdigit() and int(v) != 0
