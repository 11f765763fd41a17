"""Shared fixtures.

tiny_dataset: a real (small) dataset in the challenge's shard format, built without network in a few
seconds: a SentencePiece BPE tokenizer with the challenge's sp1024 settings trained on English docstrings
of the Python standard library, shards written by trainer/local_corpus.py. Tests that run the real
trainer on the cpu-tiny tier point DATA_PATH / TOKENIZER_PATH at it.
"""

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_prepare_data():
    """trainer/ is not a package (it is copied to pods and run as scripts); load the module by path, once."""
    name = "pgolf_trainer_prepare_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "trainer" / "prepare_data.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass(frozen=True)
class TinyDataset:
    root: Path  # the data root: datasets/ and tokenizers/ below it
    data_path: Path  # DATA_PATH: the folder holding fineweb_train_000000.bin and fineweb_val_000000.bin
    tokenizer_path: Path  # TOKENIZER_PATH: the SentencePiece .model, vocab 1024
    manifest: dict  # as written to data_path / "manifest.json"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> TinyDataset:
    # About 180k train and 20k val tokens: enough for the cpu-tiny tier (VAL_MAX_TOKENS=4096 plus a
    # 2048-token holdout), built in a few seconds on two cores.
    corpus = load_prepare_data().local_corpus()
    root = tmp_path_factory.mktemp("tiny_data")
    docs = corpus.stdlib_docstring_docs(max_bytes=600_000)
    manifest = corpus.build_dataset(
        docs,
        root,
        dataset="tiny_sp1024",
        tokenizer_name="tiny_1024_bpe",
        val_fraction=0.1,
        extra={"variant": "tiny", "sources": [{"name": "stdlib-docstrings", "docs": len(docs)}]},
    )
    ds = TinyDataset(root, root / manifest["data_path"], root / manifest["tokenizer_path"], manifest)
    assert manifest["tokens"]["val"] >= 8192 and manifest["tokens"]["train"] >= 65536, manifest["tokens"]
    return ds


@pytest.fixture(scope="session")
def tiny_data():
    """The trainer tests' own dataset (testing/trainer_fixtures.py), built once per test session."""
    from testing.trainer_fixtures import build_tiny_dataset

    return build_tiny_dataset()


@pytest.fixture(scope="session")
def tg():
    """train_gpt.py imported as a module, so tests can call its functions directly."""
    from testing.trainer_fixtures import trainer_for_tests

    return trainer_for_tests()
