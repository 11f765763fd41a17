"""Judging a final: the challenge's limits checked on what the pod measured, the record rule against
the frontier and against the incumbent's own finals, and a pre-check that refuses, before any money
is spent, a script that imports what the pod will not have."""

from __future__ import annotations

import ast
import hashlib
import statistics
import sys
from typing import Any

from agent.finals.config import FinalConfig
from agent.finals.pod_run import SeedOutcome
from memory.ledger import Ledger
from memory.records import FinalRecord

ARTIFACT_CAP_BYTES = 16_000_000


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def missing_imports(script: str, available: list[str]) -> list[str]:
    """Top-level modules the script imports unconditionally that are neither the standard library nor
    on the pod. An import inside `try:` (with an ImportError fallback) is the script's own business."""
    try:
        tree = ast.parse(script)
    except SyntaxError as e:
        return [f"<the script does not parse: {e.msg} at line {e.lineno}>"]
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    have = set(sys.stdlib_module_names) | set(available) | {"__future__"}
    missing: list[str] = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for n in names:
            top = n.split(".")[0]
            if top not in have and top not in missing:
                missing.append(top)
    return missing


def compliance(outcomes: list[SeedOutcome], script: str, cfg: FinalConfig) -> dict[str, Any]:
    """The challenge's limits, checked on what the pod measured and wrote, per seed and overall."""
    code_bytes = len(script.encode())
    per_seed = {}
    for o in outcomes:
        r = o.result
        checks = {
            "status_ok": r.status == "ok",
            "bytes_total_ok": r.bytes_total is not None and r.bytes_total <= ARTIFACT_CAP_BYTES,
            "train_time_ok": r.train_time_s is not None and r.train_time_s <= cfg.train_limit_s,
            "eval_time_ok": r.eval_time_s is not None and r.eval_time_s <= cfg.eval_limit_s,
            "code_bytes_match": r.bytes_code in (None, code_bytes),
            "script_sha_match": r.script_sha256 in (None, sha256(script)),
        }
        per_seed[str(o.seed)] = {
            **checks,
            "bytes_total": r.bytes_total,
            "train_time_s": r.train_time_s,
            "eval_time_s": r.eval_time_s,
            "job_wall_s": o.job_wall_s,
            "passed": all(checks.values()),
        }
    return {
        "cap_bytes": ARTIFACT_CAP_BYTES,
        "train_limit_s": cfg.train_limit_s,
        "eval_limit_s": cfg.eval_limit_s,
        "bytes_code": code_bytes,
        "seeds": per_seed,
        "passed": bool(per_seed) and all(s["passed"] for s in per_seed.values()),
    }


def bytes_per_token(outcomes: list[SeedOutcome]) -> float | None:
    ratios = [
        o.result.val_bytes / o.result.val_tokens
        for o in outcomes
        if o.result.val_bytes and o.result.val_tokens
    ]
    return statistics.fmean(ratios) if ratios else None


def incumbent_finals(ledger: Ledger, exclude: str | None = None) -> FinalRecord | None:
    """The incumbent's own final: the latest record-claiming final, else the latest ok one."""
    finals = [
        f
        for f in ledger.records(FinalRecord)
        if f.final_id != exclude and f.status == "ok" and len(f.val_bpbs) >= 2
    ]
    claims = [f for f in finals if f.record_claim]
    picked = claims or finals
    return picked[-1] if picked else None


def judge_final(
    vals: list[float],
    frontier: list[float] | float | None,
    *,
    frontier_std: float | None,
    bytes_per_token: float | None,
    incumbent: FinalRecord | None,
    cfg: FinalConfig,
) -> dict[str, Any]:
    from agent.judge import judge_record

    out: dict[str, Any] = {"frontier": frontier}
    if len(vals) >= 2 and frontier is not None:
        v = judge_record(
            vals,
            frontier,
            nats=cfg.record_nats,
            bytes_per_token=bytes_per_token,
            p_threshold=cfg.record_p,
            frontier_std=frontier_std,
        )
        out["record"] = {
            "outcome": v.outcome,
            "delta": v.delta,
            "ci_low": v.ci_low,
            "ci_high": v.ci_high,
            "p_value": v.p_value,
            "margin": v.margin,
            "reason": v.reason,
        }
    if len(vals) >= 2 and incumbent is not None:
        v = judge_record(
            vals, incumbent.val_bpbs, nats=0.0, bytes_per_token=bytes_per_token, p_threshold=cfg.record_p
        )
        out["vs_incumbent"] = {
            "final_id": incumbent.final_id,
            "outcome": v.outcome,
            "delta": v.delta,
            "ci_low": v.ci_low,
            "ci_high": v.ci_high,
            "p_value": v.p_value,
            "reason": v.reason,
        }
    return out
