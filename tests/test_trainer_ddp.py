"""Two gloo processes under torchrun take the same optimisation steps as one process that accumulates the
same micro-batches: the property that lets one device stand in for eight."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testing.trainer_fixtures import TRAINER, build_tiny_dataset, read_metrics


def launch(cmd: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(env, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=full, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_two_process_ddp_matches_one_process_with_accumulation(tmp_path):
    data = build_tiny_dataset()
    shape = dict(TRAIN_BATCH_TOKENS=512, ITERATIONS=3, VAL_MAX_TOKENS=512, VAL_HOLDOUT_TOKENS=256)
    single = data.env(RUN_DIR=str(tmp_path / "single"), GRAD_ACCUM_STEPS=4, **shape)
    double = data.env(RUN_DIR=str(tmp_path / "ddp"), GRAD_ACCUM_STEPS=2, **shape)  # 2 ranks x 2 micro-steps
    one = launch([sys.executable, str(TRAINER)], single, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAINER)],
        double,
        tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]

    a = json.loads((tmp_path / "single" / "results.json").read_text())
    b = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert (a["status"], b["status"]) == ("ok", "ok")
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["steps"] == b["steps"] == 3 and a["train_tokens"] == b["train_tokens"] == 3 * 512
    losses_a = [m["train_loss"] for m in read_metrics(tmp_path / "single")]
    losses_b = [m["train_loss"] for m in read_metrics(tmp_path / "ddp")]
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    assert len(set(losses_a)) == 3  # the weights really moved between steps
    for key in ("val_bpb_prequant", "val_bpb", "holdout_bpb", "val_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert (a["val_tokens"], a["val_bytes"]) == (b["val_tokens"], b["val_bytes"])
    assert a["bytes_model"] == pytest.approx(b["bytes_model"], rel=0.01)
