"""Trusted numbers for a run: what a candidate's results.json says is checked against what code the candidate
did not write measures. The candidate writes its own results.json, so nothing in it is taken on faith.

- Every run (`check_totals`, from the sweep): the scored token and byte totals are re-derived here from the
  validation shards and the tokenizer (challenge.md's formula, this module's own code, the incumbent's knob
  defaults for the slice), and the artifact size from the script we launched and the model file on disk.
  A mismatch marks the run `invalid`.
- Before a change is kept (`verify_before_keep`, one hook in agent/experiment.py): an implausible result
  (below a physical floor, or a gain far beyond any known one) is quarantined; then each run's exported
  artifact is re-scored by tools/rescore_worker.py in the clean room: the incumbent's own protected
  evaluation applied to the candidate's model. For an env-only change the model is built by the incumbent's
  code too; for a script change the candidate's code only turns token ids into logits, in a separate
  process, and the loss, the bytes and the bpb are computed by the trusted side (with a causality probe).
  A reported score that disagrees is marked invalid and the change is never kept.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from memory.knobs import read_knobs
from memory.records import EventRecord, RunRecord, RunResult
from tools import cleanroom
from tools.context import ToolContext

ARTIFACT_CAP_BYTES = 16_000_000
TOLERANCE_BPB = 2e-4  # re-score vs reported: same code and data on the same machine agree far closer
PHYSICAL_FLOOR_BPB = 0.5  # no model of this size compresses natural text anywhere near this (best: ~1.06)
MAX_GAIN_FRACTION = 0.25  # one change that removes a quarter of the incumbent's bpb is not believed
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS, BOS_ID = 20240520, 1, 256, 1
WORKER = Path(__file__).with_name("rescore_worker.py")

_cache: dict[tuple, object] = {}


def read_shard(path: str) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    n = int(header[2]) if header.size == HEADER_INTS else -1
    if (
        header.size != HEADER_INTS
        or header[0] != SHARD_MAGIC
        or header[1] != SHARD_VERSION
        or os.path.getsize(path) != HEADER_INTS * 4 + 2 * n
    ):
        raise ValueError(f"{path}: not a valid shard")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_INTS * 4).astype(np.int64)


CASEOPS_MARKERS = ("\ue001", "\ue002", "\ue003", "\ue004")  # pieces of a case-transformed tokenizer


def validation_tokens(data_path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(val token ids, original UTF-8 bytes per position from the fineweb_val_bytes_*.bin sidecars, or
    None when there are none). A sidecar is paired with its shard by name and must match it token for
    token; a partial set is an error."""
    files = sorted(glob.glob(os.path.join(data_path, "fineweb_val_[0-9]*.bin")))
    if not files:
        raise ValueError(f"no validation shards in {data_path}")
    sides = [
        os.path.join(data_path, "fineweb_val_bytes_" + os.path.basename(f)[len("fineweb_val_") :])
        for f in files
    ]
    present = [os.path.isfile(s) for s in sides]
    if any(present) and not all(present):
        raise ValueError(
            f"byte sidecars for only {sum(present)} of {len(files)} validation shards in {data_path}"
        )
    paths = files + (sides if all(present) else [])
    key = ("val", *((f, os.path.getmtime(f), os.path.getsize(f)) for f in paths))
    if key not in _cache:
        _cache.clear()  # one dataset at a time: the full validation set is large
        tokens = np.concatenate([read_shard(f) for f in files])
        counts = np.concatenate([read_shard(s) for s in sides]) if all(present) else None
        if counts is not None and counts.size != tokens.size:
            raise ValueError(f"{data_path}: {counts.size} sidecar byte counts for {tokens.size} tokens")
        if counts is not None and counts[tokens == BOS_ID].any():  # a document starts with 0 bytes
            raise ValueError(
                f"{data_path}: the byte sidecars are shifted against their shards (bytes at a BOS)"
            )
        _cache[key] = (tokens, counts)
    return _cache[key]  # type: ignore[return-value]


def byte_tables(tokenizer_path: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(base_bytes, has_leading_space, is_boundary) per token id, as challenge.md defines them, and whether
    the tokenizer is a CaseOps one (then only a byte sidecar counts its bytes)."""
    key = ("luts", tokenizer_path, os.path.getmtime(tokenizer_path), vocab_size)
    if key not in _cache:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
        n = max(int(sp.vocab_size()), vocab_size)
        base, space, boundary = np.zeros(n, np.int64), np.zeros(n, bool), np.ones(n, bool)
        for i in range(int(sp.vocab_size())):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            space[i] = piece.startswith("\u2581")
            base[i] = len(piece[1:].encode() if space[i] else piece.encode())
        caseops = any(sp.piece_to_id(m) != sp.unk_id() for m in CASEOPS_MARKERS)
        _cache[key] = (base, space, boundary, caseops)
    return _cache[key]  # type: ignore[return-value]


def knob_values(env: dict[str, str], reference_script: str) -> dict[str, str]:
    """The knobs as the run saw them: its env, else the reference (incumbent) script's defaults."""
    return {k.name: env.get(k.name) or k.default for k in read_knobs(reference_script)}


def expected_totals(env: dict[str, str], reference_script: str) -> tuple[int, int]:
    """(scored target tokens, their bytes) of the validation slice this env asks for: every target of
    the slice (truncated to whole sequences) is scored exactly once, with or without a stride or TTT.
    Bytes come from the val byte sidecar when there is one (the original text's, CaseOps), else from the
    piece table; a CaseOps tokenizer without a sidecar is an error."""
    k = knob_values(env, reference_script)
    tokens, sidecar = validation_tokens(env["DATA_PATH"])
    holdout, cap, seq = int(k["VAL_HOLDOUT_TOKENS"]), int(k["VAL_MAX_TOKENS"]), int(k["TRAIN_SEQ_LEN"])
    end = tokens.size - holdout if holdout > 0 else tokens.size
    if cap > 0:
        end = min(end, cap)
    n_targets = ((end - 1) // seq) * seq
    base, space, boundary, caseops = byte_tables(env["TOKENIZER_PATH"], int(k["VOCAB_SIZE"]))
    if sidecar is not None:
        return n_targets, int(sidecar[1 : n_targets + 1].sum())
    if caseops:
        raise ValueError(
            f"{env['TOKENIZER_PATH']} is a CaseOps tokenizer and {env['DATA_PATH']} has no byte sidecar"
        )
    prev, tgt = tokens[:n_targets], tokens[1 : n_targets + 1]
    nbytes = int(base[tgt].sum() + (space[tgt] & ~boundary[prev]).sum())
    return n_targets, nbytes


def check_totals(
    result: RunResult, env: dict[str, str], script_text: str, reference_script: str, run_dir: Path
) -> RunResult:
    """The result, or a copy marked invalid when its token/byte/artifact totals are not what trusted code
    derives (the bpb formula's inputs and the cap are what a miscounting script would fake)."""
    if result.status != "ok":
        return result
    problems = []
    try:
        tokens, nbytes = expected_totals(env, reference_script)
        if result.val_tokens != tokens or result.val_bytes != nbytes:
            problems.append(
                f"scored {result.val_tokens} tokens / {result.val_bytes} bytes, trusted count "
                f"{tokens} / {nbytes}"
            )
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"the trusted token count failed: {e}")
    artifacts = sorted(run_dir.glob("final_model.*.ptz"))
    code = len(script_text.encode("utf-8"))
    if len(artifacts) != 1:
        problems.append(f"expected one final_model.*.ptz, found {len(artifacts)}")
    else:
        model = artifacts[0].stat().st_size
        if (result.bytes_code, result.bytes_model, result.bytes_total) != (code, model, code + model):
            problems.append(
                f"reported bytes code/model/total {result.bytes_code}/{result.bytes_model}/"
                f"{result.bytes_total}, on disk {code}/{model}/{code + model}"
            )
        elif bool(result.over_cap) != (code + model > ARTIFACT_CAP_BYTES):
            problems.append(f"over_cap={result.over_cap} but the artifact is {code + model:,} bytes")
    if not problems:
        return result
    return result.model_copy(
        update={
            "status": "invalid",
            "error": "invalid: the reported totals disagree with trusted counts: " + "; ".join(problems),
        }
    )


# -- before a change is kept ---------------------------------------------------------------------------------
def implausible(candidate_bpb: float, incumbent_bpb: float | None) -> str | None:
    if not math.isfinite(candidate_bpb) or candidate_bpb < PHYSICAL_FLOOR_BPB:
        return f"val_bpb {candidate_bpb:.4f} is below the physical floor {PHYSICAL_FLOOR_BPB}"
    if incumbent_bpb and incumbent_bpb - candidate_bpb > MAX_GAIN_FRACTION * incumbent_bpb:
        return (
            f"a gain of {incumbent_bpb - candidate_bpb:.4f} bpb ({incumbent_bpb:.4f} -> {candidate_bpb:.4f}) "
            f"is more than {MAX_GAIN_FRACTION:.0%} of the incumbent's score in one change"
        )
    return None


def rescore_run(
    run: RunRecord, candidate_script: str, incumbent_script: str, python: str, timeout_s: float = 900
) -> dict:
    """The trusted score of one run's artifact: {"val_bpb", "tokens", "bytes"} or {"error"}."""
    run_dir = Path(run.run_dir or "")
    artifacts = sorted(run_dir.glob("final_model.*.ptz"))
    try:
        env = json.loads((run_dir / "env.json").read_text())  # written by the sweep, before the run started
    except (OSError, ValueError) as e:
        return {"error": f"no env.json: {e}"}
    if len(artifacts) != 1:
        return {"error": f"expected one exported model in {run_dir}, found {len(artifacts)}"}
    same_code = candidate_script == incumbent_script
    with tempfile.TemporaryDirectory(prefix="rescore-") as tmp:
        room = Path(tmp)
        (room / "incumbent.py").write_text(incumbent_script, encoding="utf-8")
        (room / "candidate.py").write_text(candidate_script, encoding="utf-8")
        os.chmod(room, 0o755)
        names = {k: v for k, v in env.items() if k not in (*cleanroom.HOST_ENV, *cleanroom.ROOM_ENV)}
        names["RUN_DIR"] = str(room / "run")
        (room / "env.json").write_text(json.dumps(names))
        iso = cleanroom.probe(python)
        argv = [
            python,
            str(WORKER),
            "--incumbent",
            str(room / "incumbent.py"),
            "--artifact",
            str(artifacts[0]),
            "--env",
            str(room / "env.json"),
        ]
        if not same_code:  # the candidate's code will turn ids into logits, in a process of its own
            argv += ["--candidate", str(room / "candidate.py")] + (
                ["--nested"] if iso.mode == "userns" else []
            )
        full_env = cleanroom.trainer_env(os.environ, names, room)
        try:  # the result comes back on the worker's stdout, which no process of the candidate holds
            r = subprocess.run(
                cleanroom.command(iso, python, argv, writable=room),
                cwd=room,
                env=full_env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"the trusted re-score took over {timeout_s:.0f} s"}
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            return {"error": f"the trusted re-score failed (exit {r.returncode}): {(r.stderr or '')[-600:]}"}
        return json.loads(lines[-1][len("RESULT ") :])


def verify_before_keep(
    ctx: ToolContext,
    runs: list[RunRecord],
    incumbent_bpb: list[float],
    candidate_script: str,
    incumbent_script: str,
    reason: str,
) -> tuple[bool, str]:
    """(may be kept, reason). Called only for a confirmed change: quarantine, then the trusted re-score."""
    ok = [r for r in runs if r.result.status == "ok" and r.result.val_bpb is not None]
    if not ok:
        return False, reason
    mean_c = sum(r.result.val_bpb for r in ok) / len(ok)  # type: ignore[misc]
    mean_i = sum(incumbent_bpb) / len(incumbent_bpb) if incumbent_bpb else None
    why = implausible(mean_c, mean_i)
    if why:
        ctx.ledger.append(
            EventRecord(
                session=ctx.session,
                event="result_quarantined",
                detail={"runs": [r.run_id for r in ok], "why": why},
            )
        )
        return False, f"quarantined, never kept: {why}"
    for r in ok:
        got = rescore_run(r, candidate_script, incumbent_script, ctx.python)
        reported = float(r.result.val_bpb)  # type: ignore[arg-type]
        if "error" in got:
            why = f"run {r.run_id} could not be re-scored by trusted code: {got['error']}"
        elif (
            abs(got["val_bpb"] - reported) > TOLERANCE_BPB
            or got.get("tokens") != r.result.val_tokens
            or got.get("bytes") != r.result.val_bytes
        ):
            why = (
                f"run {r.run_id} reported val_bpb {reported:.6f} ({r.result.val_tokens} tokens, "
                f"{r.result.val_bytes} bytes); the trusted re-score of its artifact gives {got['val_bpb']:.6f} "
                f"({got.get('tokens')} tokens, {got.get('bytes')} bytes)"
            )
        else:
            ctx.ledger.append(
                EventRecord(
                    session=ctx.session,
                    event="run_rescored",
                    detail={
                        "run_id": r.run_id,
                        "reported": reported,
                        "trusted": got["val_bpb"],
                        "mode": got.get("mode"),
                    },
                )
            )
            continue
        ctx.ledger.append(
            EventRecord(
                session=ctx.session,
                event="run_invalid",
                detail={"run_id": r.run_id, "why": why, "trusted": got},
            )
        )
        return False, f"invalid, never kept: {why}"
    return True, reason


if __name__ == "__main__":  # pragma: no cover - a manual check: python -m tools.rescore RUN_DIR INCUMBENT.py
    print(
        json.dumps(
            expected_totals(
                json.loads((Path(sys.argv[1]) / "env.json").read_text()), Path(sys.argv[2]).read_text()
            )
        )
    )
