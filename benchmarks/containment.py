"""What containment costs per run: the clean room's start-up, the syntax-tree guard, the trusted totals.

    python benchmarks/containment.py [--repeats 5]

Prints a table of milliseconds (median of the repeats). The trusted re-score of an artifact costs one
evaluation of the validation slice (plus a torch import): see tests/test_containment.py for its use.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import cleanroom, metric_guard  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    n = ap.parse_args().repeats
    py = sys.executable
    t0 = time.perf_counter()
    iso = cleanroom.probe(py)
    probe_ms = 1000 * (time.perf_counter() - t0)
    script = (ROOT / "trainer" / "train_gpt.py").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        plain = median_ms(lambda: subprocess.run([py, "-c", "pass"], check=True), n)
        room = median_ms(
            lambda: subprocess.run(cleanroom.command(iso, py, [py, "-c", "pass"], Path(tmp)), check=True), n
        )
        torch_plain = median_ms(lambda: subprocess.run([py, "-c", "import torch"], check=True), n)
        torch_room = median_ms(
            lambda: subprocess.run(
                cleanroom.command(iso, py, [py, "-c", "import torch"], Path(tmp)), check=True
            ),
            n,
        )
    guard = median_ms(lambda: metric_guard.violations(script, script), n)
    print(
        f"isolation: {iso.mode} (read-only fs: {iso.read_only_fs}); probe once per process: {probe_ms:.0f} ms"
    )
    print(f"{'step':<44}{'ms':>10}")
    for name, ms in [
        ("python -c pass, plain", plain),
        ("python -c pass, in the clean room", room),
        ("python -c 'import torch', plain", torch_plain),
        ("python -c 'import torch', in the clean room", torch_room),
        ("metric guard on trainer/train_gpt.py", guard),
    ]:
        print(f"{name:<44}{ms:>10.1f}")


if __name__ == "__main__":
    main()
