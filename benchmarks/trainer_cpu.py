"""CPU benchmark of trainer/train_gpt.py: tokens/s and val_bpb after a fixed training time, for the
baseline at the cpu-smoke shape, a stack of techniques and the `frontier` preset (presets.toml, at the
tier's shape), side by side in one run.

Each configuration runs as its own `python trainer/train_gpt.py` process, exactly as a sweep runs it, with
the cpu-smoke tier's environment (tiers.toml) and MAX_WALLCLOCK_SECONDS set to --seconds.

    python benchmarks/trainer_cpu.py                 # 60 s per run, 1 seed
    python benchmarks/trainer_cpu.py --seconds 30 --seeds 2 --json /tmp/cpu_bench.json

Data: --data, else data/datasets/embedded_sp1024 (trainer/prepare_data.py), else the challenge layout
data/datasets/fineweb10B_sp1024, else a small dataset built from standard-library docstrings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "trainer" / "train_gpt.py"

# Training-time techniques that the records stacked; EMA is left out (harmful under ~5k steps, PR #393).
STACK = dict(
    VALUE_RESIDUAL=1,
    GATED_ATTENTION=1,
    ROPE_DIMS=16,
    LN_SCALE=1,
    BIGRAM_HASH_BUCKETS=4096,
    BIGRAM_DIM=64,
    SMEAR_GATE=1,
    XSA_LAST_N=2,
    MLP_ACT_SLOPE=0.5,
    QAT_BITS=6,
    COMPRESSOR="lzma",
)
CONFIGS = {
    "baseline": {},
    "stack": STACK,
    "stack+slide64": dict(STACK, EVAL_STRIDE=64),
    "frontier": {},  # presets.toml's frontier at the tier's shape: see frontier_env
}
# The record's depth plan in proportion on the tier's layers (11 layers: loop 3-5, parallel from 8).
FRONTIER_AT_TIER = dict(LOOP_START=1, LOOP_END=2, PARALLEL_START=3)


def frontier_env(tier: dict[str, str]) -> dict[str, str]:
    """The frontier preset less what the tier sets (its shape and budget) and less VOCAB_SIZE and CASEOPS
    (the data decides: the benchmark's data is plain sp1024), with the record's depth plan scaled to the
    tier's layers."""
    env = tomllib.loads((ROOT / "presets.toml").read_text())["preset"]["frontier"]["env"]
    env = {k: str(v) for k, v in env.items() if k not in tier and k not in ("VOCAB_SIZE", "CASEOPS")}
    return env | ({k: str(v) for k, v in FRONTIER_AT_TIER.items()} if tier.get("NUM_LAYERS") == "4" else {})


def find_data(explicit: str | None) -> tuple[Path, Path, str]:
    if explicit:
        d = Path(explicit)
        toks = sorted((d.parent.parent / "tokenizers").glob("*.model"))
        return d, toks[0], str(d)
    layouts = (
        ("embedded_sp1024", "embedded_1024_bpe.model"),
        ("fineweb10B_sp1024", "fineweb_1024_bpe.model"),
    )
    for name, tok in layouts:
        d, t = ROOT / "data" / "datasets" / name, ROOT / "data" / "tokenizers" / tok
        if list(d.glob("fineweb_val_*.bin")) and t.exists():
            return d, t, f"data/datasets/{name}"
    sys.path.insert(0, str(ROOT))
    from testing.trainer_fixtures import build_tiny_dataset

    tiny = build_tiny_dataset()
    return tiny.data_path, tiny.tokenizer_path, "stdlib docstrings (testing/trainer_fixtures.py)"


def tier_env(tier: str) -> dict[str, str]:
    raw = tomllib.loads((ROOT / "tiers.toml").read_text())["tier"][tier]["env"]
    return {k: str(v) for k, v in raw.items()}


def run_one(env: dict[str, str], run_dir: Path, timeout: float) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full.update(env, RUN_DIR=str(run_dir), RUN_ID=run_dir.name)
    t0 = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, str(TRAINER)], env=full, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:.0f} s", "wall_s": time.time() - t0}
    wall = time.time() - t0
    try:
        result = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        result = {"status": "crashed", "error": proc.stderr[-500:]}
    metrics = []
    if (run_dir / "metrics.jsonl").exists():
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    result["wall_s"] = wall
    result["tokens_per_s"] = (result.get("train_tokens") or 0) / max(result.get("train_time_s") or 1e-9, 1e-9)
    result["last_train_loss"] = metrics[-1]["train_loss"] if metrics else None
    return result


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="training wallclock per run")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--tier", default="cpu-smoke", help="tiers.toml tier whose env gives the shape")
    p.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS)
    )
    p.add_argument("--data", default=None, help="DATA_PATH (tokenizer: ../../tokenizers/*.model)")
    p.add_argument("--json", default=None, help="also write all results here")
    a = p.parse_args(argv)

    data, tok, data_name = find_data(a.data)
    base = tier_env(a.tier) | {
        "MAX_WALLCLOCK_SECONDS": str(a.seconds),
        "ITERATIONS": "1000000",
        "DATA_PATH": str(data),
        "TOKENIZER_PATH": str(tok),
    }
    print(
        f"trainer CPU benchmark: tier {a.tier} shape, {a.seconds:.0f} s training per run, "
        f"{a.seeds} seed(s), "
        f"data {data_name}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={base.get('OMP_NUM_THREADS', 'default')}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="pgolf_cpu_bench_") as tmp:
        for name in a.configs.split(","):
            for seed in range(1, a.seeds + 1):
                extra = frontier_env(tier_env(a.tier)) if name == "frontier" else CONFIGS[name]
                env = base | {k: str(v) for k, v in extra.items()} | {"SEED": str(seed)}
                r = run_one(env, Path(tmp) / f"{name}-s{seed}", timeout=a.seconds * 4 + 300)
                r["config"], r["seed"] = name, seed
                rows.append(r)
                print(
                    f"  {name} seed {seed}: {r['status']} val_bpb {fmt(r.get('val_bpb'), '.4f')} "
                    f"steps {r.get('steps')} wall {r['wall_s']:.1f}s",
                    flush=True,
                )

    header = (
        f"{'config':<15}{'steps':>7}{'tok/s':>9}{'train_loss':>12}{'bpb_pre':>9}{'val_bpb':>9}"
        f"{'holdout':>9}{'bytes':>10}{'eval_s':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for name in a.configs.split(","):
        rs = [r for r in rows if r["config"] == name and r.get("status") == "ok"]
        if not rs:
            print(f"{name:<15} failed: {[r.get('error') for r in rows if r['config'] == name][:1]}")
            continue

        def mean(key, rs=rs):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.fmean(vals) if vals else None

        spread = f" ±{statistics.stdev([r['val_bpb'] for r in rs]):.4f}" if len(rs) > 1 else ""
        print(
            f"{name:<15}{mean('steps'):>7.0f}{mean('tokens_per_s'):>9.0f}"
            f"{fmt(mean('last_train_loss'), '.4f'):>12}"
            f"{fmt(mean('val_bpb_prequant'), '.4f'):>9}{fmt(mean('val_bpb'), '.4f'):>9}"
            f"{fmt(mean('holdout_bpb'), '.4f'):>9}{mean('bytes_total'):>10.0f}"
            f"{mean('eval_time_s'):>8.1f}{spread}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
