"""The trainer's measuring stick: bits per byte and the shard format.

bpb is checked against an independent implementation: bytes come from decoding each document's tokens
back to text with SentencePiece and counting UTF-8 bytes, and losses from a float64 log-softmax."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from testing.trainer_fixtures import (
    BOS,
    MULTILINGUAL,
    run_in_process,
    write_shard,
)

CPU = torch.device("cpu")


def documents_of(stream: list[int]) -> list[list[int]]:
    docs, cur = [], None
    for t in stream:
        if t == BOS:
            if cur is not None:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    docs.append(cur)
    return docs


def decoded_bytes(sp, stream: list[int]) -> int:
    """Independent byte count: decode every document (the stream starts with BOS) and count UTF-8 bytes."""
    return sum(len(sp.decode(doc).encode("utf-8")) for doc in documents_of(stream))


def crafted_stream(sp, seq_len: int) -> list[int]:
    """Documents with byte-fallback pieces, multi-byte UTF-8, and '▁'-pieces right after BOS; padded with
    whole '▁the' pieces so that (len - 1) is a multiple of seq_len and the stream ends on a document end."""
    the = sp.piece_to_id("\u2581the")
    stream = []
    for text in MULTILINGUAL + ["Plain English words, digits 2024 and 3.14159.", "a  b\tc"]:
        stream += [BOS, *sp.encode(text)]
        stream += [BOS, the, the, *sp.encode("quick brown fox")]  # a leading-space piece straight after BOS
    while (len(stream) - 1) % seq_len:
        stream.append(the)
    return stream


def test_crafted_stream_exercises_the_hard_cases(tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer_path))
    stream = crafted_stream(sp, 32)
    assert any(sp.is_byte(t) for t in stream), "byte-fallback pieces must occur"
    after_bos = [stream[i + 1] for i in range(len(stream) - 1) if stream[i] == BOS]
    assert any(sp.id_to_piece(t).startswith("\u2581") for t in after_bos)
    assert any(len(sp.id_to_piece(t).encode()) != len(sp.id_to_piece(t)) for t in stream if not sp.is_byte(t))


def test_target_bytes_match_decoded_text(tg, tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer_path))
    luts = tg.build_sentencepiece_luts(sp, 1024, CPU)
    for stream in (crafted_stream(sp, 32), tiny_data.val_tokens[:5000].tolist()):
        last_bos = max(i for i, t in enumerate(stream) if t == BOS)
        stream = stream[:last_bos]  # end on a document boundary so no UTF-8 character is cut in half
        ids = torch.tensor(stream)
        got = int(tg.count_target_bytes(ids[:-1], ids[1:], luts).sum())
        assert got == decoded_bytes(sp, stream)


def test_byte_pieces_count_one_byte_and_boundaries_zero(tg, tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer_path))
    base, space, boundary = tg.build_sentencepiece_luts(sp, 1024, CPU)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(base[i] == 1 and not space[i] for i in byte_ids)
    for special in (0, 1, 2, 3):
        assert boundary[special] and base[special] == 0
    assert base[sp.piece_to_id("\u2581the")] == 3 and space[sp.piece_to_id("\u2581the")]


def test_evaluate_bpb_agrees_with_independent_computation(tg, tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer_path))
    args = tg.Hyperparameters(tiny_data.env())
    torch.manual_seed(0)
    model = tg.build_model(args, CPU)
    with torch.no_grad():  # a non-trivial model: the zero-initialised projections get random weights too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stream = crafted_stream(sp, args.train_seq_len)
    tokens = torch.tensor(stream)
    luts = tg.build_sentencepiece_luts(sp, 1024, CPU)
    got = tg.evaluate(model, tokens, args, luts, CPU, torch.autocast("cpu", enabled=False), batch_seqs=3)

    n = len(stream) - 1
    x, y = tokens[:-1].view(-1, args.train_seq_len), tokens[1:].view(-1, args.train_seq_len)
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(x).double(), dim=-1)
    nats = float(-logp.gather(-1, y[..., None]).sum())
    nbytes = decoded_bytes(sp, stream)
    assert got["tokens"] == n and got["bytes"] == nbytes
    assert got["val_bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-6)
    assert got["val_loss"] == pytest.approx(nats / n, rel=1e-6)


@pytest.mark.parametrize(
    "n_tokens,seq_len,stride", [(257, 32, 0), (257, 32, 8), (321, 32, 24), (65, 32, 31), (97, 16, 5)]
)
def test_eval_windows_score_every_target_exactly_once(tg, n_tokens, seq_len, stride):
    windows = tg.eval_windows(n_tokens, seq_len, stride)
    scored = [s + j for s, first in windows for j in range(first, seq_len)]
    assert sorted(scored) == list(range(((n_tokens - 1) // seq_len) * seq_len))
    assert all(0 <= s and s + seq_len <= n_tokens - 1 for s, _ in windows)
    if 0 < stride < seq_len:
        assert all(seq_len - first <= stride for _, first in windows[1:])


def test_sliding_window_gives_more_context_but_same_bytes(tg, tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer_path))
    torch.manual_seed(0)
    args = tg.Hyperparameters(tiny_data.env())
    strided = tg.Hyperparameters(tiny_data.env(EVAL_STRIDE=8))
    model = tg.build_model(args, CPU)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokens = torch.from_numpy(tiny_data.val_tokens[: 32 * 12 + 1])
    luts = tg.build_sentencepiece_luts(sp, 1024, CPU)
    plain = tg.evaluate(model, tokens, args, luts, CPU, torch.autocast("cpu", enabled=False), batch_seqs=4)
    slide = tg.evaluate(model, tokens, strided, luts, CPU, torch.autocast("cpu", enabled=False), batch_seqs=4)
    assert (plain["tokens"], plain["bytes"]) == (slide["tokens"], slide["bytes"])
    assert plain["val_loss"] != slide["val_loss"]


def test_bits_per_byte_formula(tg):
    assert tg.bits_per_byte(100 * math.log(2), 100, 50) == pytest.approx(2.0)
    assert tg.bits_per_byte(3.0, 4, 12) == pytest.approx((3.0 / 4) / math.log(2) * (4 / 12))


def test_protected_markers_wrap_the_metric_code():
    src = (Path(__file__).resolve().parents[1] / "trainer" / "train_gpt.py").read_text()
    begin, end = src.index("# === PROTECTED: METRIC BEGIN ==="), src.index("# === PROTECTED: METRIC END ===")
    inside = src[begin:end]
    for name in ("def build_sentencepiece_luts", "def count_target_bytes", "def bits_per_byte"):
        assert name in inside


# --- shards -------------------------------------------------------------------------------------------


def test_shard_roundtrip_and_stream_wraps_across_files(tg, tmp_path):
    a, b = np.arange(0, 50) % 1024, np.arange(1000, 1030) % 1024
    write_shard(tmp_path / "fineweb_train_000000.bin", a)
    write_shard(tmp_path / "fineweb_train_000001.bin", b)
    assert tg.load_data_shard(tmp_path / "fineweb_train_000000.bin").tolist() == a.tolist()
    stream = tg.TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    got = stream.take(100).tolist()
    assert got == (a.tolist() + b.tolist() + a.tolist())[:100]


def test_shard_holds_full_uint16_range(tg, tmp_path):
    write_shard(tmp_path / "s.bin", [0, 1, 65535, 40000])
    assert tg.load_data_shard(tmp_path / "s.bin").tolist() == [0, 1, 65535, 40000]


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (dict(magic=20240521), "bad magic 20240521"),
        (dict(version=2), "bad version 2"),
        (dict(num_tokens=11), "size mismatch"),
        (dict(num_tokens=9), "size mismatch"),
    ],
)
def test_corrupt_shards_are_rejected_naming_file_and_problem(tg, tmp_path, corrupt, message):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, list(range(10)), **corrupt)
    with pytest.raises(ValueError) as e:
        tg.load_data_shard(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_truncated_shards_are_rejected(tg, tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, list(range(10)))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="size mismatch"):
        tg.load_data_shard(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"fineweb_train_000000.bin: truncated header"):
        tg.load_data_shard(path)


def test_a_run_on_a_corrupt_shard_reports_the_file(tg, tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in tiny_data.data_path.glob("*.bin"):
        (data / f.name).write_bytes(f.read_bytes())
    bad = data / "fineweb_val_000000.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(ValueError):
        run_in_process(tg, tiny_data, tmp_path / "run", DATA_PATH=str(data))
    import json

    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["status"] == "error" and "fineweb_val_000000.bin" in result["error"]
    assert "size mismatch" in result["error"]
