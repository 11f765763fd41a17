"""Named env bundles from presets.toml: a published record's configuration as the trainer's flags.

A preset is where a session starts: the battle plan's `- start: NAME` makes the preset's env the incumbent
before the queue runs, so every queue item is an ablation or an idea on top of it, and the judge's
projection can anchor at the record the preset reproduces (`record`, `published_bpb`) instead of the
baseline. On a tier, the tier's own env keys win (a local tier keeps its small shape and its step
budget; the preset brings the techniques): see `env_on_tier`.

    [preset.frontier]
    description = "the best merged record as flags"
    record = "1855"
    published_bpb = 1.0611
    env = { NUM_LAYERS = 11, MLP_MULT = 4, VOCAB_SIZE = 8192 }
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memory.knobs import check_env_syntax

PRESETS_FILE = "presets.toml"


class PresetError(ValueError):
    """A missing or malformed presets file, or an unknown preset; the message names the file and the fix."""


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silently ignored line

    name: str
    description: str = ""
    record: str | None = None  # the pull request whose configuration this reproduces, e.g. "1855"
    published_bpb: float | None = Field(default=None, gt=0.5, lt=5.0)  # that record's val_bpb
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("record", mode="before")
    @classmethod
    def _record_text(cls, v: object) -> object:
        return str(v).lstrip("#") if isinstance(v, int | str) else v

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, v: object) -> object:
        if not isinstance(v, Mapping):
            return v  # pydantic reports the type error
        # TOML gives ints, floats and booleans; the trainer reads strings, booleans as 0/1
        text = {k: ("1" if x else "0") if isinstance(x, bool) else str(x) for k, x in v.items()}
        return check_env_syntax(text)

    def env_on_tier(self, tier_env: Mapping[str, str]) -> dict[str, str]:
        """The preset's env less the keys the tier sets: a tier's shape and budget are what make its runs
        comparable and affordable on its hardware; the preset contributes everything else."""
        return {k: v for k, v in self.env.items() if k not in tier_env}


def load_presets(path: str | Path) -> dict[str, Preset]:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PresetError(
            f"{path}: no presets file (presets are `[preset.NAME]` tables with description, "
            "record, published_bpb and env)"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PresetError(f"{path}: not valid TOML: {e}") from None
    tables = raw.get("preset", {})
    if not isinstance(tables, dict) or not all(isinstance(b, dict) for b in tables.values()):
        raise PresetError(f"{path}: presets must be tables `[preset.NAME]`")
    presets = {}
    for name, body in tables.items():
        try:
            presets[name] = Preset(name=name, **body)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'preset'}: {err['msg']}" for err in e.errors()
            )
            raise PresetError(f"{path}: preset {name!r}: {problems}") from None
        except TypeError as e:
            raise PresetError(f"{path}: preset {name!r}: {e}") from None
    return presets


def get_preset(path: str | Path, name: str) -> Preset:
    presets = load_presets(path)
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise PresetError(f"{path}: no preset {name!r} (known: {known})")
    return presets[name]


def starting_env(
    preset: Preset | None, tier_env: Mapping[str, str], incumbent_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The env a session's incumbent starts with: the preset on this tier, under the committed incumbent's
    env (a branch that already won on top of the preset keeps its wins)."""
    base = preset.env_on_tier(tier_env) if preset else {}
    return base | dict(incumbent_env or {})
