"""CaseOps (trainer/caseops.py): the reversible case transform, the CaseOps tokenizer and val byte sidecar the
data builders write, and bpb on the ORIGINAL text's bytes in the trainer, the trusted count (tools/rescore.py)
and the clean-room re-score (tools/rescore_worker.py). Real SentencePiece, real shards, no downloads (the
FineWeb path is served by a local stand-in for the hub)."""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from testing.trainer_fixtures import MULTILINGUAL, TINY_ENV, run_in_process
from tests.conftest import REPO_ROOT, load_prepare_data

pd = load_prepare_data()
corpus = pd.local_corpus()
C = pd.sibling("caseops")
TRAINER = REPO_ROOT / "trainer" / "train_gpt.py"

HOSTILE = [
    "The NASA iPhone, McDonald's and HTTPs: GROß, STRAßE, İstanbul, ıi, ẞ, K (Kelvin), ǅemal, ǲ.",
    "ΟΔΟΣ and Οδός: final sigma; ΣΊΣΥΦΟΣ; Ⓐⓐ Ⅻⅻ ＡＢＣａｂｃ; ﬁ ligature; Å vs Å.",
    "Markers typed in: \ue001x \ue002Y \ue003 \ue004 \ue004\ue004 and \ue001\ue004 at the end \ue004",
    "Emoji 😀🚀 (ZWJ 👩‍👩‍👧), combining e\u0301 E\u0301, Cyrillic ПРИВЕТ Мир, Armenian ՀԱՅ, Georgian Ა.",
    "ALL CAPS LINE. A I O. aBC AbC ABc abC Abc. X1Y2Z3 ABC123def. \u2581 literal ▁ and\ttabs   \n\n  spaces",
]


def fuzz_strings(n: int, seed: int = 0) -> list[str]:
    """Random strings over characters whose case mappings are awkward, plus the markers themselves."""
    pool = list("aAbBzZ sS.1_-'\n\t") + list("ßẞİıiIKkǅǄǆΣσςΟοÅåⒶⓐⅫⅻＡａﬁΐΰŉǰ😀\u0301\u0345ʼ")
    pool += list(C.MARKERS) + ["\ud7ff", "\U000e0001"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randrange(0, 40))) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ transform


def test_the_transform_round_trips_and_its_byte_weights_count_the_original():
    for text in HOSTILE + fuzz_strings(5000):
        t = C.encode(text)
        back, weights = C.decode_with_weights(t)
        assert back == text, (text, t)
        assert weights.size == len(t.encode("utf-8")) and int(weights.sum()) == len(text.encode("utf-8")), (
            text
        )


def test_the_transform_writes_case_as_markers_and_shares_one_lower_case_form():
    T, A, N, E = C.TITLE, C.ALLCAPS, C.CAPNEXT, C.ESC
    assert C.encode("The THE the") == f"{T}the {A}the the"
    assert C.encode("iPhone McDonald") == f"i{N}phone {T}mc{N}donald"
    assert C.encode("HTTPs") == f"{A}htt{N}ps"  # the run must end before a letter the decoder would raise
    assert C.encode("ΟΔΟΣ") == f"{A}οδοσ"  # lowered per character: no final-sigma rewrite
    assert C.encode("İ ẞ \u212a ǅ") == "İ ẞ \u212a ǅ"  # no lossless lower case: left as they are
    assert C.encode(f"a{T}b{E}") == f"a{E}{T}b{E}{E}"


def test_a_long_run_of_letters_encodes_in_linear_time():
    import time

    t0 = time.perf_counter()
    text = "a" * 200_000 + "B" + "c" * 200_000
    assert C.decode(C.encode(text)) == text
    assert time.perf_counter() - t0 < 5.0  # quadratic matching took about 12 s for 20,000 letters


@pytest.mark.parametrize(
    "bad", [C.TITLE, C.TITLE + "1", C.CAPNEXT + "ß", C.ALLCAPS + " x", C.ESC, "ok " + C.ALLCAPS]
)
def test_decode_refuses_what_no_encode_produces(bad):
    with pytest.raises(C.CaseOpsError):
        C.decode(bad)


# ------------------------------------------------------------------------------ tokenizer, shards, sidecar


@pytest.fixture(scope="session")
def caseops_data(tmp_path_factory):
    """A real CaseOps dataset: stdlib docstrings plus hostile multilingual documents, split, case-transformed,
    a 1024-piece tokenizer trained with the markers as user-defined symbols, shards and the val sidecar."""
    root = tmp_path_factory.mktemp("caseops_data")
    extra = [corpus.Doc("hostile", t) for t in HOSTILE * 4 + MULTILINGUAL * 3]
    docs = corpus.dedupe(corpus.stdlib_docstring_docs(max_bytes=600_000) + extra)
    manifest = corpus.build_dataset(
        docs,
        root,
        dataset="co_sp1024",
        tokenizer_name="co_1024_bpe",
        val_fraction=0.15,
        caseops_transform=True,
    )
    _, val_docs = corpus.split_train_val(docs, 0.15)
    return root, manifest, val_docs


def test_the_sidecar_sums_to_each_original_documents_utf8_bytes(caseops_data):
    root, manifest, val_docs = caseops_data
    data = root / manifest["data_path"]
    tokens = pd.read_shard(data / "fineweb_val_000000.bin")
    nbytes = pd.read_shard(data / "fineweb_val_bytes_000000.bin").astype(np.int64)
    starts = np.flatnonzero(tokens == pd.BOS_ID).tolist() + [tokens.size]
    per_doc = [int(nbytes[a:b].sum()) for a, b in zip(starts, starts[1:], strict=False)]
    assert per_doc == [
        len(d.text.encode("utf-8")) for d in val_docs
    ]  # independent count, document by document
    assert any(d.source == "hostile" for d in val_docs), "the val split holds hostile text"
    assert sum(per_doc) == manifest["text_bytes"]["val"] == manifest["caseops"]["val_sidecar_bytes"]
    assert pd.check_sidecar(data / "fineweb_val_000000.bin", data / "fineweb_val_bytes_000000.bin") == sum(
        per_doc
    )


def test_the_tokens_spell_the_original_text_and_the_markers_are_single_pieces(caseops_data):
    import sentencepiece as spm

    root, manifest, val_docs = caseops_data
    sp = spm.SentencePieceProcessor(model_file=str(root / manifest["tokenizer_path"]))
    assert C.is_caseops_tokenizer(sp) and all(len(sp.encode(m)) == 1 for m in C.MARKERS)
    tokens = pd.read_shard(root / manifest["data_path"] / "fineweb_val_000000.bin")
    starts = np.flatnonzero(tokens == pd.BOS_ID).tolist() + [tokens.size]
    for d, a, b in zip(val_docs, starts, starts[1:], strict=False):
        if "\u2581" not in d.text:  # SentencePiece's own space symbol decodes as a space
            assert C.decode(sp.decode(tokens[a + 1 : b].tolist())) == d.text


# ------------------------------------------------------------------------------------------ the trainer's bpb


def co_env(root: Path, manifest: dict, run_dir: Path, **overrides) -> dict[str, str]:
    env = dict(
        TINY_ENV,
        DATA_PATH=str(root / manifest["data_path"]),
        TOKENIZER_PATH=str(root / manifest["tokenizer_path"]),
        CASEOPS="1",
        RUN_DIR=str(run_dir),
        RUN_ID=run_dir.name,
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def test_a_caseops_run_scores_original_bytes_and_the_protected_metric_agrees(tg, caseops_data, tmp_path):
    from tools import rescore

    root, manifest, _ = caseops_data
    env = co_env(root, manifest, tmp_path / "run", VAL_MAX_TOKENS=0, EVAL_STRIDE=16, VAL_HOLDOUT_TOKENS=2048)
    tg.run(tg.Hyperparameters(env))
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["status"] == "ok", result["error"]
    assert math.isfinite(result["val_bpb"]) and math.isfinite(result["holdout_bpb"])
    # the scored slice's bytes: the sidecar's entries at the scored target positions, not the piece table's
    tokens = pd.read_shard(root / manifest["data_path"] / "fineweb_val_000000.bin")
    nbytes = pd.read_shard(root / manifest["data_path"] / "fineweb_val_bytes_000000.bin").astype(np.int64)
    n = ((tokens.size - 2048 - 1) // 32) * 32
    assert (result["val_tokens"], result["val_bytes"]) == (n, int(nbytes[1 : n + 1].sum()))
    assert rescore.expected_totals(env, TRAINER.read_text()) == (n, result["val_bytes"])
    base, space, boundary, caseops = rescore.byte_tables(env["TOKENIZER_PATH"], 1024)
    assert caseops and int(base[tokens[1 : n + 1]].sum()) != result["val_bytes"]  # the LUT would miscount

    # the clean room's re-score of the exported model: the incumbent's protected code, the same bytes
    (tmp_path / "env.json").write_text(json.dumps(env | {"RUN_DIR": str(tmp_path / "rescore")}))
    artifact = next((tmp_path / "run").glob("final_model.*.ptz"))
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/rescore_worker.py"), "--incumbent", str(TRAINER)]
        + ["--artifact", str(artifact), "--env", str(tmp_path / "env.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    got = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert (got.get("tokens"), got.get("bytes")) == (n, result["val_bytes"]), got
    assert got["val_bpb"] == pytest.approx(result["val_bpb"], abs=1e-9)


def test_phased_lora_ttt_counts_the_same_original_bytes(tg, caseops_data, tmp_path):
    root, manifest, _ = caseops_data
    lora = dict(TTT_ENABLE=1, TTT_MODE="lora", TTT_LORA_RANK=4, TTT_LORA_CHUNK=16, TTT_PHASE_DOCS=4)
    env = co_env(root, manifest, tmp_path / "ttt", VAL_MAX_TOKENS=4096, ITERATIONS=2, **lora)
    tg.run(tg.Hyperparameters(env))
    result = json.loads((tmp_path / "ttt" / "results.json").read_text())
    assert result["status"] == "ok", result["error"]
    nbytes = pd.read_shard(root / manifest["data_path"] / "fineweb_val_bytes_000000.bin").astype(np.int64)
    assert result["val_bytes"] == int(nbytes[1 : result["val_tokens"] + 1].sum())


# --------------------------------------------------------------------- a missing or mismatched sidecar


@pytest.fixture
def broken(caseops_data, tmp_path):
    """A copy of the CaseOps dataset to damage, and its env."""
    root, manifest, _ = caseops_data
    data = tmp_path / "data"
    shutil.copytree(root / manifest["data_path"], data)
    env = co_env(root, manifest, tmp_path / "run", DATA_PATH=data)
    return data, env


def side_of(data: Path) -> Path:
    return data / "fineweb_val_bytes_000000.bin"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "byte sidecar missing"),
        (lambda p: pd.write_shard(p, pd.read_shard(p)[:-1]), "not a byte sidecar of the"),
        (lambda p: pd.write_shard(p, np.roll(pd.read_shard(p), 1)), "nonzero bytes at a BOS"),
    ],
    ids=["missing", "short", "shifted"],
)
def test_a_missing_or_mismatched_sidecar_is_a_clear_error_everywhere(tg, broken, damage, message):
    from tools import rescore

    data, env = broken
    damage(side_of(data))
    with pytest.raises(ValueError, match=message):
        tg.run(tg.Hyperparameters(env))
    result = json.loads((Path(env["RUN_DIR"]) / "results.json").read_text())
    assert result["status"] == "error" and message in result["error"] and result["val_bpb"] is None
    with pytest.raises(ValueError):  # the trusted count refuses too: never the piece table in its place
        rescore.expected_totals(env, TRAINER.read_text())
    with pytest.raises((pd.ShardError, OSError)):
        pd.check_sidecar(data / "fineweb_val_000000.bin", side_of(data))


def test_the_caseops_knob_and_the_data_must_agree(tg, caseops_data, tiny_data, tmp_path):
    root, manifest, _ = caseops_data
    with pytest.raises(ValueError, match="CASEOPS=0 but .* is a CaseOps"):
        tg.run(tg.Hyperparameters(co_env(root, manifest, tmp_path / "a", CASEOPS=0)))
    with pytest.raises(ValueError, match="CASEOPS=1 but .* is not a CaseOps"):
        run_in_process(tg, tiny_data, tmp_path / "b", CASEOPS=1)


def test_a_plain_dataset_is_still_scored_with_the_piece_table(tg, tiny_data):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_data.tokenizer_path))
    assert not tg.is_caseops(sp)
    assert tg.load_byte_sidecar(str(tiny_data.data_path / "fineweb_val_[0-9]*.bin"), sp) is None


# ---------------------------------------------------------------------------------- the FineWeb download


@pytest.fixture
def caseops_hub(tmp_path):
    """A local stand-in for huggingface.co serving the records' CaseOps dataset layout."""
    site = tmp_path / "site"
    base = site / "datasets" / pd.CASEOPS_HF_REPO_ID / "resolve" / "main" / "datasets"
    dataset, tok = pd.fineweb_names(8192, caseops=True)
    shards = base / "datasets" / dataset
    shards.mkdir(parents=True)
    pd.write_shard(shards / "fineweb_val_000000.bin", [1, 4, 700, 9, 1, 5])
    pd.write_shard(shards / "fineweb_val_bytes_000000.bin", [0, 0, 3, 1, 0, 2])
    pd.write_shard(shards / "fineweb_train_000000.bin", [1, 8, 9])
    (base / "tokenizers").mkdir()
    (base / "tokenizers" / f"{tok}.model").write_bytes(b"caseops model")
    manifest = {
        "datasets": [{"name": dataset, "tokenizer_name": "co", "stats": {"files_train": 1, "files_val": 1}}],
        "tokenizers": [{"name": "co", "model_path": f"tokenizers/{tok}.model"}],
    }
    (base / "manifest.json").write_text(json.dumps(manifest))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", shards
    server.shutdown()


def test_a_pod_downloads_the_records_caseops_fineweb_with_its_sidecar(tmp_path, caseops_hub):
    endpoint, shards = caseops_hub
    pod = tmp_path / "job"
    pod.mkdir()
    shutil.copy(REPO_ROOT / "trainer" / "prepare_data.py", pod / "prepare_data.py")  # alone, as a pod gets it
    argv = [sys.executable, "prepare_data.py", "--variant", "fineweb", "--vocab", "8192", "--caseops"]
    argv += ["--out", "data", "--if-missing"]
    env = dict(os.environ, PGOLF_HF_ENDPOINT=endpoint)
    res = subprocess.run(argv, cwd=pod, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    data = pod / "data" / "datasets" / "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    assert f"DATA_PATH={data.resolve()}" in res.stdout and "CASEOPS=1" in res.stdout
    assert pd.read_shard(data / "fineweb_val_bytes_000000.bin").tolist() == [0, 0, 3, 1, 0, 2]
    # a sidecar that does not match its shard is refused at download, never used
    shutil.rmtree(pod / "data")
    pd.write_shard(shards / "fineweb_val_bytes_000000.bin", [0, 2, 3, 1, 1, 2])
    res = subprocess.run(argv, cwd=pod, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and "nonzero bytes at a BOS" in res.stderr


def test_a_caseops_final_prepares_and_reads_the_records_caseops_fineweb():
    from types import SimpleNamespace

    from agent.finals.config import FinalConfig
    from agent.finals.pod_run import PodRun

    cfg = FinalConfig()
    for caseops in (False, True):
        run = SimpleNamespace(env={"VOCAB_SIZE": "8192", "CASEOPS": str(int(caseops))}, vocab="8192")
        fields = PodRun.data_fields.fget(run)  # type: ignore[attr-defined]
        dataset, tok = pd.fineweb_names(8192, caseops)  # what prepare_data.py writes on the pod
        assert cfg.data_path.format(**fields) == f"data/datasets/{dataset}"
        assert cfg.tokenizer_path.format(**fields) == f"data/tokenizers/{tok}.model"
        assert ("--caseops" in cfg.setup_cmd.format(train_shards=1, gpu_count=8, **fields)) == caseops


def test_the_harness_picks_the_caseops_data_for_a_caseops_run(tmp_path):
    from types import SimpleNamespace

    from agent.session import data_variants_in_use
    from memory.workspace import Workspace
    from tools.sweep import data_env

    ctx = SimpleNamespace(ws=Workspace.at(tmp_path))
    assert data_env(ctx, {"VOCAB_SIZE": "8192", "CASEOPS": "1"}) == {  # type: ignore[arg-type]
        "DATA_PATH": str(tmp_path / "data/datasets/embedded_sp8192_caseops"),
        "TOKENIZER_PATH": str(tmp_path / "data/tokenizers/embedded_8192_bpe_caseops.model"),
    }
    assert data_env(ctx, {"VOCAB_SIZE": "8192", "CASEOPS": "0"})["DATA_PATH"].endswith("embedded_sp8192")  # type: ignore[arg-type]
    # the session builds each variant its runs may use: the start's, and a queue item's on top of it
    start = {"VOCAB_SIZE": "8192", "CASEOPS": "1"}
    assert data_variants_in_use(start, {}, [{"CASEOPS": "0"}, {"EMA_DECAY": "0"}]) == (
        (8192, False),
        (8192, True),
    )


def test_caseops_fineweb_builds_from_the_document_stream_as_the_records_do(tmp_path):
    texts = [d.text for d in corpus.stdlib_docstring_docs(max_bytes=500_000)] + HOSTILE
    docs = tmp_path / "docs_selected.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    m = corpus.build_caseops_from_docs(
        docs, tmp_path / "out", vocab_size=1024, val_docs=12, shard_tokens=20_000
    )
    data = tmp_path / "out" / m["data_path"]
    assert m["docs"] == {"val": 12, "read": len(texts)} and m["train_shards"] >= 3
    tokens = pd.read_shard(data / "fineweb_val_000000.bin")
    nbytes = pd.read_shard(data / "fineweb_val_bytes_000000.bin").astype(np.int64)
    starts = np.flatnonzero(tokens == pd.BOS_ID).tolist() + [tokens.size]
    assert [int(nbytes[a:b].sum()) for a, b in zip(starts, starts[1:], strict=False)] == [
        len(t.encode("utf-8")) for t in texts[:12]
    ]  # the first documents are the val split, each scored on its original bytes
    sp = corpus.load_tokenizer(tmp_path / "out" / m["tokenizer_path"])
    train = np.concatenate([pd.read_shard(p) for p in sorted(data.glob("fineweb_train_*.bin"))])
    assert train.tolist() == corpus.encode_docs(sp, [C.encode(t) for t in texts[12:]]).tolist()
    # a plain tokenizer cannot encode CaseOps shards: refused before any shard is written
    plain = corpus.train_tokenizer(texts, tmp_path / "plain" / "p", 1024)
    with pytest.raises(ValueError, match="not a CaseOps tokenizer"):
        corpus.build_caseops_from_docs(docs, tmp_path / "out2", vocab_size=1024, tokenizer=plain)
    assert not list((tmp_path / "out2").rglob("*.bin"))


@pytest.mark.parametrize(
    "patch",
    [
        "\nload_byte_sidecar = lambda *a: None\n",  # skip the sidecar: the piece table would count instead
        "\ndef is_caseops(sp):\n    return False\n",  # a CaseOps tokenizer passed off as a plain one
    ],
)
def test_the_sidecar_reader_is_inside_the_metric_fence(patch):
    from tools import metric_guard

    text = TRAINER.read_text()
    assert metric_guard.violations(text) == []
    assert any("a name the protected metric code uses" in v for v in metric_guard.violations(text + patch))
