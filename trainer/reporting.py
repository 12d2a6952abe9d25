"""How the trainer reports: a small protocol, so Ray (or anything else) can wrap it.

The trainer never calls ``ray.*``. Every rank calls :meth:`Reporter.report` once per stage-1 epoch
and :meth:`Reporter.final` once at the end, at the same points on every rank (Ray Train's report
is a barrier); only rank 0 passes a checkpoint directory and artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol


class Reporter(Protocol):
    def report(
        self, metrics: Mapping[str, float], *, epoch: int, step: int, checkpoint: Path | None
    ) -> None:
        """Per-epoch metrics (keys ``stage/split/name``) and, on rank 0, the checkpoint folder."""

    def final(self, metrics: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        """Final metrics of the trial and, on rank 0, its artifact files."""


class JsonlReporter:
    """The local reporter: appends each epoch's metrics to ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, out_dir: Path, *, main: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.main = main

    def report(
        self, metrics: Mapping[str, float], *, epoch: int, step: int, checkpoint: Path | None
    ) -> None:
        if self.main:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"epoch": epoch, "step": step, **metrics}) + "\n")

    def final(self, metrics: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        return None
