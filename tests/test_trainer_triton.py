"""The fused Triton softcap cross-entropy agrees with the PyTorch path. Triton kernels launch on this CPU
machine only in interpreter mode, which must be switched on before triton is first imported: hence the
check runs in a fresh process with TRITON_INTERPRET=1. On a GPU machine the same comparison runs on CUDA
(benchmarks/trainer_gpu.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testing.trainer_fixtures import ROOT

pytest.importorskip("triton")

CHECK = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from testing.trainer_fixtures import TINY_ENV, load_trainer
tg = load_trainer()
assert type(tg._softcap_ce_kernel).__name__ == "InterpretedFunction"
torch.manual_seed(0)
out = {}
cases = [("fp32", torch.float32, 1024), ("bf16", torch.bfloat16, 1024), ("odd", torch.float32, 1000)]
for name, dtype, vocab in cases:
    z = (torch.randn(37, vocab) * 20).to(dtype).requires_grad_()
    t = torch.randint(0, vocab, (37,))
    fused = tg.softcap_cross_entropy(z, t, 30.0, True)
    (fused * 3).backward()
    g_fused, z.grad = z.grad.clone(), None
    ref = tg.softcap_cross_entropy(z, t, 30.0, False)
    (ref * 3).backward()
    out[name] = dict(loss=[fused.item(), ref.item()],
                     grad_err=(g_fused.float() - z.grad.float()).abs().max().item(),
                     grad_max=z.grad.float().abs().max().item())
# a whole model step: loss and every gradient agree
args = tg.Hyperparameters(dict(TINY_ENV))
grads = []
for fused in (True, False):
    torch.manual_seed(1)
    model = tg.build_model(args, torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.fused_ce = fused
    x = torch.randint(0, 1024, (2, 32))
    loss = model(x, torch.roll(x, -1, 1))
    loss.backward()
    grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
out["model"] = dict(loss=[grads[0][0], grads[1][0]],
                    grad_err=max((a - b).abs().max().item() for a, b in zip(grads[0][1], grads[1][1])))
print(json.dumps(out))
"""


def test_fused_softcap_cross_entropy_matches_torch_in_interpreter_mode():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(ROOT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("fp32", "odd", "model"):
        fused, ref = out[name]["loss"]
        assert fused == pytest.approx(ref, rel=1e-5), name
    assert out["bf16"]["loss"][0] == pytest.approx(out["bf16"]["loss"][1], rel=1e-3)
    for name in ("fp32", "odd"):
        assert out[name]["grad_err"] <= 1e-6 * max(out[name]["grad_max"], 1.0), name
    assert out["bf16"]["grad_err"] <= 1e-2 * out["bf16"]["grad_max"]
    assert out["model"]["grad_err"] < 1e-5


def test_fused_path_is_off_where_kernels_cannot_launch():
    # without the interpreter a CPU tensor takes the torch path even when FUSED_KERNELS=1 (the default)
    from testing.trainer_fixtures import trainer_for_tests

    tg = trainer_for_tests()
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter mode is on in this process")
    assert not tg.triton_usable(torch.zeros(1))
    z, t = torch.randn(4, 16), torch.randint(0, 16, (4,))
    fused_requested = tg.softcap_cross_entropy(z, t, 30.0, True)
    assert fused_requested.item() == tg.torch_softcap_cross_entropy(z, t, 30.0).item()
