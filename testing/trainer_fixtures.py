"""A tiny but real dataset for the trainer tests, and helpers to load and run the trainer.

English text comes from the Python standard library itself (docstrings and the pydoc topic pages), plus a
few multilingual documents so that byte-fallback pieces and multi-byte UTF-8 occur. A real SentencePiece
BPE model is trained with the challenge's sp1024 settings and shards are written in the challenge format
by `write_shard` below (independently of the trainer's reader). Built once per process (cached);
test modules wrap `build_tiny_dataset` and `trainer_for_tests` in session fixtures `tiny_data` and `tg`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import json
import random
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "trainer" / "train_gpt.py"
BOS = 1

MULTILINGUAL = [
    "Café crème brûlée, naïve façade; the résumé of a señor in São Paulo.",
    "Größe, Übermaß und Straße: German words with umlauts and the sharp s (ß).",
    "東京は日本の首都です。大阪と京都も有名な都市です。",
    "Emoji are four bytes each in UTF-8: 😀 🚀 🐍 and the snake again 🐍.",
    "Ελληνικά γράμματα: α β γ δ, and Cyrillic: Привет, мир!",
    "Mathematics: ∑ x² ≤ ∞, with arrows → ← and a degree sign 90°.",
]

# sp1024 settings from the challenge
SP_SETTINGS = dict(
    model_type="bpe",
    vocab_size=1024,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    character_coverage=0.999,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
)

# A model small enough that a step takes milliseconds on one CPU core.
TINY_ENV = dict(
    VOCAB_SIZE="1024",
    NUM_LAYERS="2",
    MODEL_DIM="32",
    NUM_HEADS="2",
    NUM_KV_HEADS="1",
    MLP_MULT="2",
    TRAIN_SEQ_LEN="32",
    TRAIN_BATCH_TOKENS="256",
    GRAD_ACCUM_STEPS="1",
    ITERATIONS="4",
    WARMUP_STEPS="0",
    WARMDOWN_ITERS="0",
    MAX_WALLCLOCK_SECONDS="0",
    VAL_MAX_TOKENS="1024",
    VAL_BATCH_SIZE="512",
    VAL_LOSS_EVERY="0",
    TRAIN_LOG_EVERY="1",
    DEVICE="cpu",
    DTYPE="fp32",
    COMPILE="0",
    INT8_KEEP_FLOAT_MAX_NUMEL="256",
    SEED="7",
)


def write_shard(path: Path, tokens, magic: int = 20240520, version: int = 1, num_tokens: int | None = None):
    """The challenge format: 256 little-endian int32 header words, then uint16 token ids."""
    tokens = np.asarray(tokens, dtype="<u2")
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = len(tokens) if num_tokens is None else num_tokens
    path.write_bytes(header.tobytes() + tokens.tobytes())


def stdlib_documents() -> list[str]:
    """Docstrings of standard-library modules, classes and functions, and the pydoc topic pages."""
    import pydoc_data.topics

    docs = list(pydoc_data.topics.topics.values())
    skip = {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "lib2to3",
        "ensurepip",
    }
    for name in sorted(sys.stdlib_module_names):
        if name in skip or name.startswith("_"):
            continue
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except BaseException:  # some modules refuse to import on this platform
            continue
        objs = [mod] + [
            v
            for k, v in vars(mod).items()
            if not k.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v) or inspect.isbuiltin(v))
        ]
        for obj in objs:
            if inspect.isclass(obj):
                objs_extra = [
                    m for k, m in vars(obj).items() if not k.startswith("_") and inspect.isfunction(m)
                ]
            else:
                objs_extra = []
            for o in [obj, *objs_extra]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    doc = inspect.getdoc(o)
                if doc and len(doc) >= 200:
                    docs.append(doc)
    return list(dict.fromkeys(docs))


@dataclass(frozen=True)
class TinyData:
    root: Path
    data_path: Path
    tokenizer_path: Path
    val_tokens: np.ndarray

    def env(self, **overrides) -> dict[str, str]:
        env = dict(TINY_ENV, DATA_PATH=str(self.data_path), TOKENIZER_PATH=str(self.tokenizer_path))
        env.update({k: str(v) for k, v in overrides.items()})
        return env


@functools.cache
def build_tiny_dataset(vocab_size: int = 1024) -> TinyData:
    """The dataset with an sp1024 tokenizer, or (vocab_size=4096/8192) the larger vocabularies the records use."""
    import sentencepiece as spm

    root = Path(tempfile.mkdtemp(prefix=f"pgolf_tiny_data{vocab_size}_"))
    atexit.register(shutil.rmtree, root, True)
    docs = stdlib_documents()
    random.Random(0).shuffle(docs)
    docs = docs + MULTILINGUAL * 3
    random.Random(1).shuffle(docs)
    lines = [ln for d in docs for ln in d.splitlines() if ln.strip()]
    tok_dir = root / "tokenizers"
    tok_dir.mkdir()
    prefix = str(tok_dir / f"fineweb_{vocab_size}_bpe")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        num_threads=2,
        minloglevel=2,
        **dict(SP_SETTINGS, vocab_size=vocab_size),
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    streams = [[BOS, *sp.encode(d)] for d in docs]
    n_val = max(len(streams) // 10, 20)
    val = [t for s in streams[:n_val] for t in s]
    train = [t for s in streams[n_val:] for t in s]
    data = root / "datasets" / f"fineweb10B_sp{vocab_size}"
    data.mkdir(parents=True)
    half = len(train) // 2
    write_shard(data / "fineweb_train_000000.bin", train[:half])
    write_shard(data / "fineweb_train_000001.bin", train[half:])
    write_shard(data / "fineweb_val_000000.bin", val)
    (data / "manifest.json").write_text(
        json.dumps(
            dict(
                source="python stdlib docstrings",
                docs=len(docs),
                train_tokens=len(train),
                val_tokens=len(val),
            )
        )
    )
    return TinyData(root, data, Path(prefix + ".model"), np.asarray(val, dtype=np.int64))


def load_trainer(name: str = "train_gpt_under_test"):
    """Import trainer/train_gpt.py as a module (tests may; the project packages never do)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TRAINER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def trainer_for_tests():
    """The trainer module, with torch on one thread: tiny shapes on a shared 2-core box only contend."""
    import torch

    torch.set_num_threads(1)
    return load_trainer()


def run_in_process(tg, data: TinyData, run_dir: Path, **overrides) -> dict:
    """One whole trainer run in this process, returning results.json's content."""
    env = data.env(RUN_DIR=str(run_dir), RUN_ID=run_dir.name, **overrides)
    tg.run(tg.Hyperparameters(env))
    return json.loads((run_dir / "results.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
