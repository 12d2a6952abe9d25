"""How the trainer reports: a small protocol, so Ray (or anything else) can wrap it.

The trainer never calls ``ray.*``. Every rank calls :meth:`Reporter.report` once per stage-1 epoch
and :meth:`Reporter.final` once at the end, at the same points on every rank (Ray Train's report
is a barrier); only rank 0 passes a checkpoint directory and artifacts. ``report`` answers
whether to go on: an orchestrator that stopped the trial (a scheduler's early stop) says False,
the same on every rank, and the trial ends after that epoch, without stage 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

# The keys of the per-epoch reports (stage 1) and those only the final report has.
EPOCH_METRICS = (
    "encoder/dev/eer",
    "encoder/dev/loss",
    "encoder/train/loss",
    "encoder/train/lr_encoder",
    "encoder/train/lr_head",
    "encoder/train/queue_fill",
)
FINAL_METRICS = (
    "classifier/dev/eer",
    "classifier/best_epoch",
    "encoder/best_epoch",
    "encoder/epochs",
    "time/setup_s",
    "time/trial_s",
)


class Reporter(Protocol):
    def report(
        self,
        metrics: Mapping[str, float],
        *,
        epoch: int,
        step: int,
        checkpoint: Path | None,
        history: Sequence[Mapping[str, float]] = (),
    ) -> bool:
        """Per-epoch metrics (keys ``stage/split/name``, :data:`EPOCH_METRICS`), on rank 0 the
        checkpoint folder, and ``history``: every epoch's metrics so far, this one included,
        across resumes (a best-so-far needs them). Returns whether to train on."""

    def final(
        self,
        metrics: Mapping[str, float],
        artifacts: Sequence[Path],
        history: Sequence[Mapping[str, float]] = (),
    ) -> None:
        """Final metrics of the trial (:data:`FINAL_METRICS` and the best epoch's dev metrics),
        on rank 0 its artifact files, and every stage-1 epoch's metrics."""


class JsonlReporter:
    """The local reporter: appends each epoch's metrics to ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, out_dir: Path, *, main: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.main = main

    def report(
        self,
        metrics: Mapping[str, float],
        *,
        epoch: int,
        step: int,
        checkpoint: Path | None,
        history: Sequence[Mapping[str, float]] = (),
    ) -> bool:
        if self.main:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"epoch": epoch, "step": step, **metrics}) + "\n")
        return True

    def final(
        self,
        metrics: Mapping[str, float],
        artifacts: Sequence[Path],
        history: Sequence[Mapping[str, float]] = (),
    ) -> None:
        return None
