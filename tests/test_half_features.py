"""Plan and tier settings that must reach the loop: the plan's seeds_max, an edited typical_noise."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from agent.experiment import ExperimentRunner
from agent.playbook import PlaybookPlanner
from agent.progress import Progress
from agent.session import Session
from memory.ledger import Ledger
from memory.records import NoiseRecord, RunRecord, RunResult
from memory.tiers import load_tiers
from memory.workspace import Workspace
from tools.context import ToolContext
from tools.edit_script import sha256_text

ROOT = Path(__file__).resolve().parents[1]
PLAN = "# Plan\n\n## Budget\n- tier: cpu-tiny\n- seeds_max: 2\n\n## Queue\n- [ ] mlp3x: MLP_MULT=3 — wider\n"


def workspace(tmp_path: Path, plan: str = PLAN) -> Workspace:
    ws = tmp_path / "ws"
    (ws / "trainer").mkdir(parents=True)
    shutil.copy(ROOT / "trainer" / "train_gpt.py", ws / "trainer" / "train_gpt.py")
    shutil.copy(ROOT / "tiers.toml", ws / "tiers.toml")
    (ws / "battle_plan.md").write_text(plan)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"],
    ):
        subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)
    return Workspace.at(ws)


def test_the_plans_seeds_max_caps_each_candidate_and_an_edit_applies_at_the_next_decision(tmp_path):
    ws = workspace(tmp_path)
    tier = load_tiers(ws.tiers_file)["cpu-tiny"]
    assert tier.seeds_max == 3  # the tier's own cap, which the plan overrides
    s = Session(
        ws,
        planner=PlaybookPlanner(),
        tier=None,
        budget=None,
        session="s1",
        resume=False,
        allow_dirty=False,
        progress=Progress.quiet(),
    )
    assert s.runner.tier.seeds_max == s.ctx.tier.seeds_max == 2
    assert s.runner.tier.seeds_initial == 2
    ws.battle_plan.write_text(PLAN.replace("seeds_max: 2", "seeds_max: 1"))
    assert s.reload_plan()
    assert (s.runner.tier.seeds_max, s.runner.tier.seeds_initial, s.ctx.tier.seeds_max) == (1, 1, 1)
    ws.battle_plan.write_text(PLAN.replace("- seeds_max: 2\n", ""))
    assert s.reload_plan() and s.runner.tier.seeds_max == 3  # no key: the tier's cap again


def test_an_edited_typical_noise_is_pooled_again_instead_of_reusing_the_old_noise_record(tmp_path):
    ws = workspace(tmp_path)
    tiers = load_tiers(ws.tiers_file)
    ledger = Ledger(ws.ledger)
    ctx = ToolContext(
        ws=ws, ledger=ledger, session="s1", tier=tiers["cpu-tiny"], tiers=tiers, python=sys.executable
    )
    runner = ExperimentRunner(ctx, Progress.quiet())
    runner.hardware = "cpu@test"
    sha = sha256_text(ws.script.read_text())
    for i, bpb in enumerate([3.10, 3.12]):  # the A/A runs the tier asks for, already measured
        ledger.append(
            RunRecord(
                session="s1",
                run_id=f"aa-{i}",
                experiment=f"aa-{sha[:8]}-x",
                candidate="incumbent",
                tier="cpu-tiny",
                hardware="cpu@test",
                seed=1337 + i,
                script_sha=sha,
                result=RunResult(status="ok", val_bpb=bpb),
            )
        )
    first = runner.ensure_noise()
    assert first.prior_std == 0.01 and runner.ensure_noise() == first  # same inputs: the record is reused
    runner.tier = ctx.tier = tiers["cpu-tiny"].model_copy(update={"typical_noise": 0.001})
    second = runner.ensure_noise()
    assert second != first and second.prior_std == 0.001 and second.std < first.std
    assert len(ledger.records(NoiseRecord)) == 2
