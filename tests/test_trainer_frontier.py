"""The frontier techniques (issue 12): each flag runs, changes what it claims to change, survives the export
roundtrip and composes with the others (the `frontier` preset end to end at a tiny shape); TTT stays
score-first in both modes; GPTQ calibrates on training tokens only; larger vocabularies work end to end."""

from __future__ import annotations

import copy
import math
import shutil
import tomllib

import pytest
import torch

from testing.trainer_fixtures import BOS, ROOT, build_tiny_dataset, read_metrics, run_in_process

CPU = torch.device("cpu")
NO_AUTOCAST = torch.autocast("cpu", enabled=False)
LORA = dict(
    TTT_ENABLE=1,
    TTT_MODE="lora",
    TTT_LORA_RANK=4,
    TTT_LORA_LR=0.01,
    TTT_LORA_CHUNK=16,
    TTT_LORA_BATCH=8,
    TTT_PHASE_DOCS=0,
)

# flag -> (env overrides, where the change must show: train losses or the roundtrip score)
FLAGS = {
    "MUON_WD": ({"MUON_WD": 0.5}, "train"),
    "EMBED_WD": ({"EMBED_WD": 0.5}, "train"),
    "ADAM_WD": ({"ADAM_WD": 0.5}, "train"),
    "MUON_ROW_NORM": ({"MUON_ROW_NORM": 1}, "train"),
    "MUON_NS=polar": ({"MUON_NS": "polar"}, "train"),
    "MUON_BF16_REDUCE": ({"MUON_BF16_REDUCE": 1}, "train"),
    "NUM_LOOPS": ({"NUM_LOOPS": 1, "LOOP_START": 0, "LOOP_END": 0, "LOOP_FROM_FRAC": 0}, "train"),
    "PARALLEL_START": ({"PARALLEL_START": 1}, "train"),
    "PARALLEL_START+encoder": ({"PARALLEL_START": 1, "NUM_LAYERS": 4, "SKIP_GATES": 1}, "train"),
    "SKIP_GATES": ({"SKIP_GATES": 1}, "train"),
    "SPARSE_ATTN_GATE": ({"SPARSE_ATTN_GATE": 1}, "train"),
    "ATTN_OUT_GATE": ({"ATTN_OUT_GATE": 1}, "train"),
    "SMEAR_INPUT_GATE": ({"SMEAR_INPUT_GATE": 1}, "train"),
    "DOC_MASK": ({"DOC_MASK": 1}, "train"),
    "CLIP_SIGMAS": ({"CLIP_SIGMAS": 3}, "roundtrip"),
    "MLP_CLIP_SIGMAS": ({"MLP_CLIP_SIGMAS": 3, "MATRIX_BITS": 6}, "roundtrip"),
    "EMBED_CLIP_SIGMAS": ({"EMBED_CLIP_SIGMAS": 3}, "roundtrip"),
    "MATRIX_BITS": ({"MATRIX_BITS": 5}, "roundtrip"),
    "EMBED_BITS": ({"EMBED_BITS": 7}, "roundtrip"),
    "GPTQ": ({"GPTQ": 1, "MATRIX_BITS": 4, "GPTQ_CALIB_BATCHES": 2}, "roundtrip"),
    "LQER_RANK": ({"LQER_RANK": 2, "MATRIX_BITS": 4}, "roundtrip"),
    "INT8_SCALE_FLOOR": ({"INT8_SCALE_FLOOR": 1e-12}, "roundtrip"),
    "TTT_MODE=lora": (LORA, "roundtrip"),
}


@pytest.fixture(scope="module")
def baseline(tg, tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("baseline")
    return run_in_process(tg, tiny_data, run_dir), read_metrics(run_dir)


def losses(run_dir) -> list[float]:
    return [m["train_loss"] for m in read_metrics(run_dir)]


@pytest.mark.parametrize("flag", list(FLAGS))
def test_flag_runs_changes_the_computation_and_survives_the_roundtrip(
    tg, tiny_data, tmp_path, baseline, flag
):
    env, where = FLAGS[flag]
    base, base_metrics = baseline
    result = run_in_process(tg, tiny_data, tmp_path / "run", **env)  # the roundtrip reloads strictly
    assert result["status"] == "ok", result["error"]
    run_losses = losses(tmp_path / "run")
    assert all(math.isfinite(x) for x in run_losses) and math.isfinite(result["val_bpb"])
    if where == "train":
        assert run_losses != [m["train_loss"] for m in base_metrics]
    else:  # export/eval-only: training is bit-identical, the scored artifact is not
        assert run_losses == [m["train_loss"] for m in base_metrics]
        assert result["val_bpb"] != base["val_bpb"]
    assert abs(result["val_bpb"] - result["val_bpb_prequant"]) < 0.5


def test_lr_floor_holds_the_warmdown_at_min_lr(tg, tiny_data, tmp_path):
    env = dict(WARMDOWN_MODE="time_fraction", WARMDOWN_FRAC=1.0)
    run_in_process(tg, tiny_data, tmp_path / "a", **env)
    run_in_process(tg, tiny_data, tmp_path / "b", MIN_LR=0.9, **env)
    scales = [m["lr_scale"] for m in read_metrics(tmp_path / "b")]
    assert min(scales) == pytest.approx(0.9) and losses(tmp_path / "a") != losses(tmp_path / "b")
    args = tg.Hyperparameters(tiny_data.env(MIN_LR=0.1, ITERATIONS=100, WARMDOWN_MODE="time_fraction"))
    assert tg.lr_scale(args, 99, 0.0) == 0.1 and tg.lr_scale(args, 10, 0.0) == 1.0


# --- optimiser ---------------------------------------------------------------------------------------------


def test_newton_schulz_variants_orthogonalise_and_row_norm_equalises(tg):
    torch.manual_seed(0)
    G = torch.randn(24, 40) * torch.logspace(-2, 1, 40)  # badly conditioned, like a momentum buffer
    for polar in (False, True):
        s = torch.linalg.svdvals(tg.zeropower_via_newtonschulz5(G, 5, polar=polar))
        assert 0.3 < s.min() and s.max() < 1.3  # every direction pushed towards unit singular value
    # Polar Express gets closer to orthogonal than the fixed quintic in the same 5 steps
    err = [
        (torch.linalg.svdvals(tg.zeropower_via_newtonschulz5(G, 5, polar=p)) - 1).abs().max()
        for p in (False, True)
    ]
    assert err[1] < err[0]
    p = torch.nn.Parameter(torch.randn(6, 4))
    p.grad = torch.randn(6, 4) * torch.arange(1, 7)[:, None]
    opt = tg.Muon([p], lr=0.0, momentum=0.0, backend_steps=5, nesterov=False, wd=0.5, row_norm=True)
    before = p.detach().clone()
    opt.step()  # lr 0: neither the update nor the decay (lr * wd) may move the weights
    assert torch.equal(p.detach(), before)


@pytest.mark.slow
def test_compiled_newton_schulz_matches_eager(tg):
    G = torch.randn(32, 48)
    eager = tg.newton_schulz(G, 5, polar=True, compiled=False)
    assert torch.allclose(tg.newton_schulz(G, 5, polar=True, compiled=True), eager, atol=1e-4)


# --- architecture ------------------------------------------------------------------------------------------


def test_depth_recurrence_schedule_and_switch_on(tg, tiny_data, tmp_path):
    args = tg.Hyperparameters(tiny_data.env(NUM_LAYERS=11, NUM_LOOPS=2, LOOP_START=3, LOOP_END=5))
    enc, dec = tg.layer_schedule(args, looping=True)
    assert enc + dec == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10] and len(enc) == 8
    assert tg.layer_schedule(args, looping=False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    run_in_process(
        tg, tiny_data, tmp_path / "r", NUM_LAYERS=3, NUM_LOOPS=1, LOOP_START=1, LOOP_END=1, LOOP_FROM_FRAC=0.5
    )
    assert "step:2 depth recurrence on" in (tmp_path / "r" / "train.log").read_text()


def two_documents(doc_a: list[int]) -> torch.Tensor:
    return torch.tensor([[BOS, *doc_a, BOS, 500, 501, 502, 503]])


def randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("env", [dict(DOC_MASK=1), dict(DOC_MASK=1, SMEAR_INPUT_GATE=1, PARALLEL_START=1)])
def test_document_mask_keeps_documents_apart(tg, tiny_data, env):
    torch.manual_seed(0)
    model = randomised(tg.build_model(tg.Hyperparameters(tiny_data.env(**env)), CPU)).eval()
    a1, a2 = two_documents([10, 11, 12, 13]), two_documents([900, 901, 902, 903])
    with torch.no_grad():
        assert torch.allclose(model.logits(a1)[:, 5:], model.logits(a2)[:, 5:], atol=1e-5)
        assert not torch.allclose(model.logits(a1)[:, 1:5], model.logits(a2)[:, 1:5])
        model.args.doc_mask = False  # the same weights without the mask: document A reaches document B
        assert not torch.allclose(model.logits(a1)[:, 5:], model.logits(a2)[:, 5:], atol=1e-5)


def test_input_smear_gate_is_masked_at_bos(tg):
    torch.manual_seed(0)
    gate = tg.SmearGate(8, BOS, window=4)
    with torch.no_grad():
        gate.smear_lambda.fill_(1.0)
        gate.smear_w.normal_()
    x1, x2 = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    x2[:, 3:] = x1[:, 3:]
    ids = torch.tensor([[BOS, 7, 7, BOS, 8, 8]])
    assert torch.equal(gate(x1, ids)[:, 3:], gate(x2, ids)[:, 3:])
    assert not torch.equal(gate(x1, ids)[:, 1], x1[:, 1])  # it does smear inside a document
    gate.bos_id = -1
    assert not torch.equal(gate(x1, ids)[:, 3], gate(x2, ids)[:, 3])


# --- quantisation ------------------------------------------------------------------------------------------


def test_gptq_beats_rounding_on_the_calibration_inputs_and_lqer_reduces_the_error(tg, tiny_data):
    torch.manual_seed(0)
    X = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs, as activations are
    W = torch.randn(48, 64) * 0.05
    H = X.T @ X
    rtn_q, rtn_s = tg.quantize_rows(W, 4)
    gptq_q, gptq_s = tg.quantize_rows(W, 4, hessian=H)

    def out_err(q, s):
        return float(((W - q.float() * s.float()[:, None]) @ X.T).norm())

    assert out_err(gptq_q, gptq_s) < 0.8 * out_err(rtn_q, rtn_s)
    args = tg.Hyperparameters(tiny_data.env(MATRIX_BITS=4, LQER_RANK=4, LQER_TOP_K=1))
    sd = {"blocks.0.mlp.fc.weight": W, "blocks.0.attn.c_q.weight": W * 0.1}
    obj = tg.quantize_state_dict(sd, args)
    assert list(obj["lqer"]) == ["blocks.0.mlp.fc.weight"]  # the larger error gets the correction
    plain = tg.dequantize_state_dict(dict(obj, lqer={}))
    fixed = tg.dequantize_state_dict(obj)
    name = "blocks.0.mlp.fc.weight"
    assert (fixed[name] - W).norm() < 0.9 * (plain[name] - W).norm()


def test_export_bits_and_the_baseline_scale_floor(tg, tiny_data):
    torch.manual_seed(0)
    args = tg.Hyperparameters(tiny_data.env(EMBED_BITS=7, MATRIX_BITS=6))
    obj = tg.quantize_state_dict(randomised(tg.build_model(args, CPU)).state_dict(), args)
    assert obj["bits"]["tok_emb.weight"] == 7 and obj["quantized"]["tok_emb.weight"].abs().max() <= 63
    assert {b for n, b in obj["bits"].items() if n.startswith("blocks.")} == {6}
    small = torch.randn(4, 300) * 1e-3  # rows whose clip is far below 1: the baseline clamps the scale
    _, s = tg.quantize_rows(small, 8, floor=1 / 127)
    assert torch.all(s.float() >= (1 / 127) * 0.999)
    _, s = tg.quantize_rows(small, 8, floor=1e-12)
    assert torch.all(s.float() < 1e-4)
    assert tg.Hyperparameters({}).int8_scale_floor == 1 / 127


@pytest.mark.parametrize("tied", [1, 0])
def test_gptq_calibration_reads_only_training_shards(tg, tiny_data, monkeypatch, tied):
    read = []
    real = tg.load_data_shard
    monkeypatch.setattr(tg, "load_data_shard", lambda f: read.append(str(f)) or real(f))
    args = tg.Hyperparameters(tiny_data.env(GPTQ=1, GPTQ_CALIB_BATCHES=3, TIE_EMBEDDINGS=tied))
    hess = tg.gptq_hessians(tg.build_model(args, CPU), args, CPU, NO_AUTOCAST, 3)
    assert read and all("fineweb_train_" in f for f in read)
    assert ("tok_emb.weight" if tied else "lm_head.weight") in hess  # the head's inputs, however it is called
    assert "blocks.1.mlp.proj.weight" in hess
    assert all(torch.isfinite(h).all() and h.abs().sum() > 0 for h in hess.values())


def test_gptq_reserves_its_calibration_time_out_of_the_training_wallclock(tg, tiny_data):
    args = tg.Hyperparameters(tiny_data.env(MAX_WALLCLOCK_SECONDS=600, GPTQ=1, GPTQ_RESERVE_SECONDS=20))
    assert args.train_seconds == 580
    no_gptq = tg.Hyperparameters(tiny_data.env(MAX_WALLCLOCK_SECONDS=600, GPTQ_RESERVE_SECONDS=20))
    assert no_gptq.train_seconds == 600
    args = tg.Hyperparameters(
        tiny_data.env(
            MAX_WALLCLOCK_SECONDS=600,
            ITERATIONS=20000,
            GPTQ=1,
            GPTQ_RESERVE_SECONDS=20,
            WARMDOWN_MODE="time_fraction",
        )
    )
    assert tg.lr_scale(args, 10, 580_000.0) == 0.0  # the warmdown ends where training must stop


def test_gptq_artifact_does_not_depend_on_the_validation_split(tg, tiny_data, tmp_path):
    """Same training shards, different validation shard: the quantised artifact is byte-identical."""
    from testing.trainer_fixtures import write_shard

    other = tmp_path / "other_val"
    shutil.copytree(tiny_data.data_path, other)
    write_shard(other / "fineweb_val_000000.bin", tiny_data.val_tokens[::-1][:4000])
    env = dict(GPTQ=1, MATRIX_BITS=5, GPTQ_CALIB_BATCHES=2, LQER_RANK=2)
    a = run_in_process(tg, tiny_data, tmp_path / "a", **env)
    b = run_in_process(tg, tiny_data, tmp_path / "b", DATA_PATH=str(other), **env)
    assert a["val_bpb"] != b["val_bpb"]  # the runs did score different validation tokens
    assert (tmp_path / "a" / "final_model.int5.ptz").read_bytes() == (
        tmp_path / "b" / "final_model.int5.ptz"
    ).read_bytes()


# --- TTT stays score-first ---------------------------------------------------------------------------------


def luts_for(tg, args):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    return tg.build_sentencepiece_luts(sp, args.vocab_size, CPU)


def ttt_eval(tg, args, model, tokens):
    return tg.evaluate_ttt(
        copy.deepcopy(model), tokens, args, luts_for(tg, args), CPU, NO_AUTOCAST, batch_seqs=2
    )


@pytest.mark.parametrize(
    "env",
    [
        dict(TTT_ENABLE=1, TTT_CHUNK_TOKENS=64, TTT_LR=0.05, TTT_EPOCHS=2, QAT_BITS=6),
        dict(LORA, TTT_LORA_LR=0.05),
        dict(LORA, TTT_LORA_LR=0.05, TTT_PHASE_DOCS=6, TTT_PHASES=2, TTT_PHASE_LR=0.05),
    ],
    ids=["sgd-cosine-qat", "lora", "lora-phased"],
)
def test_ttt_score_of_a_target_never_depends_on_later_tokens(tg, tiny_data, env):
    """Changing token t can change no score of a chunk whose targets all come before t (score first), and
    does change later ones (the adaptation is real)."""
    args = tg.Hyperparameters(tiny_data.env(**env))
    torch.manual_seed(0)
    model = randomised(tg.build_model(args, CPU))
    tokens = torch.from_numpy(tiny_data.val_tokens[: 32 * 12 + 1].copy())
    out = ttt_eval(tg, args, model, tokens)
    plain = tg.evaluate(
        copy.deepcopy(model), tokens, args, luts_for(tg, args), CPU, NO_AUTOCAST, batch_seqs=2
    )
    assert (out["tokens"], out["bytes"]) == (plain["tokens"], plain["bytes"])  # the same targets, all once
    assert out["val_bpb"] != plain["val_bpb"]
    t = 200
    altered = tokens.clone()
    altered[t] = (altered[t] * 7 + 5) % 1000 + 4
    out2 = ttt_eval(tg, args, model, altered)
    assert len(out2["spans"]) == len(out["spans"])
    before = [k for k, (lo, hi) in enumerate(out["spans"]) if hi <= t]
    after = [k for k, (lo, hi) in enumerate(out["spans"]) if lo > t + 1]
    assert before and after
    assert all(out["chunks"][k] == out2["chunks"][k] for k in before)
    assert any(out["chunks"][k][0] != out2["chunks"][k][0] for k in after)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_sgd_ttt_trains_on_non_overlapping_scored_sequences_with_a_cosine_lr(
    tg, tiny_data, monkeypatch, schedule
):
    args = tg.Hyperparameters(
        tiny_data.env(
            TTT_ENABLE=1,
            TTT_CHUNK_TOKENS=64,
            TTT_LR=0.05,
            TTT_EPOCHS=1,
            EVAL_STRIDE=16,
            QAT_BITS=6,
            TTT_LR_SCHEDULE=schedule,
        )
    )
    torch.manual_seed(0)
    model = randomised(tg.build_model(args, CPU))
    calls, trained = [], []
    real_sgd, real_batch = tg.sgd_on_scored, tg.window_batch

    def spy_sgd(model, tokens, lo, hi, lr, *rest):
        calls.append((lo, hi, lr, [m.qat_bits for m in model.modules() if isinstance(m, tg.CastedLinear)]))
        return real_sgd(model, tokens, lo, hi, lr, *rest)

    def spy_batch(tokens, batch, seq_len, device):
        if torch.is_grad_enabled():
            trained.extend(s for s, _ in batch)
        return real_batch(tokens, batch, seq_len, device)

    monkeypatch.setattr(tg, "sgd_on_scored", spy_sgd)
    monkeypatch.setattr(tg, "window_batch", spy_batch)
    tokens = torch.from_numpy(tiny_data.val_tokens[: 32 * 10 + 1].copy())
    out = tg.evaluate_ttt(model, tokens, args, luts_for(tg, args), CPU, NO_AUTOCAST, batch_seqs=2)
    n = len(out["spans"])
    cosine = [0.05 * 0.5 * (1 + math.cos(math.pi * k / (n - 1))) for k in range(n - 1)]
    assert [c[2] for c in calls] == pytest.approx(cosine if schedule == "cosine" else [0.05] * (n - 1))
    assert all(set(bits) == {0} for *_, bits in calls)  # continuous weights while TTT trains (QAT on)
    assert {m.qat_bits for m in model.modules() if isinstance(m, tg.CastedLinear)} >= {6}  # restored
    for lo, hi, *_ in calls:  # each chunk's sequences: targets inside the scored span, no overlap
        starts = [s for s in trained if lo - 1 <= s and s + 32 + 1 <= hi]
        assert starts == list(range(lo - 1, hi - 32, 32))
    assert len(trained) == sum(len(range(lo - 1, hi - 32, 32)) for lo, hi, *_ in calls)


def test_lora_ttt_documents_are_independent_without_phases(tg, tiny_data):
    args = tg.Hyperparameters(tiny_data.env(**dict(LORA, TTT_LORA_LR=0.05)))
    torch.manual_seed(0)
    model = randomised(tg.build_model(args, CPU))
    tokens = torch.from_numpy(tiny_data.val_tokens[: 32 * 12 + 1].copy())
    starts = tg.document_starts(tokens, 32 * 12, BOS)
    assert len(starts) >= 3
    out = ttt_eval(tg, args, model, tokens)
    altered = tokens.clone()
    altered[starts[1] + 2] = 900  # inside the second document
    out2 = ttt_eval(tg, args, model, altered)
    doc_of = [max(i for i, s in enumerate(starts) if s < lo) for lo, _ in out["spans"]]
    changed = {doc_of[k] for k in range(len(doc_of)) if out["chunks"][k] != out2["chunks"][k]}
    assert changed == {1}


# --- composition and vocabularies -------------------------------------------------------------------------

TINY_SHAPE = (  # and the data: the tiny set is plain sp1024 (CaseOps runs in tests/test_caseops.py)
    "VOCAB_SIZE",
    "CASEOPS",
    "NUM_LAYERS",
    "MODEL_DIM",
    "NUM_HEADS",
    "NUM_KV_HEADS",
    "TRAIN_SEQ_LEN",
    "TRAIN_BATCH_TOKENS",
)


def frontier_env() -> dict:
    preset = tomllib.loads((ROOT / "presets.toml").read_text())["preset"]["frontier"]
    assert preset["record"] in (1855, "1855") and preset["published_bpb"] == pytest.approx(1.0611)
    return {k: str(v) for k, v in preset["env"].items()}


def test_frontier_preset_is_the_trainers_knobs_and_runs_end_to_end_at_a_tiny_shape(tg, tiny_data, tmp_path):
    from memory.knobs import check_env_allowed

    env = frontier_env()
    check_env_allowed(env, (ROOT / "trainer" / "train_gpt.py").read_text())
    assert env["VOCAB_SIZE"] == "8192" and env["NUM_LAYERS"] == "11" and env["MLP_MULT"] == "4"
    tiny = {k: v for k, v in env.items() if k not in TINY_SHAPE}
    tiny.update(
        NUM_LAYERS=4,
        LOOP_START=1,
        LOOP_END=2,
        PARALLEL_START=3,
        ITERATIONS=6,
        TTT_LORA_RANK=4,
        TTT_LORA_CHUNK=16,
        TTT_LORA_BATCH=8,
        TTT_PHASE_DOCS=4,
        GPTQ_CALIB_BATCHES=2,
    )
    result = run_in_process(tg, tiny_data, tmp_path / "frontier", **tiny)
    assert result["status"] == "ok", result["error"]
    assert math.isfinite(result["val_bpb"]) and result["bytes_model"] > 0
    assert "depth recurrence on" in (tmp_path / "frontier" / "train.log").read_text()


@pytest.mark.parametrize("vocab", [4096, 8192])
def test_larger_vocabularies_run_end_to_end(tg, tmp_path, vocab):
    data = build_tiny_dataset(vocab)
    assert int(data.val_tokens.max()) >= 1024
    result = run_in_process(
        tg, data, tmp_path / "v", VOCAB_SIZE=vocab, ITERATIONS=2, EMBED_BITS=7, **dict(LORA, TTT_PHASE_DOCS=2)
    )
    assert result["status"] == "ok", result["error"]
    assert math.isfinite(result["val_bpb"]) and result["hyperparameters"]["vocab_size"] == vocab
