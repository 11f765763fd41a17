"""Parameter Golf trainer: the challenge's baseline GPT, one file from a 2-core CPU to 8xH100.
Run: `python trainer/train_gpt.py` (one device) or `torchrun --nproc_per_node=8 trainer/train_gpt.py`.
Every knob is an environment variable read in `Hyperparameters`; every technique is off by default, so
with no variables set this trains the challenge baseline (val_bpb 1.2244 on 8xH100 in 600 s).
Writes RUN_DIR/train.log (starting with this source), RUN_DIR/metrics.jsonl and RUN_DIR/results.json.
Standalone on purpose: it is copied to pods and mutated by the agent, so it imports nothing of the project."""

from __future__ import annotations

import copy
import glob
import hashlib
import io
import json
import lzma
import math
import os
import random
import subprocess
import sys
import time
import traceback
import uuid
import zlib
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

try:  # Triton is optional: CPU hosts without it run the plain torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the host
    triton = None
    tl = None

# ---------------------------------------- HYPERPARAMETERS ---------------------------------------------------
class Hyperparameters:
    """All knobs, from the environment (or a mapping, for tests). Names and defaults follow the challenge."""
    def __init__(self, env: dict[str, str] | None = None):
        e = os.environ if env is None else env
        def get(name, default, cast=str):
            v = e.get(name)
            return default if v is None or v == "" else cast(v)
        # data and bookkeeping
        self.data_path = get("DATA_PATH", "data/datasets/fineweb10B_sp1024")
        self.train_files = os.path.join(self.data_path, "fineweb_train_*.bin")
        self.val_files = os.path.join(self.data_path, "fineweb_val_[0-9]*.bin")  # not the byte sidecars
        self.tokenizer_path = get("TOKENIZER_PATH", "data/tokenizers/fineweb_1024_bpe.model")
        self.caseops = bool(get("CASEOPS", 0, int))  # case-transformed tokenizer data, scored by byte sidecar
        self.run_id = get("RUN_ID", str(uuid.uuid4()))
        self.run_dir = get("RUN_DIR", os.path.join("runs", self.run_id))
        self.seed = get("SEED", 1337, int)
        # where and how to compute
        self.device = get("DEVICE", "auto")  # auto | cpu | cuda
        on_cuda = self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())
        self.dtype = get("DTYPE", "bf16" if on_cuda else "fp32")  # fp32 | bf16 (autocast)
        self.compile = bool(get("COMPILE", 1 if on_cuda else 0, int))  # torch.compile the model
        self.fused_kernels = bool(get("FUSED_KERNELS", 1, int))  # Triton softcap-CE on CUDA; 0 = plain torch
        self.grad_accum_steps = get("GRAD_ACCUM_STEPS", 0, int)  # 0 = 8 // world_size
        # evaluation
        self.val_batch_size = get("VAL_BATCH_SIZE", 524_288, int)
        self.val_loss_every = get("VAL_LOSS_EVERY", 1000, int)  # 0 = only at the end
        self.train_log_every = get("TRAIN_LOG_EVERY", 200, int)
        self.val_max_tokens = get("VAL_MAX_TOKENS", 0, int)  # 0 = whole val split (cap for CPU tiers)
        self.val_holdout_tokens = get("VAL_HOLDOUT_TOKENS", 0, int)  # 2nd held-out slice, from the END of val
        self.eval_stride = get("EVAL_STRIDE", 0, int)  # sliding-window eval stride; 0 = non-overlapping
        # schedule
        self.iterations = get("ITERATIONS", 20000, int)
        self.warmdown_iters = get("WARMDOWN_ITERS", 1200, int)
        self.warmdown_mode = get("WARMDOWN_MODE", "iters")  # iters (challenge) | time_fraction (slow-hw fix)
        self.warmdown_frac = get("WARMDOWN_FRAC", 0.2, float)  # time_fraction: share of the run in warmdown
        self.warmup_steps = get("WARMUP_STEPS", 20, int)  # compile-priming steps, then state is reset
        self.train_batch_tokens = get("TRAIN_BATCH_TOKENS", 524_288, int)
        self.train_seq_len = get("TRAIN_SEQ_LEN", 1024, int)
        self.max_wallclock_seconds = get("MAX_WALLCLOCK_SECONDS", 600.0, float)  # 0 = no cap
        self.diverge_loss = get("DIVERGE_LOSS", 0.0, float)  # 0 = ln(vocab) + 3
        self.diverge_grace_steps = get("DIVERGE_GRACE_STEPS", 20, int)  # finite spikes allowed this early
        # model shape
        self.vocab_size = get("VOCAB_SIZE", 1024, int)
        self.num_layers = get("NUM_LAYERS", 9, int)
        self.num_kv_heads = get("NUM_KV_HEADS", 4, int)
        self.model_dim = get("MODEL_DIM", 512, int)
        self.num_heads = get("NUM_HEADS", 8, int)
        self.mlp_mult = get("MLP_MULT", 2, float)  # MLP width = MLP_MULT * MODEL_DIM
        self.tie_embeddings = bool(get("TIE_EMBEDDINGS", 1, int))
        self.rope_base = get("ROPE_BASE", 10000.0, float)
        self.logit_softcap = get("LOGIT_SOFTCAP", 30.0, float)
        self.qk_gain_init = get("QK_GAIN_INIT", 1.5, float)
        self.tied_embed_init_std = get("TIED_EMBED_INIT_STD", 0.005, float)
        # optimiser
        self.embed_lr = get("EMBED_LR", 0.6, float)
        self.head_lr = get("HEAD_LR", 0.008, float)
        self.tied_embed_lr = get("TIED_EMBED_LR", 0.05, float)
        self.matrix_lr = get("MATRIX_LR", 0.04, float)
        self.scalar_lr = get("SCALAR_LR", 0.04, float)
        self.muon_momentum = get("MUON_MOMENTUM", 0.95, float)
        self.muon_backend_steps = get("MUON_BACKEND_STEPS", 5, int)
        self.muon_momentum_warmup_start = get("MUON_MOMENTUM_WARMUP_START", 0.85, float)
        self.muon_momentum_warmup_steps = get("MUON_MOMENTUM_WARMUP_STEPS", 500, int)
        self.beta1 = get("BETA1", 0.9, float)
        self.beta2 = get("BETA2", 0.95, float)
        self.adam_eps = get("ADAM_EPS", 1e-8, float)
        self.grad_clip_norm = get("GRAD_CLIP_NORM", 0.0, float)
        # techniques, each off by default
        self.value_residual = bool(get("VALUE_RESIDUAL", 0, int))  # layer-0 values mixed into later layers
        self.gated_attention = bool(get("GATED_ATTENTION", 0, int))  # per-head sigmoid gate on attn output
        self.rope_dims = get("ROPE_DIMS", 0, int)  # rotary dims per head (partial RoPE); 0 = all
        self.ln_scale = bool(get("LN_SCALE", 0, int))  # scale block norm outputs by 1/sqrt(layer+1)
        self.ema_decay = get("EMA_DECAY", 0.0, float)  # EMA of weights for eval/export; 0 = off
        self.bigram_hash_buckets = get("BIGRAM_HASH_BUCKETS", 0, int)  # hashed (prev,cur) embedding; 0 = off
        self.bigram_dim = get("BIGRAM_DIM", 128, int)  # width of the BigramHash table before projection
        self.smear_gate = bool(get("SMEAR_GATE", 0, int))  # blend with previous position, masked at BOS
        self.qat_bits = get("QAT_BITS", 0, int)  # straight-through fake quant of block matrices; 0 = off
        self.xsa_last_n = get("XSA_LAST_N", 0, int)  # exclusive self-attention on the last N layers
        self.mlp_act_slope = get("MLP_ACT_SLOPE", 0.0, float)  # LeakyReLU slope before squaring; 0 = relu^2
        self.ttt_enable = bool(get("TTT_ENABLE", 0, int))  # legal score-first test-time training at eval
        self.ttt_chunk_tokens = get("TTT_CHUNK_TOKENS", 32768, int)  # tokens scored before each TTT update
        self.ttt_lr = get("TTT_LR", 0.002, float)  # SGD (momentum 0.9) learning rate for TTT
        self.ttt_epochs = get("TTT_EPOCHS", 3, int)  # passes over each already-scored chunk
        self.ttt_lr_schedule = get("TTT_LR_SCHEDULE", "cosine")  # cosine (records) | constant, across chunks
        self.ttt_mode = get("TTT_MODE", "sgd")  # sgd: chunked full-weight SGD | lora: per-document LoRA
        # lora mode only (defaults: PR #1855's values): per-document adapters, phased global SGD
        self.ttt_lora_rank = get("TTT_LORA_RANK", 80, int)  # rank of the per-document adapters
        self.ttt_lora_lr = get("TTT_LORA_LR", 2e-4, float)  # Adam (beta1 0, beta2 0.99) on the adapters
        self.ttt_lora_wd = get("TTT_LORA_WD", 0.5, float)  # decoupled weight decay on the adapters
        self.ttt_lora_chunk = get("TTT_LORA_CHUNK", 48, int)  # tokens scored before each adapter step
        self.ttt_lora_batch = get("TTT_LORA_BATCH", 64, int)  # documents adapted side by side
        self.ttt_phase_docs = get("TTT_PHASE_DOCS", 2500, int)  # first N docs also train the base; 0 = off
        self.ttt_phases = get("TTT_PHASES", 3, int)  # ... in this many global SGD phases
        self.ttt_phase_lr = get("TTT_PHASE_LR", 0.001, float)  # SGD (momentum 0.9) LR of those phases
        self.ttt_phase_epochs = get("TTT_PHASE_EPOCHS", 1, int)  # passes over each scored phase
        # optimiser and schedule techniques (off by default)
        self.muon_wd = get("MUON_WD", 0.0, float)  # decoupled weight decay on Muon matrices
        self.embed_wd = get("EMBED_WD", 0.0, float)  # decoupled weight decay on the embedding(s)
        self.adam_wd = get("ADAM_WD", 0.0, float)  # decoupled weight decay on vectors and scalars
        self.muon_row_norm = bool(get("MUON_ROW_NORM", 0, int))  # MuonEq-R: rows to unit norm before NS
        self.muon_ns = get("MUON_NS", "quintic")  # quintic (baseline) | polar (Polar Express per-step)
        self.muon_bf16_reduce = bool(get("MUON_BF16_REDUCE", 0, int))  # updates travel in bf16 (baseline)
        self.compile_ns = bool(get("COMPILE_NS", int(self.compile), int))  # torch.compile Newton-Schulz
        self.min_lr = get("MIN_LR", 0.0, float)  # LR floor as a fraction of the base LR
        # architecture techniques (off by default)
        self.num_loops = get("NUM_LOOPS", 0, int)  # depth recurrence: extra passes over LOOP_START..END
        self.loop_start = get("LOOP_START", 3, int)  # first looped layer
        self.loop_end = get("LOOP_END", 5, int)  # last looped layer (inclusive)
        self.loop_from_frac = get("LOOP_FROM_FRAC", 0.35, float)  # loop only after this share of training
        self.parallel_start = get("PARALLEL_START", 0, int)  # two-lane parallel residuals from layer N; 0=off
        self.skip_gates = bool(get("SKIP_GATES", 0, int))  # learned sigmoid gates on the U-Net skips
        self.gate_window = get("GATE_WINDOW", 12, int)  # input dims that drive the narrow gates
        self.sparse_attn_gate = bool(get("SPARSE_ATTN_GATE", 0, int))  # sigmoid(s*W x[:window]) per head
        self.sparse_attn_gate_scale = get("SPARSE_ATTN_GATE_SCALE", 0.5, float)  # PR #1855's value
        self.attn_out_gate = bool(get("ATTN_OUT_GATE", 0, int))  # 2*sigmoid(W x[:window]) per head
        self.smear_input_gate = bool(get("SMEAR_INPUT_GATE", 0, int))  # input-dependent SmearGate, BOS-masked
        self.doc_mask = bool(get("DOC_MASK", 0, int))  # no attention across BOS (document) boundaries
        # export
        self.compressor = get("COMPRESSOR", "zlib")  # zlib (level 9) | zstd (level 22) | lzma
        self.int8_scale_floor = get("INT8_SCALE_FLOOR", 1.0 / 127.0, float)  # int8 scale clamp (baseline)
        self.matrix_bits = get("MATRIX_BITS", 0, int)  # block matrices at export; 0 = QAT_BITS or 8
        self.embed_bits = get("EMBED_BITS", 8, int)  # the token embedding at export (7 = int7)
        self.clip_sigmas = get("CLIP_SIGMAS", 0.0, float)  # std-based clip k*std per row; 0 = off
        self.mlp_clip_sigmas = get("MLP_CLIP_SIGMAS", 0.0, float)  # MLP matrices; 0 = CLIP_SIGMAS
        self.embed_clip_sigmas = get("EMBED_CLIP_SIGMAS", 0.0, float)  # embedding; 0 = CLIP_SIGMAS
        self.gptq = bool(get("GPTQ", 0, int))  # Hessian-aware rounding, calibrated on TRAINING tokens
        self.gptq_calib_batches = get("GPTQ_CALIB_BATCHES", 16, int)  # train batches for the Hessians
        self.gptq_reserve_seconds = get("GPTQ_RESERVE_SECONDS", 5.0, float)  # training time kept for it
        self.lqer_rank = get("LQER_RANK", 0, int)  # low-rank correction of the quantisation error; 0=off
        self.lqer_top_k = get("LQER_TOP_K", 3, int)  # ... on the K matrices with the largest error
        self.lqer_bits = get("LQER_BITS", 4, int)  # bits of the correction factors
        self.int8_keep_float_max_numel = get("INT8_KEEP_FLOAT_MAX_NUMEL", 65_536, int)  # smaller: kept float
        self.artifact_cap_bytes = get("ARTIFACT_CAP_BYTES", 16_000_000, int)

    @property
    def train_seconds(self) -> float:
        """The training wallclock cap (0 = none) less GPTQ's reserve: its calibration reads training data."""
        if self.max_wallclock_seconds <= 0:
            return 0.0
        return max(self.max_wallclock_seconds - (self.gptq_reserve_seconds if self.gptq else 0.0), 1e-3)

    def as_dict(self) -> dict:
        return dict(vars(self))

# ---------------------------------------- DATA --------------------------------------------------------------
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_INTS = 20240520, 1, 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4

def load_data_shard(file: str | Path) -> torch.Tensor:
    """One shard as uint16 token ids; a corrupt file fails with its name and what is wrong."""
    file, size = str(file), os.path.getsize(file)
    if size < SHARD_HEADER_BYTES:
        raise ValueError(f"{file}: truncated header: {size} bytes, a shard header is {SHARD_HEADER_BYTES}")
    header = np.fromfile(file, dtype="<i4", count=SHARD_HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ValueError(f"{file}: bad magic {int(header[0])}, expected {SHARD_MAGIC}")
    if int(header[1]) != SHARD_VERSION:
        raise ValueError(f"{file}: bad version {int(header[1])}, expected {SHARD_VERSION}")
    num_tokens = int(header[2])
    expected = SHARD_HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size != expected:
        raise ValueError(f"{file}: size mismatch: {size} bytes on disk, header says {num_tokens} tokens "
                         f"({expected} bytes)")
    tokens = np.fromfile(file, dtype="<u2", count=num_tokens, offset=SHARD_HEADER_BYTES)
    return torch.from_numpy(tokens.astype(np.int32))

def shard_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no shards match {pattern}")
    return files

class TokenStream:
    """Reads shards in order and wraps around; no shuffling, exactly like the challenge."""
    def __init__(self, pattern: str):
        self.files, self.file_idx, self.pos = shard_files(pattern), 0, 0
        self.tokens = load_data_shard(self.files[0])

    def take(self, n: int) -> torch.Tensor:
        chunks, remaining = [], n
        while remaining > 0:
            avail = self.tokens.numel() - self.pos
            if avail <= 0:  # next shard, wrapping around
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = load_data_shard(self.files[self.file_idx]), 0
                continue
            k = min(remaining, avail)
            chunks.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            remaining -= k
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

class DistributedTokenLoader:
    """One contiguous span per rank per call: one device with accumulation reproduces the multi-GPU batch."""
    def __init__(self, pattern: str, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device, self.stream = rank, world_size, device, TokenStream(pattern)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        local_tokens = (global_tokens // (self.world_size * grad_accum_steps) // seq_len) * seq_len
        if local_tokens <= 0:
            raise ValueError(f"TRAIN_BATCH_TOKENS={global_tokens} is too small for TRAIN_SEQ_LEN={seq_len} "
                             f"x world {self.world_size} x accumulation {grad_accum_steps}")
        span = local_tokens + 1
        local = self.stream.take(span * self.world_size)[self.rank * span:(self.rank + 1) * span].long()
        x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

def load_validation_tokens(pattern: str) -> torch.Tensor:
    return torch.cat([load_data_shard(f) for f in shard_files(pattern)]).to(torch.int64)

def split_validation(tokens: torch.Tensor, max_tokens: int, holdout_tokens: int):
    """(scored val tokens, holdout tokens): the holdout is cut from the END, so the two never overlap."""
    n = tokens.numel()
    if holdout_tokens >= n:
        raise ValueError(f"VAL_HOLDOUT_TOKENS={holdout_tokens} leaves nothing of the {n} validation tokens "
                         "to score")
    holdout = tokens[n - holdout_tokens:] if holdout_tokens > 0 else None
    val = tokens[:n - holdout_tokens] if holdout_tokens > 0 else tokens
    return (val[:max_tokens] if max_tokens > 0 else val), holdout

# === PROTECTED: METRIC BEGIN ===
def is_caseops(sp) -> bool:
    """Its pieces spell case-transformed text (markers TITLE ALLCAPS CAPNEXT ESC, lower case; trainer/caseops.py):
    only a byte sidecar counts its bytes."""
    return any(sp.piece_to_id(m) != sp.unk_id() for m in "\ue001\ue002\ue003\ue004")


def load_byte_sidecar(val_files: str, sp) -> torch.Tensor | None:
    """Original UTF-8 bytes per validation position from the fineweb_val_bytes_*.bin beside each val shard
    (shard format, one uint16 per token; trainer/caseops.py), or None when there are none. A CaseOps
    tokenizer without a complete sidecar that matches its shards is an error: never the piece-length LUT."""
    out = []
    for f in sorted(glob.glob(val_files)):
        side = os.path.join(os.path.dirname(f), "fineweb_val_bytes_" + os.path.basename(f)[len("fineweb_val_"):])
        if not os.path.isfile(side):
            if is_caseops(sp) or out:
                raise ValueError(f"{side}: byte sidecar missing; a CaseOps tokenizer is scored on original bytes")
            return None
        tokens = np.fromfile(f, dtype="<u2", offset=1024)
        head, counts = np.fromfile(side, dtype="<i4", count=256), np.fromfile(side, dtype="<u2", offset=1024)
        if head.size < 256 or int(head[0]) != 20240520 or not int(head[2]) == counts.size == tokens.size:
            raise ValueError(f"{side}: not a byte sidecar of the {tokens.size} tokens of {f}")
        if counts[tokens == sp.bos_id()].any():
            raise ValueError(f"{side}: nonzero bytes at a BOS of {f}: the sidecar does not match its shard")
        out.append(counts.astype(np.int64))
    return torch.from_numpy(np.concatenate(out)) if out else None


def build_sentencepiece_luts(sp, vocab_size: int, device: torch.device):
    """Per-token byte accounting from the SentencePiece model, as the challenge defines it."""
    sp_vocab = int(sp.vocab_size())
    table = max(sp_vocab, vocab_size)
    base_bytes = np.zeros(table, dtype=np.int64)
    has_leading_space = np.zeros(table, dtype=np.bool_)
    is_boundary = np.ones(table, dtype=np.bool_)  # control/unknown/unused (and ids past the vocab): 0 bytes
    for i in range(sp_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1  # a byte-fallback piece <0xAB> stands for exactly one byte
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return (torch.tensor(base_bytes, device=device), torch.tensor(has_leading_space, device=device),
            torch.tensor(is_boundary, device=device))


def count_target_bytes(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts, target_pos=None) -> torch.Tensor:
    """bytes(t) = base_bytes[t] + (has_leading_space[t] and not is_boundary[prev]), elementwise, int64; with a
    byte sidecar (luts = (bytes per position of the scored tokens,)) its entries at the targets' positions."""
    if len(luts) == 1:
        return luts[0][target_pos.cpu()].to(target_ids.device)
    base_bytes, has_leading_space, is_boundary = luts
    return base_bytes[target_ids] + (has_leading_space[target_ids] & ~is_boundary[prev_ids]).to(torch.int64)


def bits_per_byte(loss_sum_nats: float, token_count: int, byte_count: int) -> float:
    """(mean nats / ln 2) * (tokens / bytes), from float64 sums."""
    return (loss_sum_nats / token_count) / math.log(2.0) * (token_count / byte_count)
# === PROTECTED: METRIC END ===

# ---------------------------------------- MODEL -------------------------------------------------------------
# Small per-channel tensors: Adam instead of Muon, kept in float at export.
CONTROL_TENSOR_NAME_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "vr_lambda",
                                "attn_gate", "smear", "bigram.scale", "skip_gates", "lane_")

def fake_quantize_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-row fake quantisation with a straight-through gradient (QAT)."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / qmax
    q = torch.clamp(torch.round(w.detach() / scale), -qmax, qmax) * scale
    return w + (q - w).detach()

def accumulate_hessian(h: torch.Tensor, x: torch.Tensor):
    """h += X^T X in float32 (outside autocast, which would round the products to bf16)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.detach().flatten(0, -2).float()
        h += xf.T @ xf

class CastedLinear(nn.Linear):
    """fp32 master weight in the activation dtype; optional QAT, LoRA delta (TTT) and Hessian (GPTQ)."""
    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.qat_bits, self.lora, self.hessian = 0, None, None
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.qat_bits and self.training:
            w = fake_quantize_rows(w, self.qat_bits)
        if self.hessian is not None:
            accumulate_hessian(self.hessian, x)
        return lora_add(F.linear(x, w.to(x.dtype)), x, self.lora)

def lora_add(y: torch.Tensor, x: torch.Tensor, lora) -> torch.Tensor:
    """y + the per-sequence LoRA delta x A^T B^T, with A: (B, r, in), B: (B, out, r)."""
    if lora is None:
        return y
    a, b = lora
    return y + (x @ a.transpose(1, 2).to(x.dtype)) @ b.transpose(1, 2).to(x.dtype)

def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))

class Rotary(nn.Module):
    def __init__(self, dim: int, base: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)),
                             persistent=False)
        self._cache = (0, None, None, None)

    def forward(self, seq_len: int, device, dtype):
        n, dev, cos, sin = self._cache
        if n != seq_len or dev != device or cos is None:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
            self._cache = (seq_len, device, cos, sin)
        return cos.to(dtype), sin.to(dtype)

def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int) -> torch.Tensor:
    """Rotate the first rope_dims of each head (all if rope_dims == head dim); the rest are position-free."""
    if rope_dims < x.size(-1):
        xr, xp = x[..., :rope_dims], x[..., rope_dims:]
        return torch.cat([apply_rotary(xr, cos, sin, rope_dims), xp], dim=-1)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)

class CausalSelfAttention(nn.Module):
    def __init__(self, args: Hyperparameters, layer_idx: int):
        super().__init__()
        dim, self.num_heads, self.num_kv_heads = args.model_dim, args.num_heads, args.num_kv_heads
        if dim % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("MODEL_DIM must divide by NUM_HEADS and NUM_HEADS by NUM_KV_HEADS")
        self.head_dim = dim // self.num_heads
        kv = self.num_kv_heads * self.head_dim
        self.c_q, self.c_k, self.c_v = CastedLinear(dim, dim), CastedLinear(dim, kv), CastedLinear(dim, kv)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.num_heads,), args.qk_gain_init))
        self.rope_dims = args.rope_dims if 0 < args.rope_dims < self.head_dim else self.head_dim
        if self.rope_dims % 2:
            raise ValueError("ROPE_DIMS must be even")
        self.rotary = Rotary(self.rope_dims, args.rope_base)
        use_vr = args.value_residual and layer_idx  # Value Residual: V_n = l1 * V_0 + l2 * V_n after layer 0
        self.vr_lambda = nn.Parameter(torch.tensor([0.5, 0.5])) if use_vr else None
        # one per-head output gate: dense (whole input, bias 4 so sigmoid ~0.98: near identity), sparse
        # (first GATE_WINDOW dims, sigmoid(0) = 0.5 at init) or out (2*sigmoid(0) = 1: transparent at init)
        kinds = [k for k, on in (("dense", args.gated_attention), ("sparse", args.sparse_attn_gate),
                                 ("out", args.attn_out_gate)) if on]
        if len(kinds) > 1:
            raise ValueError("GATED_ATTENTION, SPARSE_ATTN_GATE and ATTN_OUT_GATE are mutually exclusive")
        self.gate_kind = kinds[0] if kinds else None
        self.gate_in = dim if self.gate_kind == "dense" else min(args.gate_window, dim)
        self.gate_scale = args.sparse_attn_gate_scale if self.gate_kind == "sparse" else 1.0
        self.attn_gate_w = nn.Parameter(torch.zeros(self.num_heads, self.gate_in)) if kinds else None
        self.attn_gate_b = nn.Parameter(torch.full((self.num_heads,), 4.0)) if kinds == ["dense"] else None
        self.xsa = layer_idx >= args.num_layers - args.xsa_last_n if args.xsa_last_n > 0 else False

    def forward(self, x: torch.Tensor, v0: torch.Tensor | None, mask: torch.Tensor | None = None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v_raw = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.vr_lambda is not None and v0 is not None:
            lam = self.vr_lambda.to(v.dtype)
            v = lam[0] * v0 + lam[1] * v
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin, self.rope_dims), apply_rotary(k, cos, sin, self.rope_dims)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        g = self.num_heads // self.num_kv_heads
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=g != 1)
        else:  # document mask (causal, within one document): heads expanded so a masked kernel can run
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                               attn_mask=mask)
        if self.xsa:  # XSA: remove each output's component along the token's own value direction
            yg = y.view(B, self.num_kv_heads, g, T, self.head_dim)
            vn = F.normalize(v, dim=-1).unsqueeze(2)
            y = (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(B, self.num_heads, T, self.head_dim)
        if self.gate_kind is not None:
            w = self.attn_gate_w.to(x.dtype)
            if self.gate_kind == "dense":
                gate = torch.sigmoid(F.linear(x, w, self.attn_gate_b.to(x.dtype)))
            else:
                z = F.linear(x[..., :self.gate_in], w)
                gate = 2 * torch.sigmoid(z) if self.gate_kind == "out" else torch.sigmoid(self.gate_scale * z)
            y = y * gate.transpose(1, 2)[..., None]
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), v_raw

def mlp_activation(x: torch.Tensor, slope: float) -> torch.Tensor:
    return (F.leaky_relu(x, slope) if slope else F.relu(x)).square()

class MLP(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        hidden, self.slope = int(args.mlp_mult * args.model_dim), args.mlp_act_slope
        self.fc, self.proj = CastedLinear(args.model_dim, hidden), CastedLinear(hidden, args.model_dim, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(mlp_activation(self.fc(x), self.slope))

class Block(nn.Module):
    def __init__(self, args: Hyperparameters, layer_idx: int):
        super().__init__()
        dim = args.model_dim
        self.attn, self.mlp = CausalSelfAttention(args, layer_idx), MLP(args)
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(dim), torch.zeros(dim)]))
        self.norm_scale = 1.0 / math.sqrt(layer_idx + 1) if args.ln_scale else 1.0
        # two-lane parallel residual: attention reads lane 0, the MLP reads lane 1, both write both lanes
        self.parallel = 0 < args.parallel_start <= layer_idx
        if self.parallel:
            self.lane_resid = nn.Parameter(torch.ones(2))
            self.lane_post = nn.Parameter(torch.ones(2, 2))  # [lane, (attn, mlp)]

    def forward(self, x, x0, v0, mask=None):
        """x is (B, T, C), or a (lane0, lane1) pair for a parallel block."""
        mix = self.resid_mix.to(x0.dtype)
        if self.parallel:
            lane0, lane1 = x if isinstance(x, tuple) else (x, x)
            a, v = self.attn(rms_norm(mix[0] * lane0 + mix[1] * x0) * self.norm_scale, v0, mask)
            a = self.attn_scale.to(a.dtype) * a
            m = self.mlp_scale.to(a.dtype) * self.mlp(rms_norm(lane1) * self.norm_scale)
            r, p = self.lane_resid.to(a.dtype), self.lane_post.to(a.dtype)
            return (r[0] * lane0 + p[0, 0] * a + p[0, 1] * m, r[1] * lane1 + p[1, 0] * a + p[1, 1] * m), v
        if isinstance(x, tuple):  # a loop back out of the parallel region: merge lanes as the output does
            x = 0.5 * (x[0] + x[1])
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        a, v = self.attn(rms_norm(x) * self.norm_scale, v0, mask)
        x = x + self.attn_scale.to(x.dtype)[None, None, :] * a
        x = x + self.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(rms_norm(x) * self.norm_scale)
        return x, v

class BigramHash(nn.Module):
    """Hashed (previous, current) token embedding; starts and BOS use a reserved bucket (documents apart)."""
    def __init__(self, buckets: int, bigram_dim: int, model_dim: int, bos_id: int):
        super().__init__()
        if buckets < 2:
            raise ValueError("BIGRAM_HASH_BUCKETS must be 0 or >= 2")
        self.buckets, self.bos_id, self.embed = buckets, bos_id, nn.Embedding(buckets, bigram_dim)
        nn.init.zeros_(self.embed.weight)  # starts as a no-op; the projection is not zero so both learn
        self.proj = CastedLinear(bigram_dim, model_dim)
        self.scale = nn.Parameter(torch.tensor(0.05))

    def bucket_ids(self, ids: torch.Tensor) -> torch.Tensor:
        prev = F.pad(ids[:, :-1], (1, 0))
        h = torch.bitwise_xor(36313 * ids, 27191 * prev) % (self.buckets - 1)
        h[:, 0] = self.buckets - 1
        return torch.where(ids == self.bos_id, self.buckets - 1, h)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(self.bucket_ids(ids))) * self.scale

class SmearGate(nn.Module):
    """x_t <- (1-g) x_t + g x_{t-1}; no blending at BOS (PR #1851 fix). Static: g = sigmoid(per-channel
    parameter). Input-dependent (PR #1667 form): x_t <- x_t + lam * sigmoid(W x_t[:window]) * x_{t-1}, with
    W and lam zero-initialised so it starts transparent."""
    def __init__(self, dim: int, bos_id: int, window: int = 0):
        super().__init__()
        self.bos_id, self.window = bos_id, min(window, dim)
        if window:
            self.smear_w = nn.Parameter(torch.zeros(1, self.window))
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        else:
            self.smear_gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        at_bos = (ids == self.bos_id)[..., None]
        if self.window:  # nothing to smear from at BOS or at the first position
            g = self.smear_lambda.to(x.dtype) * torch.sigmoid(F.linear(x[..., :self.window],
                                                                       self.smear_w.to(x.dtype)))
            return x + g.masked_fill(at_bos, 0.0) * F.pad(x[:, :-1], (0, 0, 1, 0))
        g = torch.sigmoid(self.smear_gate).to(x.dtype)[None, None, :]
        prev = torch.where(at_bos, x, torch.cat([x[:, :1], x[:, :-1]], dim=1))
        return (1 - g) * x + g * prev

def layer_schedule(args: Hyperparameters, looping: bool) -> tuple[list[int], list[int]]:
    """(encoder, decoder) layers in execution order; loops repeat LOOP_START..LOOP_END, split in half."""
    order = list(range(args.num_layers))
    if looping and args.num_loops > 0:  # a range past the last layer is cut there (a preset on a small tier)
        end = min(args.loop_end, args.num_layers - 1)
        start = min(max(args.loop_start, 0), end)
        order = order[:start] + order[start:end + 1] * (args.num_loops + 1) + order[end + 1:]
    half = len(order) // 2 if looping and args.num_loops > 0 else args.num_layers // 2
    return order[:half], order[half:]

class GPT(nn.Module):
    def __init__(self, args: Hyperparameters, bos_id: int = 1):
        super().__init__()
        self.args, self.bos_id, self.logit_softcap = args, bos_id, args.logit_softcap
        self.fused_ce = False  # set by the trainer where a Triton kernel can run
        self.looping = args.num_loops > 0 and args.loop_from_frac <= 0  # the trainer switches it on later
        self.head_lora = None  # per-sequence LoRA on the output head (TTT)
        self.tok_emb = nn.Embedding(args.vocab_size, args.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=args.tied_embed_init_std)
        self.emb_hessian = None  # GPTQ calibration of the tied embedding as the output head
        self.bigram = (BigramHash(args.bigram_hash_buckets, args.bigram_dim, args.model_dim, bos_id)
                       if args.bigram_hash_buckets else None)
        self.smear_in = SmearGate(args.model_dim, bos_id, args.gate_window) if args.smear_input_gate else None
        self.smear = SmearGate(args.model_dim, bos_id) if args.smear_gate else None
        n_skips = min(len(part) for part in layer_schedule(args, looping=True))
        self.skip_weights = nn.Parameter(torch.ones(n_skips, args.model_dim))
        self.skip_gates = nn.Parameter(torch.zeros(n_skips, args.model_dim)) if args.skip_gates else None
        self.blocks = nn.ModuleList([Block(args, i) for i in range(args.num_layers)])
        self.lm_head = None if args.tie_embeddings else CastedLinear(args.model_dim, args.vocab_size, True)
        if args.qat_bits:
            for m in self.blocks.modules():
                if isinstance(m, CastedLinear) and m.weight.numel() > args.int8_keep_float_max_numel:
                    m.qat_bits = args.qat_bits

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The input stage x0: token (+ bigram) embedding, (+ input smear), RMSNorm, (+ static smear)."""
        x = self.tok_emb(ids)
        if self.bigram is not None:
            x = x + self.bigram(ids)
        if self.smear_in is not None:
            x = self.smear_in(x, ids)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x, ids)
        return x

    def doc_mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, T, T) boolean: causal and within one document (a BOS starts a new one)."""
        if not self.args.doc_mask:
            return None
        doc, T = torch.cumsum((ids == self.bos_id).to(torch.int32), dim=1), ids.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
        return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        x = x0 = self.embed(ids)
        mask, (enc, dec), v0, skips = self.doc_mask(ids), layer_schedule(self.args, self.looping), None, []
        for i in enc:  # U-Net: encoder blocks store skips (a parallel block's attention lane)...
            x, v = self.blocks[i](x, x0, v0, mask)
            v0 = v if v0 is None else v0
            skips.append(x[0] if isinstance(x, tuple) else x)
        for j, i in enumerate(dec):  # ...decoder blocks add them back, last in first out
            if skips:
                w, s = self.skip_weights[j].to(x0.dtype), skips.pop()
                lane = x[0] if isinstance(x, tuple) else x
                lane = (torch.lerp(w * s, lane, torch.sigmoid(self.skip_gates[j].to(x0.dtype)))
                        if self.skip_gates is not None else lane + w * s)
                x = (lane, x[1]) if isinstance(x, tuple) else lane
            x, v = self.blocks[i](x, x0, v0, mask)
            v0 = v if v0 is None else v0
        return rms_norm(0.5 * (x[0] + x[1]) if isinstance(x, tuple) else x)

    def project(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits before the softcap, (B, T, V)."""
        x = self.hidden(ids)
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        if self.emb_hessian is not None:  # the head's inputs (the head is not called as a module)
            accumulate_hessian(self.emb_hessian, x)
        return lora_add(F.linear(x, w.to(x.dtype)), x, self.head_lora)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        z = self.project(ids).float()
        return self.logit_softcap * torch.tanh(z / self.logit_softcap)

    def token_losses(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy in nats, float32, (B, T)."""
        losses = F.cross_entropy(self.logits(ids).flatten(0, 1), targets.flatten(), reduction="none")
        return losses.view_as(targets)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # fused_ce: trainer sets it
        return softcap_cross_entropy(self.project(ids).flatten(0, 1), targets.flatten(), self.logit_softcap,
                                     self.fused_ce)

def torch_softcap_cross_entropy(z: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    return F.cross_entropy(cap * torch.tanh(z.float() / cap), targets, reduction="mean")

def triton_usable(t: torch.Tensor) -> bool:
    """Kernels launch on CUDA, or on CPU tensors under TRITON_INTERPRET=1 (how the tests check them)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")

if triton is not None:
    @triton.jit
    def _softcap_ce_kernel(z_ptr, tgt_ptr, loss_ptr, grad_ptr, stride_row, n_cols, cap, inv_n,
                           BLOCK: tl.constexpr):
        # one row per program, one pass: the float32 softcapped logits are never written to memory
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < n_cols
        z = tl.load(z_ptr + row * stride_row + offs, mask=mask, other=0.0).to(tl.float32)
        u = z / cap
        e = tl.exp(-2.0 * tl.abs(u))
        th = (1.0 - e) / (1.0 + e)
        th = tl.where(u < 0, -th, th)
        s = tl.where(mask, cap * th, float("-inf"))
        m = tl.max(s, axis=0)
        p = tl.exp(s - m)
        denom = tl.sum(p, axis=0)
        tgt = tl.load(tgt_ptr + row).to(tl.int32)
        is_t = offs == tgt
        s_t = tl.sum(tl.where(is_t & mask, s, 0.0), axis=0)
        tl.store(loss_ptr + row, m + tl.log(denom) - s_t)
        dz = (p / denom - tl.where(is_t, 1.0, 0.0)) * (1.0 - th * th) * inv_n
        tl.store(grad_ptr + row * stride_row + offs, dz.to(grad_ptr.dtype.element_ty), mask=mask)

class _FusedSoftcapCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, cap):
        z = z.contiguous()
        (n, v), grad = z.shape, torch.empty_like(z)
        loss = torch.empty(n, device=z.device, dtype=torch.float32)
        _softcap_ce_kernel[(n,)](z, targets.contiguous(), loss, grad, z.stride(0), v, float(cap), 1.0 / n,
                                 BLOCK=triton.next_power_of_2(v), num_warps=4 if v <= 2048 else 8)
        ctx.save_for_backward(grad)
        return loss.mean()

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None

def _fused_softcap_ce(z, targets, cap):
    return _FusedSoftcapCE.apply(z, targets, cap)

def keep_kernel_out_of_compile():
    """A graph break around the Triton launch; only when compiling (importing torch._dynamo costs seconds)."""
    global _fused_softcap_ce
    _fused_softcap_ce = torch.compiler.disable(_fused_softcap_ce)

def softcap_cross_entropy(z: torch.Tensor, targets: torch.Tensor, cap: float, fused: bool) -> torch.Tensor:
    """Mean cross-entropy of cap*tanh(z/cap); the Triton kernel when asked for and able to launch."""
    if fused and triton_usable(z):
        return _fused_softcap_ce(z, targets, cap)
    return torch_softcap_cross_entropy(z, targets, cap)

def build_model(args: Hyperparameters, device: torch.device, bos_id: int = 1) -> GPT:
    return GPT(args, bos_id).to(device)

def flops_per_token(args: Hyperparameters, model: nn.Module) -> float:
    """6 x matmul params (tied head once, a looped block once per pass) + causal attention, per token."""
    passes = sum(layer_schedule(args, looping=True), [])
    per_block = [sum(p.numel() for p in b.parameters() if p.ndim == 2) for b in model.blocks]
    matmul = sum(p.numel() for n, p in model.named_parameters()
                 if p.ndim == 2 and "bigram.embed" not in n and not n.startswith("blocks."))
    matmul += sum(per_block[i] for i in passes)
    attn = 6 * len(passes) * args.train_seq_len * args.model_dim  # 12*L*T*d halved by causality
    return 6.0 * matmul + attn

# ---------------------------------------- OPTIMIZER ---------------------------------------------------------
# Polar Express (Amsel et al. 2025; PR #1344 on): minimax coefficients per step, then the last one repeats
POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))
QUINTIC = ((3.4445, -4.7750, 2.0315),)

def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int, eps: float = 1e-7, polar: bool = False):
    """Quintic Newton-Schulz orthogonalisation (Muon); Polar Express coefficients when asked."""
    coeffs = POLAR_EXPRESS if polar else QUINTIC
    X = G.to(torch.bfloat16 if G.is_cuda else G.dtype)
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X

_compiled_ns = None

def newton_schulz(G: torch.Tensor, steps: int, polar: bool, compiled: bool) -> torch.Tensor:
    global _compiled_ns
    if compiled and _compiled_ns is None:  # lazily: importing the compiler costs seconds at every CPU start
        _compiled_ns = torch.compile(zeropower_via_newtonschulz5, dynamic=False)
    return (_compiled_ns if compiled else zeropower_via_newtonschulz5)(G, steps, polar=polar)

class Optimizer:
    """What this script needs of torch.optim.Optimizer, whose import of torch._dynamo costs seconds on CPU."""
    def __init__(self, groups: list[dict], **defaults):
        self.param_groups = [dict(defaults, **g) for g in groups]
        self.state: dict = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True):
        for p in self._params():
            p.grad = None

    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return copy.deepcopy({"state": {index[id(p)]: s for p, s in self.state.items()}, "groups": groups})

    def load_state_dict(self, sd: dict):
        params = self._params()
        self.state = {params[i]: copy.deepcopy(s) for i, s in sd["state"].items()}
        for g, saved in zip(self.param_groups, sd["groups"], strict=True):
            g.update(copy.deepcopy(saved))

class Adam(Optimizer):
    """torch.optim.Adam's update (bias-corrected, eps outside the square root), with foreach kernels."""
    def __init__(self, groups: list[dict], betas: tuple[float, float], eps: float, wd: float = 0.0):
        super().__init__(groups, betas=betas, eps=eps, step=0, wd=wd)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            b1, b2 = g["betas"]
            g["step"] += 1
            for p in ps:
                if p not in self.state:
                    self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            grads = [p.grad for p in ps]
            ms, vs = [self.state[p]["exp_avg"] for p in ps], [self.state[p]["exp_avg_sq"] for p in ps]
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            if g["wd"]:  # decoupled (AdamW) weight decay
                torch._foreach_mul_(ps, 1.0 - g["lr"] * g["wd"])
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, math.sqrt(1 - b2 ** g["step"]))
            torch._foreach_add_(denom, g["eps"])
            torch._foreach_addcdiv_(ps, ms, denom, value=-g["lr"] / (1 - b1 ** g["step"]))

class Muon(Optimizer):
    """Momentum + Newton-Schulz for 2-D matrices. Each rank orthogonalises its share and one all-reduce
    assembles the updates (zeros elsewhere: the sum is exact); bf16 updates halve the traffic (baseline)."""
    def __init__(self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True,
                 wd: float = 0.0, row_norm: bool = False, polar: bool = False, compiled: bool = False,
                 bf16: bool = False):
        super().__init__([{"params": list(params)}], lr=lr, momentum=momentum, backend_steps=backend_steps,
                         nesterov=nesterov, wd=wd, row_norm=row_norm, polar=polar, compiled=compiled,
                         bf16=bf16)

    @torch.no_grad()
    def step(self):
        distributed = is_distributed()
        world_size, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                               dtype=torch.bfloat16 if group["bf16"] else torch.float32)
            curr = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    g = p.grad
                    if p not in self.state:
                        self.state[p] = {"momentum_buffer": torch.zeros_like(g)}
                    buf = self.state[p]["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=group["momentum"])
                    if group["row_norm"]:
                        g = g / g.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(g.dtype)
                    g = newton_schulz(g, group["backend_steps"], group["polar"], group["compiled"])
                    g = g * max(1, g.size(0) / g.size(1)) ** 0.5
                    flat[curr:curr + p.numel()] = g.reshape(-1).to(flat.dtype)
                curr += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            curr = 0
            for p in params:
                if group["wd"]:
                    p.mul_(1.0 - group["lr"] * group["wd"])
                p.add_(flat[curr:curr + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                curr += p.numel()

def build_optimizers(model: GPT, args: Hyperparameters, device: torch.device):
    """Muon for block matrices; Adam for the embedding(s), the untied head, vectors and control scalars."""
    matrix, scalar, embed = [], [], [model.tok_emb.weight]
    for name, p in model.named_parameters():
        if name == "tok_emb.weight" or (model.lm_head is not None and name == "lm_head.weight"):
            continue
        if name == "bigram.embed.weight":
            embed.append(p)
        elif p.ndim == 2 and not any(pat in name for pat in CONTROL_TENSOR_NAME_PATTERNS):
            matrix.append(p)
        else:
            scalar.append(p)
    adam = dict(betas=(args.beta1, args.beta2), eps=args.adam_eps)
    embed_lr = args.tied_embed_lr if args.tie_embeddings else args.embed_lr
    if args.muon_ns not in ("quintic", "polar"):
        raise ValueError(f"MUON_NS={args.muon_ns!r}: expected quintic or polar")
    opts = [Adam([{"params": embed, "lr": embed_lr, "base_lr": embed_lr}], wd=args.embed_wd, **adam),
            Muon(matrix, lr=args.matrix_lr, momentum=args.muon_momentum,
                 backend_steps=args.muon_backend_steps, wd=args.muon_wd, row_norm=args.muon_row_norm,
                 polar=args.muon_ns == "polar", compiled=args.compile_ns, bf16=args.muon_bf16_reduce),
            Adam([{"params": scalar, "lr": args.scalar_lr, "base_lr": args.scalar_lr}], wd=args.adam_wd,
                 **adam)]
    opts[1].param_groups[0]["base_lr"] = args.matrix_lr  # Muon's one group
    if model.lm_head is not None:
        opts.append(Adam([{"params": [model.lm_head.weight], "lr": args.head_lr, "base_lr": args.head_lr}],
                         wd=args.embed_wd, **adam))
    return opts

def training_progress(args: Hyperparameters, step: int, elapsed_ms: float) -> float:
    """Share of the run done, by the cap that binds first (iterations or wallclock)."""
    progress = step / max(args.iterations, 1)
    if args.train_seconds > 0:
        progress = max(progress, elapsed_ms / (1000.0 * args.train_seconds))
    return progress

def lr_scale(args: Hyperparameters, step: int, elapsed_ms: float) -> float:
    """Constant LR, then a linear warmdown to zero, or to the floor MIN_LR."""
    if args.warmdown_mode == "time_fraction":
        # the slow-hardware fix: the last WARMDOWN_FRAC of the run by the binding cap, whatever a step costs
        progress = training_progress(args, step, elapsed_ms)
        scale = float(min(1.0, max(0.0, (1.0 - progress) / max(args.warmdown_frac, 1e-9))))
    elif args.warmdown_mode != "iters":
        raise ValueError(f"WARMDOWN_MODE={args.warmdown_mode!r}: expected iters or time_fraction")
    elif args.warmdown_iters <= 0:
        scale = 1.0
    elif args.train_seconds <= 0:
        start = max(args.iterations - args.warmdown_iters, 0)
        scale = max((args.iterations - step) / max(args.warmdown_iters, 1), 0.0) if step >= start else 1.0
    else:  # the challenge's rule: on slow hardware it decays from the first step (a known bug)
        warmdown_ms = args.warmdown_iters * (elapsed_ms / max(step, 1))  # at the mean step time so far
        remaining_ms = max(1000.0 * args.train_seconds - elapsed_ms, 0.0)
        scale = remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
    return max(scale, args.min_lr)

class EMA:
    """Shadow fp32 weights, ema = d * ema + (1 - d) * w after each step; used for eval and export."""
    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.params = decay, list(model.parameters())
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self):
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module):
        for p, s in zip(model.parameters(), self.shadow, strict=True):
            p.copy_(s.to(p.dtype))

# ---------------------------------------- EVALUATION --------------------------------------------------------
def eval_windows(num_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored position) per window of seq_len inputs. Targets are the tokens after position 0,
    truncated to a multiple of seq_len as in the challenge; every target is scored exactly once. With a
    stride, each window after the first scores only its last `stride` targets (more context per token)."""
    n_targets = ((num_tokens - 1) // seq_len) * seq_len
    if n_targets <= 0:
        raise ValueError(f"{num_tokens} validation tokens cannot fill one sequence of {seq_len}")
    if stride <= 0 or stride >= seq_len:
        return [(s, 0) for s in range(0, n_targets, seq_len)]
    windows, end = [(0, 0)], seq_len
    while end < n_targets:
        new_end = min(end + stride, n_targets)
        windows.append((new_end - seq_len, seq_len - (new_end - end)))
        end = new_end
    return windows

def window_batch(tokens: torch.Tensor, batch: list[tuple[int, int]], seq_len: int, device: torch.device):
    idx = torch.tensor([s for s, _ in batch])[:, None] + torch.arange(seq_len)[None, :]
    return tokens[idx].to(device, non_blocking=True), tokens[idx + 1].to(device, non_blocking=True)

@torch.no_grad()
def score_windows(model: GPT, tokens: torch.Tensor, windows: list[tuple[int, int]], seq_len: int,
                  batch_seqs: int, luts, device: torch.device, autocast) -> tuple[float, int, int]:
    """(sum of nats, scored targets, their bytes) over the given windows, float64/int64 sums."""
    loss_sum, tok_count, byte_count = (torch.zeros((), device=device, dtype=dtype)
                                       for dtype in (torch.float64, torch.int64, torch.int64))
    pos = torch.arange(seq_len)
    for i in range(0, len(windows), batch_seqs):
        batch = windows[i:i + batch_seqs]
        x, y = window_batch(tokens, batch, seq_len, device)
        mask = (pos[None, :] >= torch.tensor([f for _, f in batch])[:, None]).to(device)
        with autocast:
            losses = model.token_losses(x, y)
        loss_sum += (losses.double() * mask).sum()
        tok_count += mask.sum()
        y_pos = torch.tensor([s + 1 for s, _ in batch])[:, None] + pos[None, :]  # targets' stream positions
        byte_count += (count_target_bytes(x, y, luts, y_pos) * mask).sum()
    return float(loss_sum.item()), int(tok_count.item()), int(byte_count.item())

def all_reduce_sums(values: tuple[float, int, int], device: torch.device) -> tuple[float, int, int]:
    if not is_distributed():
        return values
    t = torch.tensor([float(values[0])], device=device, dtype=torch.float64)
    c = torch.tensor([int(values[1]), int(values[2])], device=device, dtype=torch.int64)
    dist.all_reduce(t)
    dist.all_reduce(c)
    return float(t.item()), int(c[0].item()), int(c[1].item())

def score_shard(model, tokens, windows, args, luts, device, autocast, rank, world_size, batch_seqs):
    """Scores this rank's contiguous share of the windows; the sums of all ranks."""
    per = math.ceil(len(windows) / world_size)
    mine = windows[rank * per:(rank + 1) * per]
    return all_reduce_sums(score_windows(model, tokens, mine, args.train_seq_len, batch_seqs, luts, device,
                                         autocast), device)

def evaluate(model: GPT, tokens: torch.Tensor, args: Hyperparameters, luts, device, autocast,
             rank: int = 0, world_size: int = 1, batch_seqs: int = 1) -> dict:
    """Plain (optionally sliding-window) evaluation; windows are split across ranks."""
    was_training = model.training
    model.eval()
    windows = eval_windows(tokens.numel(), args.train_seq_len, args.eval_stride)
    sums = score_shard(model, tokens, windows, args, luts, device, autocast, rank, world_size, batch_seqs)
    model.train(was_training)
    return summarize(sums)

def summarize(sums: tuple[float, int, int]) -> dict:
    loss_sum, toks, nbytes = sums
    return dict(val_loss=loss_sum / toks, val_bpb=bits_per_byte(loss_sum, toks, nbytes), tokens=toks,
                bytes=nbytes)

def sgd_on_scored(model: GPT, tokens: torch.Tensor, lo: int, hi: int, lr: float, epochs: int,
                  args: Hyperparameters, device, autocast, rank, world_size, batch_seqs, state: dict):
    """SGD (momentum 0.9, clip 1.0) on whole sequences whose targets lie in [lo, hi), i.e. already scored."""
    seq_len, step = args.train_seq_len, batch_seqs * world_size
    seqs = [(s, 0) for s in range(lo - 1, hi - seq_len, seq_len)]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for _ in range(epochs):
        for i in range(0, len(seqs), step):
            whole = seqs[i:i + step]
            group = whole[rank::world_size]
            for p in params:
                p.grad = None
            if group:
                with autocast:
                    loss = model(*window_batch(tokens, group, seq_len, device))
                (loss * len(group)).backward()
            for p in params:  # mean over the sequences of the whole group, across ranks
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if is_distributed():
                    dist.all_reduce(p.grad)
                p.grad.div_(len(whole))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            grads = [p.grad for p in params]
            with torch.no_grad():
                if "bufs" not in state:
                    state["bufs"] = [g.clone() for g in grads]
                else:
                    torch._foreach_mul_(state["bufs"], 0.9)
                    torch._foreach_add_(state["bufs"], grads)
                torch._foreach_add_(params, state["bufs"], alpha=-lr)
    for p in params:
        p.grad = None
    model.eval()

@contextmanager
def continuous_weights(model: nn.Module):
    """TTT updates and scores the continuous weights: QAT's fake quantisation is off inside this block."""
    mods = [(m, m.qat_bits) for m in model.modules() if isinstance(m, CastedLinear)]
    for m, _ in mods:
        m.qat_bits = 0
    yield
    for m, bits in mods:
        m.qat_bits = bits

def evaluate_ttt(model: GPT, tokens: torch.Tensor, args: Hyperparameters, luts, device, autocast,
                 rank: int = 0, world_size: int = 1, batch_seqs: int = 1, before_score=None) -> dict:
    """Legal score-first TTT as the records do it: windows grouped into chunks of ~TTT_CHUNK_TOKENS targets;
    each chunk is scored with the weights as they are, only then trained on (SGD, TTT_EPOCHS passes, LR cosine
    across chunks). `before_score(k, model)` runs right before chunk k is scored (tests check the weights)."""
    if args.ttt_mode == "lora":
        return evaluate_ttt_lora(model, tokens, args, luts, device, autocast, rank, world_size)
    if args.ttt_mode != "sgd" or args.ttt_lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"TTT_MODE={args.ttt_mode!r} / TTT_LR_SCHEDULE={args.ttt_lr_schedule!r}: expected "
                         "sgd or lora / cosine or constant")
    seq_len, chunks, cur_targets = args.train_seq_len, [[]], 0
    for w in eval_windows(tokens.numel(), seq_len, args.eval_stride):
        if cur_targets >= args.ttt_chunk_tokens and chunks[-1]:  # a chunk is full: start the next
            chunks.append([])
            cur_targets = 0
        chunks[-1].append(w)
        cur_targets += seq_len - w[1]
    # target token indices [lo, hi) each chunk scores; consecutive chunks tile the scored targets
    spans = [(c[0][0] + 1 + c[0][1], c[-1][0] + 1 + seq_len) for c in chunks]
    total, per_chunk, state = [0.0, 0, 0], [], {}
    with continuous_weights(model):
        for k, chunk in enumerate(chunks):
            if before_score is not None:
                before_score(k, model)
            model.eval()
            per_chunk.append(score_shard(model, tokens, chunk, args, luts, device, autocast, rank, world_size,
                                         batch_seqs))
            total = [t + s for t, s in zip(total, per_chunk[-1], strict=True)]
            if k == len(chunks) - 1:
                break  # nothing left to score: an update now would change no score
            cos = 0.5 * (1.0 + math.cos(math.pi * k / max(len(chunks) - 1, 1)))
            lr = args.ttt_lr * (cos if args.ttt_lr_schedule == "cosine" else 1.0)
            sgd_on_scored(model, tokens, *spans[k], lr, args.ttt_epochs, args, device, autocast, rank,
                          world_size, batch_seqs, state)
    model.eval()
    return dict(summarize(tuple(total)), chunks=per_chunk, spans=spans)

def document_starts(tokens: torch.Tensor, n_targets: int, bos_id: int) -> list[int]:
    """Input positions where a document starts (its BOS), plus 0, within the first n_targets inputs."""
    starts = (tokens[:n_targets] == bos_id).nonzero().flatten().tolist()
    return starts if starts and starts[0] == 0 else [0, *starts]

def make_lora(model: GPT, n: int, rank: int, device, seed: int) -> list[tuple]:
    """[(site, A (n, r, in), B (n, out, r))] on every block matrix and the head; B = 0: a no-op at first."""
    gen, sites = torch.Generator().manual_seed(seed), []
    for m in [*(m for m in model.blocks.modules() if isinstance(m, CastedLinear)), model]:
        fan_in, fan_out = (m.in_features, m.out_features) if m is not model else (model.args.model_dim,
                                                                                 model.args.vocab_size)
        a = ((torch.rand(n, rank, fan_in, generator=gen) * 2 - 1) / math.sqrt(fan_in)).to(device)
        b = torch.zeros(n, fan_out, rank, device=device, requires_grad=True)
        sites.append((m, a.requires_grad_(), b))
    return sites

def use_lora(sites: list[tuple], first: int | None):
    """Attach the adapters of sequences first.. (None: detach all)."""
    for m, a, b in sites:
        pair = None if first is None else (a[first:], b[first:])
        if isinstance(m, GPT):
            m.head_lora = pair
        else:
            m.lora = pair

def evaluate_ttt_lora(model: GPT, tokens: torch.Tensor, args: Hyperparameters, luts, device, autocast,
                      rank: int = 0, world_size: int = 1) -> dict:
    """Phased per-document LoRA TTT (PRs #1530, #1610, #1736) on the plain evaluation's targets cut at BOS:
    fresh adapters per document, read in TTT_LORA_CHUNK chunks (with up to TRAIN_SEQ_LEN of context), each
    scored, then one Adam step. The first TTT_PHASE_DOCS documents (TTT_PHASES groups) then train the base."""
    seq_len, C = args.train_seq_len, args.ttt_lora_chunk
    if not 0 < C <= seq_len:
        raise ValueError(f"TTT_LORA_CHUNK={C} must be in 1..TRAIN_SEQ_LEN={seq_len}")
    n_targets = ((tokens.numel() - 1) // seq_len) * seq_len
    starts = document_starts(tokens, n_targets, model.bos_id)
    docs = list(zip(starts, [*starts[1:], n_targets], strict=True))  # input span [s, e) -> targets [s+1, e+1)
    n_phased, phases = min(args.ttt_phase_docs, len(docs)), max(args.ttt_phases, 1)
    cuts = [round(n_phased * p / phases) for p in range(phases + 1)]
    groups = [docs[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a] + [docs[n_phased:]]
    base = [p for p in model.parameters() if p.requires_grad]
    total, per_chunk, spans, state = [0.0, 0, 0], [], [], {}
    with continuous_weights(model):
        for gi, group in enumerate(groups):
            mine = sorted(group[rank::world_size], key=lambda d: d[1] - d[0])  # similar lengths batch well
            for p in base:
                p.requires_grad_(False)
            for i in range(0, len(mine), args.ttt_lora_batch):
                batch = mine[i:i + args.ttt_lora_batch]
                n_chunks = max(math.ceil((e - s) / C) for s, e in batch)
                padded = torch.zeros(len(batch), n_chunks * C + 1, dtype=torch.int64)
                for b, (s, e) in enumerate(batch):
                    padded[b, :e - s + 1] = tokens[s:e + 1]
                lengths = torch.tensor([e - s for s, e in batch])[:, None]
                sites = make_lora(model, len(batch), args.ttt_lora_rank, device, args.seed + batch[0][0])
                opt = Adam([{"params": [t for _, a, b in sites for t in (a, b)], "lr": args.ttt_lora_lr}],
                           betas=(0.0, 0.99), eps=1e-8, wd=args.ttt_lora_wd)
                for c in range(n_chunks):
                    k0 = int((lengths[:, 0] <= c * C).sum())  # sorted by length: finished documents lead
                    use_lora(sites, k0)
                    w0, w1 = max(0, (c + 1) * C - seq_len), (c + 1) * C
                    x, y = padded[k0:, w0:w1].to(device), padded[k0:, w0 + 1:w1 + 1].to(device)
                    pos = torch.arange(w0, w1)[None, :]
                    mask = ((pos >= c * C) & (pos < lengths[k0:])).to(device)
                    with autocast:
                        losses = model.token_losses(x, y)
                    nats, ntok = (losses.detach().double() * mask).sum(1), mask.sum(1)  # before any update
                    first = torch.tensor([s for s, _ in batch[k0:]])[:, None]  # each document's start
                    y_pos = (first + pos + 1).clamp_max(tokens.numel() - 1)
                    nbytes = (count_target_bytes(x, y, luts, y_pos) * mask).sum(1)
                    for j, (s, _) in enumerate(batch[k0:]):
                        per_chunk.append((float(nats[j]), int(ntok[j]), int(nbytes[j])))
                        spans.append((s + 1 + c * C, s + 1 + c * C + int(ntok[j])))
                    sums = (float(nats.sum()), int(ntok.sum()), int(nbytes.sum()))
                    total = [t + s for t, s in zip(total, sums, strict=True)]
                    if c == n_chunks - 1:
                        break
                    # one Adam step per document on the mean loss of the chunk it just scored
                    (((losses * mask).sum(1) / ntok.clamp_min(1)).sum()).backward()
                    opt.step()
                    opt.zero_grad()
                use_lora(sites, None)
            for p in base:
                p.requires_grad_(True)
            if gi < len(groups) - 1 and group:  # phased: the base learns from this whole scored group
                sgd_on_scored(model, tokens, group[0][0] + 1, group[-1][1] + 1, args.ttt_phase_lr,
                              args.ttt_phase_epochs, args, device, autocast, rank, world_size,
                              max(1, args.ttt_lora_batch), state)
    model.eval()
    return dict(summarize(all_reduce_sums(tuple(total), device)), chunks=per_chunk, spans=spans)

# ---------------------------------------- QUANTIZATION ------------------------------------------------------
INT8_CLIP_Q = 99.99984 / 100.0

def gptq_columns(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, qmax: int, block: int = 128):
    """GPTQ: columns quantised by decreasing H diagonal, each rounding error pushed onto the columns not yet
    done via the Cholesky factor of H^-1: minimises the output error on calibration data, not weight error."""
    W, H, n = w.clone(), hessian.clone(), w.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += 0.01 * torch.diag(H).mean() * torch.eye(n, device=H.device)
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, E, Hb = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), Hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            q = torch.clamp(torch.round(W1[:, j] / scale), -qmax, qmax)
            Q[:, i1 + j] = q
            E[:, j] = (W1[:, j] - q * scale) / Hb[j, j]
            W1[:, j:] -= E[:, j:j + 1] * Hb[j:j + 1, j:]
        W[:, i2:] -= E @ Hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]

def quantize_rows(t: torch.Tensor, bits: int, sigmas: float = 0.0, floor: float = 1e-12,
                  hessian: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantisation, int8 storage. Clip: SIGMAS x row std, else the 99.99984th percentile
    for int8 (challenge) or the row max (what QAT trained against); scales floored at `floor`."""
    qmax = 2 ** (bits - 1) - 1
    t32 = t.float()
    if sigmas > 0:
        clip = sigmas * t32.std(dim=1)
    elif bits == 8:
        clip = torch.quantile(t32.abs(), INT8_CLIP_Q, dim=1)
    else:
        clip = t32.abs().amax(dim=1)
    scale = (clip / qmax).clamp_min(floor)
    if hessian is not None:  # round against the stored (fp16) scale
        scale = scale.to(torch.float16).float()
        q = gptq_columns(t32, hessian.to(t32.device).float(), scale, qmax)
    else:
        clipped = torch.clamp(t32, -clip[:, None], clip[:, None])
        q = torch.clamp(torch.round(clipped / scale[:, None]), -qmax, qmax)
    return q.to(torch.int8).contiguous(), scale.to(torch.float16).contiguous()

def export_bits(name: str, args: Hyperparameters) -> tuple[int, float]:
    """(bits, clip sigmas) for a large matrix at export."""
    if name.startswith("blocks."):
        mlp = ".mlp." in name and args.mlp_clip_sigmas > 0
        return args.matrix_bits or args.qat_bits or 8, args.mlp_clip_sigmas if mlp else args.clip_sigmas
    if name in ("tok_emb.weight", "lm_head.weight"):
        return args.embed_bits, args.embed_clip_sigmas or args.clip_sigmas
    return 8, 0.0

def quantize_state_dict(state_dict: dict, args: Hyperparameters, hessians: dict | None = None) -> dict:
    """Large 2-D float tensors -> per-row ints (GPTQ given a Hessian); the rest stay float (control fp32, else
    fp16). LQER: the LQER_TOP_K worst block matrices also store a rank-LQER_RANK A @ B (SVD, LQER_BITS)."""
    out = {"__quant_format__": "intN_per_row_v1", "quantized": {}, "scales": {}, "bits": {}, "dtypes": {},
           "passthrough": {}, "lqer": {}}
    errors = {}  # LQER candidates: the quantisation error of each block matrix
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        if not t.is_floating_point():
            out["passthrough"][name] = t
        elif t.ndim != 2 or t.numel() <= args.int8_keep_float_max_numel:
            keep_fp32 = any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS)
            out["passthrough"][name] = t.float() if keep_fp32 else t.to(torch.float16)
            out["dtypes"][name] = str(t.dtype).removeprefix("torch.")
        else:
            bits, sigmas = export_bits(name, args)
            floor = args.int8_scale_floor if bits == 8 else 1e-12
            q, s = quantize_rows(t, bits, sigmas, floor, (hessians or {}).get(name))
            out["quantized"][name], out["scales"][name], out["bits"][name] = q, s, bits
            out["dtypes"][name] = str(t.dtype).removeprefix("torch.")
            if args.lqer_rank > 0 and name.startswith("blocks."):
                errors[name] = t.float() - q.float() * s.float()[:, None]
    for name in sorted(errors, key=lambda n: -float(errors[n].norm()))[:args.lqer_top_k]:
        U, S, Vh = torch.linalg.svd(errors[name], full_matrices=False)
        r = min(args.lqer_rank, S.numel())
        out["lqer"][name] = (*quantize_rows(U[:, :r] * S[:r], args.lqer_bits),
                             *quantize_rows(Vh[:r].contiguous(), args.lqer_bits))
    return out

def dequantize_state_dict(obj: dict) -> dict:
    sd = {}
    for name, q in obj["quantized"].items():
        w = q.float() * obj["scales"][name].float()[:, None]
        if name in obj.get("lqer", {}):
            qa, sa, qb, sb = obj["lqer"][name]
            w = w + (qa.float() * sa.float()[:, None]) @ (qb.float() * sb.float()[:, None])
        sd[name] = w.to(getattr(torch, obj["dtypes"][name]))
    for name, t in obj["passthrough"].items():
        dtype = obj["dtypes"].get(name)
        sd[name] = t.to(getattr(torch, dtype)) if dtype else t
    return sd

@torch.no_grad()
def gptq_hessians(model: GPT, args: Hyperparameters, device, autocast, batches: int) -> dict:
    """X^T X of the inputs of every block matrix and of the head, over GPTQ_CALIB_BATCHES batches from the
    TRAINING shards: calibrating on validation data is forbidden by the challenge."""
    mods = {n + ".weight": m for n, m in model.named_modules() if isinstance(m, CastedLinear)}
    for m in mods.values():
        m.hessian = torch.zeros(m.in_features, m.in_features, device=device)
    model.emb_hessian = torch.zeros(args.model_dim, args.model_dim, device=device)
    loader, was_training = DistributedTokenLoader(args.train_files, 0, 1, device), model.training
    model.eval()
    for _ in range(batches):
        x, _ = loader.next_batch(args.train_batch_tokens, args.train_seq_len, args.grad_accum_steps or 8)
        with autocast:
            model.project(x)
    model.train(was_training)
    out = {name: m.hessian for name, m in mods.items()}
    out["tok_emb.weight" if model.lm_head is None else "lm_head.weight"] = model.emb_hessian
    out = {name: h for name, h in out.items() if float(torch.diag(h).sum()) > 0}  # modules never called
    for m in mods.values():
        m.hessian = None
    model.emb_hessian = None
    return out

def codec(compressor: str):
    """(compress, decompress) for COMPRESSOR: zlib level 9, zstd level 22 or lzma preset 9."""
    if compressor == "zstd":
        import zstandard
        return zstandard.ZstdCompressor(level=22).compress, zstandard.ZstdDecompressor().decompress
    codecs = {"zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
              "lzma": (lambda b: lzma.compress(b, preset=9), lzma.decompress)}
    if compressor not in codecs:
        raise ValueError(f"COMPRESSOR={compressor!r}: expected zlib, zstd or lzma")
    return codecs[compressor]

def export_model(model: nn.Module, args: Hyperparameters, path: Path, hessians: dict | None = None) -> int:
    """Quantise, serialise, compress, write; returns the model file's size in bytes."""
    buf = io.BytesIO()
    torch.save(quantize_state_dict(model.state_dict(), args, hessians), buf)
    return path.write_bytes(codec(args.compressor)[0](buf.getvalue()))

def load_exported(path: Path, args: Hyperparameters) -> dict:
    raw = codec(args.compressor)[1](path.read_bytes())
    return dequantize_state_dict(torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))

# ---------------------------------------- TRAINING ----------------------------------------------------------
class RunContext:
    """Process-level facts: device, ranks, logging. One per process."""
    def __init__(self, args: Hyperparameters, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.args, self.rank, self.world_size, self.local_rank = args, rank, world_size, local_rank
        want = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if want == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("DEVICE=cuda but no CUDA device is available")
        if want not in ("cpu", "cuda"):
            raise ValueError(f"DEVICE={args.device!r}: expected auto, cpu or cuda")
        self.device = torch.device("cuda", local_rank) if want == "cuda" else torch.device("cpu")
        if args.dtype not in ("fp32", "bf16"):
            raise ValueError(f"DTYPE={args.dtype!r}: expected fp32 or bf16")
        self.autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                         if args.dtype == "bf16" else nullcontext())
        self.master, self.run_dir = rank == 0, Path(args.run_dir)
        self.log_path, self.metrics_path = self.run_dir / "train.log", self.run_dir / "metrics.jsonl"
        if self.master:  # a fresh log and metrics file per run
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for p in (self.log_path, self.metrics_path):
                p.unlink(missing_ok=True)

    def append(self, path: Path, line: str):
        if self.master:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def log(self, msg: str, console: bool = True):
        if console and self.master:
            print(msg, flush=True)
        self.append(self.log_path, msg)

    def metric(self, row: dict):
        self.append(self.metrics_path, json.dumps(row))

    def evaluate(self, model: GPT, tokens: torch.Tensor, luts, ttt: bool = False) -> dict:
        fn = evaluate_ttt if ttt else evaluate
        return fn(model, tokens, self.args, luts, self.device, self.autocast, self.rank, self.world_size,
                  self.val_batch_seqs)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"{self.world_size}x {torch.cuda.get_device_name(self.device)}"
        return f"{self.world_size}x cpu ({os.cpu_count()} cores)"

def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()

def all_reduce_max(value: float, device: torch.device) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())

def write_results(ctx: RunContext, result: dict):
    if ctx.master:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(ctx.run_dir / "results.json")

def base_result(args: Hyperparameters, world_size: int, source: str) -> dict:
    """Every field of the RunResult record, filled in as the run goes."""
    return dict(status="error", error=None, val_bpb=None, val_bpb_prequant=None, val_loss=None,
                val_tokens=None, val_bytes=None, holdout_bpb=None, steps=None, train_tokens=None,
                train_time_s=None, eval_time_s=None, bytes_code=len(source.encode("utf-8")), bytes_model=None,
                bytes_total=None, over_cap=None, seed=args.seed, world_size=world_size, device=None,
                torch_version=torch.__version__, hyperparameters=args.as_dict(),
                script_sha256=hashlib.sha256(source.encode("utf-8")).hexdigest())

def train(ctx: RunContext, model: GPT, result: dict) -> EMA | None:
    """The training loop; fills steps/train_tokens/train_time_s (or status 'diverged'); returns the EMA."""
    args, device = ctx.args, ctx.device
    grad_accum = args.grad_accum_steps or 8 // ctx.world_size
    if not args.grad_accum_steps and 8 % ctx.world_size:
        raise ValueError(f"world size {ctx.world_size} does not divide 8; set GRAD_ACCUM_STEPS")
    fused = args.fused_kernels and triton is not None and device.type == "cuda"
    if fused:  # a kernel that cannot build on this stack must not cost the run: say so and use torch
        try:
            probe = torch.randn(4, args.vocab_size, device=device, requires_grad=True)
            _fused_softcap_ce(probe, torch.zeros(4, dtype=torch.long, device=device), 30.0).backward()
        except Exception as e:
            ctx.log(f"WARNING: fused softcap-CE kernel failed ({type(e).__name__}: {e}); "
                    "using the torch path")
            fused = False
    model.fused_ce = fused
    if args.compile and fused:
        keep_kernel_out_of_compile()
    compiled = torch.compile(model, dynamic=False, fullgraph=not fused) if args.compile else model
    ddp = DDP(compiled, device_ids=[ctx.local_rank] if device.type == "cuda" else None,
              broadcast_buffers=False) if ctx.world_size > 1 else compiled
    optimizers = build_optimizers(model, args, device)
    loader = DistributedTokenLoader(args.train_files, ctx.rank, ctx.world_size, device)
    diverge_at = args.diverge_loss or math.log(args.vocab_size) + 3.0
    def step_once(step: int, scale: float) -> torch.Tensor:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for micro in range(grad_accum):
            if ctx.world_size > 1:
                ddp.require_backward_grad_sync = micro == grad_accum - 1
            x, y = loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum)
            with ctx.autocast:
                loss = ddp(x, y)
            total += loss.detach().float()
            (loss / grad_accum).backward()
        warm = args.muon_momentum_warmup_steps
        frac = min(step / warm, 1.0) if warm > 0 else 1.0
        for g in optimizers[1].param_groups:
            g["momentum"] = (1 - frac) * args.muon_momentum_warmup_start + frac * args.muon_momentum
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
        if args.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        return total / grad_accum
    model.train()
    if args.warmup_steps > 0:  # prime compile/kernels, then restore the true initial state and data order
        init_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        init_opts = [copy.deepcopy(o.state_dict()) for o in optimizers]
        for ws in range(args.warmup_steps):
            step_once(ws, 1.0)
        model.load_state_dict(init_model)
        for o, s in zip(optimizers, init_opts, strict=True):
            o.load_state_dict(s)
        loader = DistributedTokenLoader(args.train_files, ctx.rank, ctx.world_size, device)
        ctx.log(f"warmup: {args.warmup_steps} priming steps done, state restored")
    ema = EMA(model, args.ema_decay) if args.ema_decay > 0 else None
    tokens_per_step = (args.train_batch_tokens // (ctx.world_size * grad_accum) // args.train_seq_len
                       * args.train_seq_len * ctx.world_size * grad_accum)
    max_ms = 1000.0 * args.train_seconds if args.train_seconds > 0 else None
    train_ms, step, stop_after = 0.0, 0, None
    ctx.sync()
    t0 = time.perf_counter()
    while True:
        last = step == args.iterations or (stop_after is not None and step >= stop_after)
        if args.val_loss_every > 0 and step > 0 and step % args.val_loss_every == 0 and not last:
            ctx.sync()
            train_ms += 1000.0 * (time.perf_counter() - t0)
            ev = ctx.evaluate(model, ctx.val_tokens, ctx.luts)
            ctx.log(f"step:{step}/{args.iterations} val_loss:{ev['val_loss']:.4f} val_bpb:{ev['val_bpb']:.4f}"
                    f" train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
            ctx.sync()
            t0 = time.perf_counter()
        if last:
            break
        now_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        scale = lr_scale(args, step, now_ms)
        if (args.num_loops > 0 and not model.looping
                and training_progress(args, step, now_ms) >= args.loop_from_frac):
            model.looping = True  # depth recurrence joins once LOOP_FROM_FRAC of the run is done
            ctx.log(f"step:{step} depth recurrence on: layers {args.loop_start}-{args.loop_end} "
                    f"x{args.num_loops + 1}")
        loss = step_once(step, scale)
        if ema is not None:
            ema.update()
        step += 1
        elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        if step <= 10 or step % max(args.train_log_every, 1) == 0 or step == args.iterations:
            if is_distributed():  # every rank must see the same loss, or they disagree about diverging
                dist.all_reduce(loss, op=dist.ReduceOp.AVG if device.type == "cuda" else dist.ReduceOp.SUM)
                loss = loss if device.type == "cuda" else loss / ctx.world_size
            lv = float(loss.item())
            ctx.metric(dict(step=step, train_loss=lv, lr_scale=scale, elapsed_s=elapsed_ms / 1000.0,
                            tokens_per_s=step * tokens_per_step / max(elapsed_ms / 1000.0, 1e-9)))
            ctx.log(f"step:{step}/{args.iterations} train_loss:{lv:.4f} lr_scale:{scale:.4f} "
                    f"train_time:{elapsed_ms:.0f}ms step_avg:{elapsed_ms / step:.2f}ms")
            # early finite spikes are normal at full scale (baseline: ~6.9 to ~16 at step 2, then recovers)
            if not math.isfinite(lv) or (lv > diverge_at and step > args.diverge_grace_steps):
                result["status"] = "diverged"
                result["error"] = f"train_loss {lv} at step {step} (limit {diverge_at:.2f})"
                break
        if stop_after is None and max_ms is not None and all_reduce_max(elapsed_ms, device) >= max_ms:
            stop_after = step
    ctx.sync()
    model.looping = args.num_loops > 0  # evaluation runs the full recurrent depth
    train_ms += 1000.0 * (time.perf_counter() - t0)
    result.update(steps=step, train_tokens=step * tokens_per_step, train_time_s=train_ms / 1000.0)
    peak = torch.cuda.max_memory_allocated(device) // 2**20 if device.type == "cuda" else 0
    ctx.log(f"training done: steps:{step} train_time:{train_ms:.0f}ms "
            f"step_avg:{train_ms / max(step, 1):.2f}ms peak_mem:{peak}MiB")
    return ema

def final_evaluation(ctx: RunContext, model: GPT, result: dict, source: str):
    """Pre-quant score, export, reload the artifact and score it (with TTT, and on the holdout if asked)."""
    args, t_eval = ctx.args, time.perf_counter()
    pre = ctx.evaluate(model, ctx.val_tokens, ctx.luts)
    result["val_bpb_prequant"] = pre["val_bpb"]
    ctx.log(f"prequant val_loss:{pre['val_loss']:.6f} val_bpb:{pre['val_bpb']:.6f}")
    model_path = ctx.run_dir / f"final_model.int{args.matrix_bits or args.qat_bits or 8}.ptz"
    if ctx.master:
        hessians = None
        if args.gptq:
            t_cal = time.perf_counter()
            hessians = gptq_hessians(model, args, ctx.device, ctx.autocast, args.gptq_calib_batches)
            spent = time.perf_counter() - t_cal
            over = " OVER THE RESERVE" if spent > args.gptq_reserve_seconds else ""
            ctx.log(f"gptq: {args.gptq_calib_batches} training batches calibrated in {spent:.1f}s (reserved "
                    f"{args.gptq_reserve_seconds:.1f}s of training){over}")
        result["bytes_model"] = export_model(model, args, model_path, hessians)
    if is_distributed():
        dist.barrier()
    model.load_state_dict(load_exported(model_path, args), strict=True)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if args.ttt_enable else None
    def score(tokens, luts):
        if args.ttt_enable:
            model.load_state_dict(initial, strict=True)  # every slice adapts from the artifact's weights
        return ctx.evaluate(model, tokens, luts, ttt=args.ttt_enable)
    rt = score(ctx.val_tokens, ctx.luts)
    result.update(val_bpb=rt["val_bpb"], val_loss=rt["val_loss"], val_tokens=rt["tokens"],
                  val_bytes=rt["bytes"])
    ctx.log(f"final_roundtrip val_loss:{rt['val_loss']:.8f} val_bpb:{rt['val_bpb']:.8f} "
            f"tokens:{rt['tokens']} bytes:{rt['bytes']}")
    if ctx.holdout_tokens is not None:
        ho = score(ctx.holdout_tokens, ctx.holdout_luts)
        result["holdout_bpb"] = ho["val_bpb"]
        ctx.log(f"holdout val_bpb:{ho['val_bpb']:.8f} tokens:{ho['tokens']}")
    ctx.sync()
    result["eval_time_s"] = time.perf_counter() - t_eval
    if ctx.master:
        result["bytes_total"] = result["bytes_code"] + result["bytes_model"]
        result["over_cap"] = result["bytes_total"] > args.artifact_cap_bytes
        ctx.log(f"artifact: code {result['bytes_code']} + model {result['bytes_model']} = "
                f"{result['bytes_total']} bytes{' OVER THE CAP' if result['over_cap'] else ''}")

def load_validation(ctx: RunContext, sp):
    """The validation tokens, the holdout slice and their byte accounting (a byte sidecar when present)."""
    args = ctx.args
    if int(sp.vocab_size()) != args.vocab_size:
        raise ValueError(f"tokenizer {args.tokenizer_path} has {sp.vocab_size()} pieces, VOCAB_SIZE is "
                         f"{args.vocab_size}")
    if args.caseops != is_caseops(sp):  # the data must be the variant the knob asked for
        raise ValueError(f"CASEOPS={int(args.caseops)} but {args.tokenizer_path} is "
                         f"{'not ' * args.caseops}a CaseOps (case-marker) tokenizer")
    ctx.luts = ctx.holdout_luts = build_sentencepiece_luts(sp, args.vocab_size, ctx.device)
    val_all, side = load_validation_tokens(args.val_files), load_byte_sidecar(args.val_files, sp)
    cut = (args.val_max_tokens, args.val_holdout_tokens)
    ctx.val_tokens, ctx.holdout_tokens = split_validation(val_all, *cut)
    if side is not None:  # bytes are the original text's, position by position (CaseOps)
        ctx.luts, ctx.holdout_luts = ((v,) for v in split_validation(side, *cut))

def run(args: Hyperparameters, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> dict:
    """One whole run (the caller set up torch.distributed); always writes results.json, then re-raises."""
    source = Path(__file__).read_text(encoding="utf-8")
    result = base_result(args, world_size, source)
    try:
        ctx = RunContext(args, rank, world_size, local_rank)
    except BaseException as e:  # bad DEVICE/DTYPE: still leave a result behind
        if rank == 0:
            Path(args.run_dir).mkdir(parents=True, exist_ok=True)
            result["error"] = traceback.format_exception_only(type(e), e)[-1].strip()
            (Path(args.run_dir) / "results.json").write_text(json.dumps(result, indent=2))
        raise
    result["device"] = ctx.device_name()
    ctx.log(source, console=False)
    ctx.log("=" * 100, console=False)
    ctx.log(f"python {sys.version.split()[0]} torch {torch.__version__} device {ctx.device_name()}")
    ctx.log("hyperparameters: " + json.dumps(args.as_dict(), sort_keys=True))
    try:
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            with suppress(OSError, subprocess.SubprocessError):
                ctx.log(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout,
                        console=False)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)  # seeds every CUDA device too
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
        load_validation(ctx, sp)
        grad_accum = args.grad_accum_steps or max(8 // world_size, 1)
        ctx.val_batch_seqs = max(1, args.val_batch_size // (world_size * grad_accum) // args.train_seq_len)
        model = build_model(args, ctx.device, bos_id=sp.bos_id())
        n_params, holdout = sum(p.numel() for p in model.parameters()), ctx.holdout_tokens
        ctx.log(f"model_params:{n_params} flops_per_token:{flops_per_token(args, model):.4e} "
                f"world_size:{world_size} grad_accum_steps:{grad_accum} val_tokens:{ctx.val_tokens.numel()} "
                f"holdout_tokens:{0 if holdout is None else holdout.numel()}")
        ema = train(ctx, model, result)
        if result["status"] == "diverged":
            ctx.log(f"diverged: {result['error']}")
        else:
            if ema is not None:
                ema.copy_to(model)
            final_evaluation(ctx, model, result, source)
            result["status"] = "ok"
    except BaseException as e:
        result.update(status="error", error=(traceback.format_exception_only(type(e), e)[-1].strip())[:2000])
        ctx.log(traceback.format_exc())
        write_results(ctx, result)
        raise
    write_results(ctx, result)
    return result

def main() -> int:
    args = Hyperparameters()
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if distributed and world_size > 1:
        use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        run(args, rank, world_size if distributed else 1, local_rank)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        if is_distributed():
            dist.destroy_process_group()

if __name__ == "__main__":
    sys.exit(main())
