"""The append-only ledger: one JSON record per line, fsync'd, never rewritten.

A crash can leave a torn last line. On load it is moved aside into `<ledger>.torn` (with the time it
was found), so that nothing is silently dropped and the ledger stays appendable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar, cast, overload

from pydantic import BaseModel, TypeAdapter, ValidationError

from memory.faults import crash_point, die
from memory.records import AnyRecord, Record, utcnow

_adapter: TypeAdapter = TypeAdapter(Record)
T = TypeVar("T", bound=BaseModel)


class LedgerError(RuntimeError):
    pass


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_path = self.path.with_name(self.path.name + ".torn")
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Set aside a torn (unterminated or unparsable) last line left by a crash mid-write."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                json.loads(data[last_start:])
                return
            except ValueError:
                keep = data[:last_start]
                torn = data[last_start:]
        else:
            last_start = data.rfind(b"\n") + 1
            keep, torn = data[:last_start], data[last_start:]
        with open(self.torn_path, "ab") as f:
            f.write(f"# set aside {utcnow()} from {self.path.name}\n".encode() + torn.rstrip(b"\n") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with open(self.path, "r+b") as f:
            f.truncate(len(keep))
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: BaseModel) -> BaseModel:
        line = record.model_dump_json() + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            if crash_point(f"ledger_write:{getattr(record, 'kind', '')}"):
                f.write(line[: len(line) // 2])
                f.flush()
                die()
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return record

    def __iter__(self) -> Iterator[AnyRecord]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield _adapter.validate_json(line)
                except ValidationError as e:
                    raise LedgerError(
                        f"{self.path}:{lineno}: not a valid record: {e.errors()[0]['msg']}"
                    ) from e

    @overload
    def records(self) -> list[AnyRecord]: ...

    @overload
    def records(self, cls: type[T]) -> list[T]: ...

    def records(self, cls: type[T] | None = None) -> list[AnyRecord] | list[T]:
        """Every record in order, or only those of one class (typed as that class)."""
        items = list(self)
        if cls is None:
            return items
        return [cast(T, r) for r in items if isinstance(r, cls)]

    def torn_lines(self) -> list[str]:
        if not self.torn_path.exists():
            return []
        return [ln for ln in self.torn_path.read_text().splitlines() if ln and not ln.startswith("# ")]
