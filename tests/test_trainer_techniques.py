"""Every technique flag runs, stays finite and really changes the computation; SmearGate/BigramHash keep
documents apart; TTT scores each chunk before training on it; the export roundtrip and the result files."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memory.records import RunResult
from testing.trainer_fixtures import (
    BOS,
    TRAINER,
    read_metrics,
    run_in_process,
)

CPU = torch.device("cpu")


NO_AUTOCAST = torch.autocast("cpu", enabled=False)

# flag -> (env overrides, where the change must show: train losses, prequant score, roundtrip score, bytes)
FLAGS = {
    "VALUE_RESIDUAL": ({"VALUE_RESIDUAL": 1}, "train"),
    "GATED_ATTENTION": ({"GATED_ATTENTION": 1}, "train"),
    "ROPE_DIMS": ({"ROPE_DIMS": 8}, "train"),
    "LN_SCALE": ({"LN_SCALE": 1}, "train"),
    "EMA_DECAY": ({"EMA_DECAY": 0.9}, "prequant"),
    "BIGRAM_HASH_BUCKETS": ({"BIGRAM_HASH_BUCKETS": 64, "BIGRAM_DIM": 8}, "train"),
    "SMEAR_GATE": ({"SMEAR_GATE": 1}, "train"),
    "QAT_BITS": ({"QAT_BITS": 6}, "train"),
    "XSA_LAST_N": ({"XSA_LAST_N": 1}, "train"),
    "MLP_ACT_SLOPE": ({"MLP_ACT_SLOPE": 0.5}, "train"),
    "MLP_MULT": ({"MLP_MULT": 3}, "train"),
    "NUM_LAYERS": ({"NUM_LAYERS": 3}, "train"),
    "TTT_ENABLE": ({"TTT_ENABLE": 1, "TTT_CHUNK_TOKENS": 256, "TTT_LR": 0.05, "TTT_EPOCHS": 1}, "roundtrip"),
    "EVAL_STRIDE": ({"EVAL_STRIDE": 16}, "prequant"),
    "COMPRESSOR=zstd": ({"COMPRESSOR": "zstd"}, "bytes"),
    "COMPRESSOR=lzma": ({"COMPRESSOR": "lzma"}, "bytes"),
    "WARMDOWN_MODE": ({"WARMDOWN_MODE": "time_fraction", "WARMDOWN_FRAC": 1.0}, "train"),
}


@pytest.fixture(scope="module")
def baseline(tg, tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("baseline")
    return run_in_process(tg, tiny_data, run_dir), read_metrics(run_dir)


@pytest.mark.parametrize("flag", list(FLAGS))
def test_flag_runs_finite_and_changes_the_computation(tg, tiny_data, tmp_path, baseline, flag):
    env, where = FLAGS[flag]
    base, base_metrics = baseline
    result = run_in_process(tg, tiny_data, tmp_path / "run", **env)
    metrics = read_metrics(tmp_path / "run")
    assert result["status"] == "ok", result["error"]
    assert all(math.isfinite(m["train_loss"]) for m in metrics) and math.isfinite(result["val_bpb"])
    losses, base_losses = [m["train_loss"] for m in metrics], [m["train_loss"] for m in base_metrics]
    if where == "train":
        assert losses != base_losses
    else:  # an evaluation/export-only flag leaves training bit-identical and changes what it claims to
        assert losses == base_losses
        key = {"prequant": "val_bpb_prequant", "roundtrip": "val_bpb", "bytes": "bytes_model"}[where]
        assert result[key] != base[key]
    for name, value in env.items():  # each knob reached the trainer's Hyperparameters under its own name
        key = name.lower()
        assert result["hyperparameters"][key] == value != base["hyperparameters"][key], name


def losses(run_dir: Path) -> list[float]:
    return [m["train_loss"] for m in read_metrics(run_dir)]


def test_same_seed_same_run(tg, tiny_data, tmp_path, baseline):
    again = run_in_process(tg, tiny_data, tmp_path / "again")
    assert again["val_bpb"] == baseline[0]["val_bpb"]
    assert losses(tmp_path / "again") == [m["train_loss"] for m in baseline[1]]


def test_warmup_priming_steps_leave_no_trace(tg, tiny_data, tmp_path, baseline):
    primed = run_in_process(tg, tiny_data, tmp_path / "primed", WARMUP_STEPS=3)
    assert losses(tmp_path / "primed") == [m["train_loss"] for m in baseline[1]]
    assert primed["val_bpb"] == baseline[0]["val_bpb"]


# --- documents stay apart --------------------------------------------------------------------------------


def two_documents(doc_a: list[int]) -> torch.Tensor:
    return torch.tensor([[BOS, *doc_a, BOS, 500, 501, 502, 503]])


def randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_smear_gate_and_bigram_do_not_leak_across_bos(tg, tiny_data):
    torch.manual_seed(0)
    args = tg.Hyperparameters(tiny_data.env(SMEAR_GATE=1, BIGRAM_HASH_BUCKETS=64, BIGRAM_DIM=8, NUM_LAYERS=0))
    model = randomised(tg.build_model(args, CPU)).eval()
    a1, a2 = two_documents([10, 11, 12, 13]), two_documents([900, 901, 902, 903])
    b = slice(5, None)  # document B: its BOS and its tokens
    with torch.no_grad():
        assert torch.equal(model.embed(a1)[:, b], model.embed(a2)[:, b])
        # with no attention layers the logits see only the input stage: B's first prediction is untouched
        assert torch.equal(model.logits(a1)[:, 5], model.logits(a2)[:, 5])
        assert not torch.equal(model.embed(a1)[:, 1:5], model.embed(a2)[:, 1:5])
        # the same model without the BOS mask leaks document A into B: the check above can fail
        model.smear.bos_id = model.bigram.bos_id = -1
        assert not torch.equal(model.embed(a1)[:, 5], model.embed(a2)[:, 5])


def test_smear_gate_alone_leaks_without_mask(tg, tiny_data):
    torch.manual_seed(0)
    gate = tg.SmearGate(8, BOS)
    x1, x2 = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    x2[:, 3:] = x1[:, 3:]  # same document B (positions 3..5), different document A
    ids = torch.tensor([[BOS, 7, 7, BOS, 8, 8]])
    assert torch.equal(gate(x1, ids)[:, 3:], gate(x2, ids)[:, 3:])
    gate.bos_id = -1
    assert not torch.equal(gate(x1, ids)[:, 3], gate(x2, ids)[:, 3])


# --- TTT is score-first ----------------------------------------------------------------------------------


def ttt_trace(tg, args, model, tokens):
    """Weights in force when each chunk was scored, and the chunk sums."""
    snaps = []
    out = tg.evaluate_ttt(
        model,
        tokens,
        args,
        luts_for(tg, args),
        CPU,
        NO_AUTOCAST,
        batch_seqs=2,
        before_score=lambda k, m: snaps.append(copy.deepcopy(m.state_dict())),
    )
    return snaps, out


def luts_for(tg, args):
    import sentencepiece as spm

    return tg.build_sentencepiece_luts(spm.SentencePieceProcessor(model_file=args.tokenizer_path), 1024, CPU)


@pytest.mark.parametrize("stride", [0, 16])
def test_ttt_never_scores_a_chunk_with_weights_trained_on_it(tg, tiny_data, stride):
    args = tg.Hyperparameters(
        tiny_data.env(TTT_ENABLE=1, TTT_CHUNK_TOKENS=64, TTT_LR=0.05, TTT_EPOCHS=2, EVAL_STRIDE=stride)
    )
    torch.manual_seed(0)
    model = randomised(tg.build_model(args, CPU))
    initial = copy.deepcopy(model.state_dict())
    tokens = torch.from_numpy(tiny_data.val_tokens[: 32 * 8 + 1].copy())
    snaps, out = ttt_trace(tg, args, copy.deepcopy(model), tokens)
    assert len(out["chunks"]) == 4 and sum(c[1] for c in out["chunks"]) == 32 * 8

    for key, value in initial.items():  # chunk 0 is scored by the untouched weights
        assert torch.equal(snaps[0][key], value)
    # each chunk's score is exactly what its snapshot gives on its windows
    windows = tg.eval_windows(tokens.numel(), 32, stride)
    chunk_windows, i = [], 0
    for _, ntok, _ in out["chunks"]:
        j, n = i, 0
        while n < ntok:
            n += 32 - windows[j][1]
            j += 1
        chunk_windows.append(windows[i:j])
        i = j
    for k, snap in enumerate(snaps):
        probe = copy.deepcopy(model)
        probe.load_state_dict(snap)
        probe.eval()
        again = tg.score_windows(probe, tokens, chunk_windows[k], 32, 2, luts_for(tg, args), CPU, NO_AUTOCAST)
        assert again[0] == pytest.approx(out["chunks"][k][0], rel=1e-6)

    # changing chunk 2's tokens cannot change the weights that scored chunk 2 ... but does change chunk 3's
    altered = tokens.clone()
    altered[2 * 64 + 2 : 3 * 64] = (altered[2 * 64 + 2 : 3 * 64] * 7 + 5) % 1024
    snaps2, _ = ttt_trace(tg, args, copy.deepcopy(model), altered)
    for k in (0, 1, 2):
        assert all(torch.equal(snaps[k][n], snaps2[k][n]) for n in snaps[k])
    assert not all(torch.equal(snaps[3][n], snaps2[3][n]) for n in snaps[3])


# --- quantisation, artifact and result files -------------------------------------------------------------


def test_quantisation_roundtrip_is_close(tg, tiny_data):
    torch.manual_seed(0)
    for bits in (0, 6):
        args = tg.Hyperparameters(tiny_data.env(QAT_BITS=bits))
        sd = randomised(tg.build_model(args, CPU)).state_dict()
        obj = tg.quantize_state_dict(sd, args)
        back = tg.dequantize_state_dict(obj)
        assert set(back) == set(sd)
        assert obj["quantized"]
        assert all(q.abs().max() <= 2 ** (obj["bits"][n] - 1) - 1 for n, q in obj["quantized"].items())
        for name in obj["quantized"]:
            step = obj["scales"][name].float()[:, None]  # one quantisation step per row (fp16-rounded)
            assert torch.all((back[name] - sd[name]).abs() <= 0.6 * step + 1e-6)
        for name in obj["passthrough"]:  # small tensors: fp16 or (control tensors) exact fp32
            assert torch.allclose(back[name], sd[name], rtol=1e-3, atol=1e-4)
        assert {obj["bits"][n] for n in obj["quantized"] if n.startswith("blocks.")} == {bits or 8}


def test_run_result_matches_record_and_artifact(tg, tiny_data, tmp_path, baseline):
    result = baseline[0]
    assert set(result) == set(RunResult.model_fields)
    RunResult.model_validate(result)
    assert result["status"] == "ok" and result["error"] is None
    # the roundtrip score is close to the unquantised one
    assert abs(result["val_bpb"] - result["val_bpb_prequant"]) < 0.02
    run_dir = Path(result["hyperparameters"]["run_dir"])
    source = TRAINER.read_bytes()
    assert result["bytes_code"] == len(source)
    assert result["bytes_model"] == (run_dir / "final_model.int8.ptz").stat().st_size
    assert result["bytes_total"] == result["bytes_code"] + result["bytes_model"]
    assert result["over_cap"] is False
    import hashlib

    assert result["script_sha256"] == hashlib.sha256(source).hexdigest()
    assert (run_dir / "train.log").read_text().startswith(source.decode())
    assert result["steps"] == 4 and result["train_tokens"] == 4 * 256 and result["world_size"] == 1
    metrics = baseline[1]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert set(metrics[0]) == {"step", "train_loss", "lr_scale", "elapsed_s", "tokens_per_s"}


def test_holdout_is_disjoint_and_scored(tg, tiny_data, tmp_path):
    result = run_in_process(tg, tiny_data, tmp_path / "ho", VAL_HOLDOUT_TOKENS=1024)
    assert math.isfinite(result["holdout_bpb"]) and result["holdout_bpb"] != result["val_bpb"]
    val = torch.from_numpy(tiny_data.val_tokens)
    scored, holdout = tg.split_validation(val, 0, 1024)
    assert scored.numel() + holdout.numel() == val.numel() and torch.equal(holdout, val[-1024:])
    capped, holdout = tg.split_validation(val, 1000, 1024)
    assert torch.equal(capped, val[:1000]) and torch.equal(holdout, val[-1024:])
    assert result["val_tokens"] == ((1024 - 1) // 32) * 32


def test_over_cap_is_reported(tg, tiny_data, tmp_path):
    result = run_in_process(tg, tiny_data, tmp_path / "cap", ARTIFACT_CAP_BYTES=1000, ITERATIONS=1)
    assert result["status"] == "ok" and result["over_cap"] is True


def test_wallclock_cap_stops_training(tg, tiny_data, tmp_path):
    result = run_in_process(tg, tiny_data, tmp_path / "wall", ITERATIONS=100000, MAX_WALLCLOCK_SECONDS=0.5)
    assert result["status"] == "ok" and 1 <= result["steps"] < 100000 and result["train_time_s"] < 5


def test_a_loop_back_out_of_the_parallel_region_runs(tg, tiny_data, tmp_path):
    # Layers 1-2 are parallel (two lanes); the loop over 0..1 sends layer 1's lane pair back into layer 0,
    # a single-stream block, which merges the lanes as the final output does (a TypeError before).
    env = dict(NUM_LAYERS=3, NUM_LOOPS=2, LOOP_START=0, LOOP_END=1, PARALLEL_START=1, LOOP_FROM_FRAC=0.0)
    enc, dec = tg.layer_schedule(tg.Hyperparameters(tiny_data.env(**env)), looping=True)
    assert enc + dec == [0, 1, 0, 1, 0, 1, 2]
    result = run_in_process(tg, tiny_data, tmp_path / "run", **env)
    assert result["status"] == "ok", result["error"]
    assert all(math.isfinite(m["train_loss"]) for m in read_metrics(tmp_path / "run"))
    assert math.isfinite(result["val_bpb"])


def test_warmdown_modes(tg, tiny_data):
    slow = tg.Hyperparameters(tiny_data.env(ITERATIONS=20000, WARMDOWN_ITERS=1200, MAX_WALLCLOCK_SECONDS=600))
    # 1 s per step: the challenge rule's warmdown estimate (1200 s) exceeds the 600 s budget from step one
    assert tg.lr_scale(slow, 10, 10_000.0) < 1.0
    fixed = tg.Hyperparameters(
        tiny_data.env(
            ITERATIONS=20000, MAX_WALLCLOCK_SECONDS=600, WARMDOWN_MODE="time_fraction", WARMDOWN_FRAC=0.2
        )
    )
    assert tg.lr_scale(fixed, 10, 10_000.0) == 1.0
    assert tg.lr_scale(fixed, 500, 540_000.0) == pytest.approx(0.5)
    assert tg.lr_scale(fixed, 600, 600_000.0) == 0.0
    fast = tg.Hyperparameters(tiny_data.env(ITERATIONS=20000, WARMDOWN_ITERS=1200, MAX_WALLCLOCK_SECONDS=600))
    assert tg.lr_scale(fast, 1000, 43.5 * 1000) == 1.0  # 8xH100 pace: full LR until the last ~52 s


def trainer_subprocess(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full.update(env)
    return subprocess.run(
        [sys.executable, str(TRAINER)], env=full, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_exploding_loss_ends_the_run_as_diverged_with_exit_code_0(tiny_data, tmp_path):
    env = tiny_data.env(
        RUN_DIR=str(tmp_path / "div"),
        ITERATIONS=8,
        TIED_EMBED_LR=1e3,
        MATRIX_LR=30,
        SCALAR_LR=1e3,
        DIVERGE_GRACE_STEPS=0,
    )  # no grace for early spikes in an 8-step run
    proc = trainer_subprocess(env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "div" / "results.json").read_text())
    assert result["status"] == "diverged" and "train_loss" in result["error"]
    assert result["steps"] < 8 and result["val_bpb"] is None
    RunResult.model_validate(result)


def test_an_exception_is_an_error_result_with_exit_code_1(tiny_data, tmp_path):
    env = tiny_data.env(RUN_DIR=str(tmp_path / "err"), NUM_HEADS=3)  # 32 does not divide by 3
    proc = trainer_subprocess(env, tmp_path)
    assert proc.returncode == 1
    result = json.loads((tmp_path / "err" / "results.json").read_text())
    assert result["status"] == "error" and result["error"].startswith("ValueError: MODEL_DIM must divide")
    RunResult.model_validate(result)


def test_adam_matches_torch_adam_and_restores_state(tg):
    torch.manual_seed(0)
    mine_p = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    ref_p = [t.detach().clone().requires_grad_() for t in mine_p]
    mine = tg.Adam([{"params": mine_p, "lr": 0.01}], betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.Adam(ref_p, lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    saved = None
    for step in range(6):
        grads = [torch.randn_like(t) for t in mine_p]
        for a, b, g in zip(mine_p, ref_p, grads, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
        if step == 2:
            saved, weights = mine.state_dict(), [p.detach().clone() for p in mine_p]
    assert all(torch.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(mine_p, ref_p, strict=True))
    mine.load_state_dict(saved)
    assert mine.param_groups[0]["step"] == 3
    assert torch.equal(mine.state[mine_p[0]]["exp_avg"], saved["state"][0]["exp_avg"])
    assert not torch.equal(weights[0], mine_p[0])  # weights are the model's business, not the optimiser's
