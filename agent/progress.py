"""What a person watching the session sees: a rich status line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, rich: bool = False, stream: Any = None):
        self.stream = stream or sys.stdout
        self.console: Any = None
        self.status: Any = None
        if rich:
            from rich.console import Console

            self.console = Console(file=self.stream)
        self.t0 = time.time()

    @classmethod
    def auto(cls) -> Progress:
        return cls(rich=sys.stdout.isatty())

    @classmethod
    def quiet(cls) -> Progress:
        import io

        return cls(stream=io.StringIO())

    def line(self, msg: str) -> None:
        stamp = f"[{time.time() - self.t0:7.1f}s]"
        if self.console is not None:
            self.console.print(f"[dim]{stamp}[/dim] {msg}", highlight=False)
        else:
            print(f"{stamp} {msg}", file=self.stream, flush=True)

    def run_started(self, run_id: str) -> None:
        if self.console is not None:
            if self.status is None:
                self.status = self.console.status(f"training {run_id}")
                self.status.start()
            else:
                self.status.update(f"training {run_id}")
        else:
            self.line(f"run {run_id} ...")

    def run_finished(self, run_id: str, status: str, val_bpb: float | None, seconds: float) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        bpb = f"{val_bpb:.4f}" if val_bpb is not None else "-"
        self.line(f"run {run_id}: {status} val_bpb {bpb} ({seconds:.0f} s)")

    def table(self, title: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.console is not None:
            from rich.table import Table

            t = Table(title=title)
            for k in rows[0]:
                t.add_column(str(k))
            for r in rows:
                t.add_row(*[str(v) for v in r.values()])
            self.console.print(t)
        else:
            self.line(title)
            for r in rows:
                self.line("  " + "  ".join(f"{k}={v}" for k, v in r.items()))
