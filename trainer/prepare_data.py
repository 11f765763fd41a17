"""Token shards and tokenizers in the exact Parameter Golf format: the challenge's FineWeb download.

Standalone (imports nothing from this project) and one file: an 8xH100 pod gets this file alone next
to train_gpt.py and runs the fineweb variant. The embedded corpus builders live in local_corpus.py
beside it, loaded only when the embedded variant is asked for.

Two variants, each at vocabulary size 1024, 4096 or 8192 (`--vocab`, the trainer's VOCAB_SIZE):
  embedded (default)  a real English corpus gathered at set-up time from registry packages (see
                      local_corpus.py), a SentencePiece BPE tokenizer with the challenge's settings,
                      train/val shards and a manifest: datasets/embedded_sp<V>,
                      tokenizers/embedded_<V>_bpe.model.
  fineweb             the challenge's own FineWeb shards and tokenizer from the Hugging Face dataset
                      willdepueoai/parameter-golf (datasets/fineweb10B_sp<V>,
                      tokenizers/fineweb_<V>_bpe.model),
                      in the layout of the challenge's data/cached_challenge_fineweb.py. Needs network
                      access to huggingface.co.

Shard format: 256 little-endian int32 header words ([0]=20240520 magic, [1]=1 version, [2]=num_tokens),
then num_tokens little-endian uint16 ids; every document starts with BOS (id 1), no EOS.

    python trainer/prepare_data.py                      # embedded corpus, sp1024, into ./data
    python trainer/prepare_data.py --vocab 8192         # the same corpus with an 8192-piece tokenizer
    python trainer/prepare_data.py --max-mb 8           # smaller, faster
    python trainer/prepare_data.py --variant fineweb --vocab 8192 --train-shards 10
    python trainer/prepare_data.py --vocab 8192 --caseops   # CaseOps (caseops.py): also for fineweb
    python trainer/prepare_data.py --variant fineweb --vocab 8192 --caseops --docs docs_selected.jsonl

CaseOps variants (the trainer's CASEOPS=1) hold case-transformed tokens and, beside each val shard, its byte
sidecar fineweb_val_bytes_%06d.bin (original UTF-8 bytes per token; format in caseops.py): embedded
datasets/embedded_sp<V>_caseops, and the records' FineWeb download (sp8192 only, CASEOPS_HF_REPO_ID) or,
with --docs, FineWeb built here from the challenge's document stream as the records' prepare script does.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SHARD_TOKENS = 10**8  # the challenge's train shard size
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# The tokenizer sizes the records use: sp1024 (baseline), sp4096 (PR #1218), sp8192 (PR #1394 onwards).
VOCAB_SIZES = (1024, 4096, 8192)


# CaseOps on FineWeb (PRs #1729, #1736, #1855): the records download pre-tokenized shards, the val byte
# sidecars and the tokenizer from this dataset, in the layout of the challenge's own.
CASEOPS_HF_REPO_ID = "romeerp/parameter-golf-caseops-v1"
CASEOPS_FINEWEB_TAG = "lossless_caps_caseops_v1_reserved"
CASEOPS_VOCAB_SIZES = (8192,)  # what that dataset publishes


def fineweb_names(vocab_size: int = 1024, caseops: bool = False) -> tuple[str, str]:
    """(dataset folder, tokenizer stem) of the challenge's published FineWeb variant (or the CaseOps one)."""
    if caseops:
        return (
            f"fineweb10B_sp{vocab_size}_{CASEOPS_FINEWEB_TAG}",
            f"fineweb_{vocab_size}_bpe_{CASEOPS_FINEWEB_TAG}",
        )
    return f"fineweb10B_sp{vocab_size}", f"fineweb_{vocab_size}_bpe"


def embedded_names(vocab_size: int = 1024, caseops: bool = False) -> tuple[str, str]:
    """(dataset folder, tokenizer stem) of the embedded corpus tokenized at this vocabulary size (CaseOps:
    case-transformed, with a val byte sidecar)."""
    suffix = "_caseops" if caseops else ""
    return f"embedded_sp{vocab_size}{suffix}", f"embedded_{vocab_size}_bpe{suffix}"


def sidecar_name(val_shard_name: str) -> str:
    """fineweb_val_000003.bin -> fineweb_val_bytes_000003.bin (caseops.py documents the format)."""
    return "fineweb_val_bytes_" + val_shard_name.removeprefix("fineweb_val_")


def val_shards(data_dir: Path) -> list[Path]:
    """The token shards of the val split: fineweb_val_<digits>.bin, never the byte sidecars beside them."""
    return sorted(data_dir.glob("fineweb_val_[0-9]*.bin"))


FINEWEB_DATASET, FINEWEB_TOKENIZER = fineweb_names(1024)
# The whole reachable embedded corpus is 47.4 MB after de-duplication (about 19.5M sp1024 tokens).
# Measured on the 2-core set-up machine: 65 s wall with the downloads cached (25 s of CPU; the rest was
# other jobs sharing the cores), about 95 s from an empty cache. So the default cap takes everything.
DEFAULT_MAX_MB = 64.0
DEFAULT_VAL_FRACTION = 0.02

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
            f"{path}: size mismatch: header says {num_tokens} tokens, so {expected} bytes, "
            f"file has {size} bytes"
        )
    return num_tokens


def read_shard(path: str | Path) -> np.ndarray:
    num_tokens = check_shard(path)
    tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    if tokens.size != num_tokens:  # the file shrank between the check and the read
        raise ShardError(f"{path}: size mismatch: read {tokens.size} of {num_tokens} tokens")
    return tokens


def check_sidecar(val_shard: str | Path, sidecar: str | Path) -> int:
    """A byte sidecar that belongs to its val shard: one entry per token, 0 at every BOS; returns the
    original UTF-8 bytes it holds."""
    tokens, nbytes = read_shard(val_shard), read_shard(sidecar)
    if tokens.size != nbytes.size:
        raise ShardError(f"{sidecar}: {nbytes.size} byte counts for the {tokens.size} tokens of {val_shard}")
    if nbytes[tokens == BOS_ID].any():
        raise ShardError(f"{sidecar}: nonzero bytes at a BOS of {val_shard}: not its sidecar (shifted?)")
    return int(nbytes.sum(dtype=np.int64))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        cached = Path(
            hf_hub_download(
                repo_id=repo_id, filename=name, subfolder=sub or None, repo_type="dataset", endpoint=endpoint
            )
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached.resolve(strict=True), dest)
        return
    _download(f"{endpoint.rstrip('/')}/datasets/{repo_id}/resolve/main/{relative}", dest, timeout)


def prepare_fineweb(
    out_root: str | Path,
    train_shards: int = 1,
    *,
    vocab_size: int = 1024,
    endpoint: str | None = None,
    repo_id: str | None = None,
    remote_root: str = HF_REMOTE_ROOT,
    timeout: float = 60.0,
    caseops: bool = False,
) -> dict:
    """Download the challenge's FineWeb shards at one vocabulary size (all val, the first train_shards
    train) and their tokenizer; with caseops, the records' CaseOps shards, tokenizer and val byte sidecars
    (fineweb_val_bytes_*.bin) from CASEOPS_HF_REPO_ID instead.

    Layout as data/cached_challenge_fineweb.py: <out_root>/datasets/fineweb10B_sp<V>/ and
    <out_root>/tokenizers/fineweb_<V>_bpe.model; the remote manifest.json goes to <out_root>/manifest.json
    (manifest.caseops.json for the CaseOps dataset). Uses huggingface_hub when installed, else plain HTTPS.
    Raises RuntimeError naming the URL when the endpoint cannot be reached."""
    out_root = Path(out_root)
    if caseops and vocab_size not in CASEOPS_VOCAB_SIZES:
        raise RuntimeError(
            f"the CaseOps FineWeb dataset exists at vocabulary sizes {CASEOPS_VOCAB_SIZES} only"
        )
    repo_id = repo_id or (CASEOPS_HF_REPO_ID if caseops else HF_REPO_ID)
    dataset, tokenizer = fineweb_names(vocab_size, caseops)
    endpoint = endpoint or os.environ.get(HF_ENDPOINT_ENV) or HF_DEFAULT_ENDPOINT
    prefix = remote_root.strip("/")
    rel = lambda p: f"{prefix}/{p}" if prefix else p
    fetch = lambda p, dest: _fetch_remote(rel(p), dest, endpoint=endpoint, repo_id=repo_id, timeout=timeout)
    try:
        manifest_path = out_root / ("manifest.caseops.json" if caseops else "manifest.json")
        fetch("manifest.json", manifest_path)
        remote = json.loads(manifest_path.read_text())
        entry = next((d for d in remote.get("datasets", []) if d.get("name") == dataset), None)
        if entry is None:
            raise RuntimeError(f"{dataset} not listed in the remote manifest")
        stats = entry.get("stats") or {}
        files_train, files_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 1))
        if train_shards > files_train:
            raise RuntimeError(f"{dataset} has {files_train} train shards, {train_shards} requested")
        tok_entry = next(
            (t for t in remote.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None
        )
        tok_files = [
            tok_entry[k] for k in ("model_path", "vocab_path") if tok_entry and tok_entry.get(k)
        ] or [f"tokenizers/{tokenizer}.model"]
        data_dir = out_root / "datasets" / dataset
        names = [f"fineweb_val_{i:06d}.bin" for i in range(files_val)]
        sidecars = [sidecar_name(n) for n in names] if caseops else []
        names += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
        for name in names + sidecars:
            log(f"fetching {name}")
            fetch(f"datasets/{dataset}/{name}", data_dir / name)
            check_shard(data_dir / name)
        for name in sidecars:  # a sidecar is read position by position against its token shard
            check_sidecar(data_dir / name.replace("fineweb_val_bytes_", "fineweb_val_"), data_dir / name)
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
    return {
        "variant": "fineweb",
        "caseops": caseops,
        "vocab_size": vocab_size,
        "data_path": str(data_dir),
        "tokenizer_path": str(out_root / tok_files[0]),
        "shards": names + sidecars,
    }


# ----------------------------------------------------------------------------------------------------
# Entry points


def validate_dataset(data_dir: str | Path, out_root: str | Path) -> dict:
    """The manifest of a built embedded dataset after checking every shard and the tokenizer; raises if
    not intact."""
    data_dir, out_root = Path(data_dir), Path(out_root)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest")
    manifest = json.loads(manifest_path.read_text())
    for s in manifest["shards"]:
        n = check_shard(data_dir / s["file"])
        if n != s["tokens"]:
            raise ShardError(f"{data_dir / s['file']}: {n} tokens, manifest says {s['tokens']}")
        if s["split"] == "val_bytes":
            check_sidecar(
                data_dir / s["file"].replace("fineweb_val_bytes_", "fineweb_val_"), data_dir / s["file"]
            )
    if "caseops" in manifest and not any(s["split"] == "val_bytes" for s in manifest["shards"]):
        raise ShardError(f"{manifest_path}: a CaseOps dataset without its val byte sidecar")
    tok = out_root / manifest["tokenizer_path"]
    if not tok.is_file() or sha256_file(tok) != manifest["tokenizer_sha256"]:
        raise FileNotFoundError(f"{tok}: tokenizer missing or not the one the shards were encoded with")
    return manifest


def sibling(name: str):
    """trainer/<name>.py (local_corpus, caseops), loaded on first use and registered under `name`.

    Not imported at the top: a pod receives this file alone and only ever runs the fineweb path. The
    siblings import this one back by the name prepare_data, which is registered first, so all share one
    copy of the shard format however this file was loaded (as a script, or by path in the tests)."""
    if name not in sys.modules:
        sys.modules.setdefault("prepare_data", sys.modules[__name__])
        path = Path(__file__).with_name(f"{name}.py")
        if not path.is_file():
            raise RuntimeError(
                f"{path} is missing: the embedded corpus needs it beside prepare_data.py "
                "(a pod only runs --variant fineweb)"
            )
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def local_corpus():
    """trainer/local_corpus.py, the embedded corpus builders."""
    return sibling("local_corpus")


def ensure_data(
    out_root: str | Path, variant: str = "embedded", vocab_size: int = 1024, caseops: bool = False, **kwargs
) -> tuple[Path, Path]:
    """(data_path, tokenizer_path) for the trainer's DATA_PATH / TOKENIZER_PATH, building the data only if
    absent or damaged (caseops: the CaseOps variant with its val byte sidecars). kwargs go to
    local_corpus.prepare_embedded / prepare_fineweb."""
    out_root = Path(out_root)
    if vocab_size not in VOCAB_SIZES:
        raise ValueError(f"vocabulary size {vocab_size} is not one the records use ({VOCAB_SIZES})")
    if variant == "embedded":
        data_dir = out_root / "datasets" / embedded_names(vocab_size, caseops)[0]
        try:
            manifest = validate_dataset(data_dir, out_root)
        except (OSError, ShardError, KeyError, ValueError) as e:
            log(
                f"building the embedded dataset at vocabulary size {vocab_size}{' (CaseOps)' * caseops} ({e})"
            )
            manifest = local_corpus().prepare_embedded(
                out_root, vocab_size=vocab_size, caseops_transform=caseops, **kwargs
            )
        return out_root / manifest["data_path"], out_root / manifest["tokenizer_path"]
    if variant == "fineweb":
        dataset, tokenizer = fineweb_names(vocab_size, caseops)
        data_dir = out_root / "datasets" / dataset
        tok = out_root / "tokenizers" / f"{tokenizer}.model"
        try:
            vals = val_shards(data_dir)
            trains = sorted(data_dir.glob("fineweb_train_*.bin"))
            if not vals or len(trains) < kwargs.get("train_shards", 1) or not tok.is_file():
                raise FileNotFoundError(f"{data_dir}: shards or tokenizer missing")
            for p in vals + trains:
                check_shard(p)
            for p in vals if caseops else []:
                check_sidecar(p, p.with_name(sidecar_name(p.name)))
        except (OSError, ShardError) as e:
            log(f"downloading FineWeb{' (CaseOps)' * caseops} ({e})")
            prepare_fineweb(out_root, vocab_size=vocab_size, caseops=caseops, **kwargs)
        return data_dir, tok
    raise ValueError(f"unknown variant {variant!r} (embedded | fineweb)")


def main(argv: list[str] | None = None) -> int:
    repo_root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=["embedded", "fineweb"], default="embedded")
    p.add_argument(
        "--vocab",
        type=int,
        choices=VOCAB_SIZES,
        default=1024,
        help="tokenizer size, the trainer's VOCAB_SIZE (default 1024)",
    )
    p.add_argument("--out", type=Path, default=repo_root / "data", help="data root (default: <repo>/data)")
    p.add_argument(
        "--max-mb", type=float, default=DEFAULT_MAX_MB, help="cap on the embedded corpus, 10^6 bytes"
    )
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    p.add_argument("--cache", type=Path, default=None, help="download cache (default: <out>/cache)")
    p.add_argument("--offline", action="store_true", help="use only what the cache holds")
    p.add_argument("--no-apt", action="store_true", help="skip the Debian sources")
    p.add_argument(
        "--apt-update", action="store_true", help="run `apt-get update` first (root; fresh images)"
    )
    p.add_argument("--if-missing", action="store_true", help="do nothing when valid data is already there")
    p.add_argument(
        "--train-shards", type=int, default=1, help="fineweb: number of train shards (10^8 tokens each)"
    )
    p.add_argument("--endpoint", default=None, help=f"fineweb: Hugging Face endpoint (or ${HF_ENDPOINT_ENV})")
    p.add_argument(
        "--caseops",
        action="store_true",
        help="the CaseOps variant (trainer CASEOPS=1): case-transformed tokens and val byte sidecars",
    )
    p.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="fineweb --caseops: build from this docs_selected.jsonl instead of downloading (local_corpus.py)",
    )
    p.add_argument(
        "--tokenizer", type=Path, default=None, help="--docs: a CaseOps .model (default: train one)"
    )
    args = p.parse_args(argv)
    out_root = args.out.resolve()

    if args.variant == "fineweb" and args.docs is not None:
        if not args.caseops:
            p.error("--docs builds the CaseOps variant: add --caseops")
        m = local_corpus().build_caseops_from_docs(
            args.docs,
            out_root,
            vocab_size=args.vocab,
            tokenizer=args.tokenizer,
            max_train_shards=args.train_shards,
        )
        print(f"DATA_PATH={out_root / m['data_path']}\nTOKENIZER_PATH={out_root / m['tokenizer_path']}")
        print(f"VOCAB_SIZE={args.vocab}\nCASEOPS=1")
        return 0
    if args.variant == "fineweb":
        try:
            if args.if_missing:
                data, tok = ensure_data(
                    out_root,
                    "fineweb",
                    args.vocab,
                    args.caseops,
                    train_shards=args.train_shards,
                    endpoint=args.endpoint,
                )
            else:
                res = prepare_fineweb(
                    out_root,
                    args.train_shards,
                    vocab_size=args.vocab,
                    endpoint=args.endpoint,
                    caseops=args.caseops,
                )
                data, tok = Path(res["data_path"]), Path(res["tokenizer_path"])
        except RuntimeError as e:
            print(f"[prepare_data] ERROR: {e}", file=sys.stderr)
            return 2
        print(f"DATA_PATH={data}\nTOKENIZER_PATH={tok}\nVOCAB_SIZE={args.vocab}\nCASEOPS={int(args.caseops)}")
        return 0

    corpus = local_corpus()
    kwargs = dict(
        max_mb=args.max_mb,
        cache_dir=args.cache,
        val_fraction=args.val_fraction,
        offline=args.offline,
        apt_packages=[] if args.no_apt else None,
        update_apt=args.apt_update,
    )
    data_dir = out_root / "datasets" / embedded_names(args.vocab, args.caseops)[0]
    if args.if_missing:
        ensure_data(out_root, "embedded", args.vocab, args.caseops, **kwargs)
        manifest = json.loads((data_dir / "manifest.json").read_text())
    else:
        manifest = corpus.prepare_embedded(
            out_root, vocab_size=args.vocab, caseops_transform=args.caseops, **kwargs
        )
    print(corpus.summarize(manifest, out_root))
    print(f"manifest: {data_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
