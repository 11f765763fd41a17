"""Where things live in a workspace (a git checkout of this project), named once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCRIPT_RELPATH = "trainer/train_gpt.py"  # the one file the agent mutates


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        return cls(Path(root).resolve())

    @property
    def script(self) -> Path:
        return self.root / SCRIPT_RELPATH

    @property
    def battle_plan(self) -> Path:
        return self.root / "battle_plan.md"

    @property
    def tiers_file(self) -> Path:
        return self.root / "tiers.toml"

    @property
    def state_dir(self) -> Path:  # ignored by git: ledger, runs, lock, frontier snapshots
        return self.root / ".golf"

    @property
    def ledger(self) -> Path:
        return self.state_dir / "ledger.jsonl"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def lock(self) -> Path:
        return self.state_dir / "session.lock"

    @property
    def frontier_dir(self) -> Path:
        return self.state_dir / "frontier"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def embedded_data(self, vocab_size: int = 1024, caseops: bool = False) -> tuple[Path, Path]:
        """(DATA_PATH, TOKENIZER_PATH) of the embedded corpus at one vocabulary size (CaseOps: the
        case-transformed variant with its val byte sidecar), as trainer/prepare_data.py names them
        (`--vocab V [--caseops]`)."""
        suffix = "_caseops" if caseops else ""
        return (
            self.data_dir / "datasets" / f"embedded_sp{vocab_size}{suffix}",
            self.data_dir / "tokenizers" / f"embedded_{vocab_size}_bpe{suffix}.model",
        )
