"""A throwaway workspace: a git repository holding this project's trainer, tiers and a small plan,
with the tiny dataset linked where the sweep looks for data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAN = """# Battle plan (test)

## Directives
- test the cheap flags first

## Budget
- tier: cpu-tiny

## Queue
- [ ] leaky_relu2: MLP_ACT_SLOPE=0.5 — reported -0.002 to -0.003
- [ ] mlp3x: MLP_MULT=3 — wider MLP
- [ ] bad_lr: MATRIX_LR=1000 TIED_EMBED_LR=1000 SCALAR_LR=1000 — an LR that must diverge
- [ ] lzma: COMPRESSOR=lzma — bytes only: the score cannot move
- [-] ttt_prescore: TTT_ENABLE=1 — illegal, banned

<!-- golf:begin confirmed -->
<!-- golf:end confirmed -->
<!-- golf:begin dead_ends -->
<!-- golf:end dead_ends -->
"""


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout.strip()


def make_workspace(tmp: Path, dataset, plan: str = PLAN) -> Path:
    ws = tmp / "ws"
    (ws / "trainer").mkdir(parents=True)
    for rel in (
        "trainer/train_gpt.py",
        "trainer/prepare_data.py",
        "trainer/local_corpus.py",
        "trainer/caseops.py",
        "tiers.toml",
    ):
        shutil.copy(ROOT / rel, ws / rel)
    (ws / "battle_plan.md").write_text(plan)
    (ws / ".gitignore").write_text("/data/\n/.golf/\n/reports/\n__pycache__/\n")
    data = ws / "data" / "datasets" / "embedded_sp1024"
    data.mkdir(parents=True)
    for shard in Path(dataset.data_path).glob("fineweb_*.bin"):
        (data / shard.name).symlink_to(shard)
    (data / "manifest.json").write_text(json.dumps({"test": True}))
    (ws / "data" / "tokenizers").mkdir(parents=True)
    (ws / "data" / "tokenizers" / "embedded_1024_bpe.model").symlink_to(dataset.tokenizer_path)
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    return ws


def golf_env(extra: dict | None = None) -> dict:
    e = dict(os.environ) | {"PYTHONPATH": str(ROOT)} | (extra or {})
    e.pop("OPENAI_API_KEY", None)
    e.pop("OPENAI_BASE_URL", None)
    return e


def golf(ws: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "--workspace", str(ws), *args],
        env=golf_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
