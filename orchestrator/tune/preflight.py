"""What a sweep's driver checks once, before its first trial: every corpus the trials and the
final evaluation will read (as ``supcon-sweep data check`` does: protocol, counts, each file's
existence and header). A trial then trusts it instead of checking ~1M files again, and an
unusable corpus stops the sweep before any GPU-hour is spent, not after the search."""

from __future__ import annotations

import logging

from trainer.config import ConfigError, TrainerConfig
from trainer.data.check import SplitReport, check_split
from trainer.data.config import DatasetConfig
from trainer.data.corpora import scored_rows
from trainer.data.sampler import epoch_batches

log = logging.getLogger(__name__)


def corpora(cfg: TrainerConfig) -> dict[str, DatasetConfig]:
    """Every split of ``cfg`` by name: ``train``, ``dev``, ``eval/NAME`` (the rows its
    evaluation scores: every subset of an ASVspoof 2021 key)."""
    sets = {"train": cfg.data.train, "dev": cfg.data.dev}
    return sets | {f"eval/{name}": scored_rows(ds) for name, ds in cfg.data.eval.items()}


def _problems(name: str, ds: DatasetConfig, report: SplitReport) -> list[str]:
    where = f"{name} ({ds.kind} at {ds.root})"
    found = [f"{where}: {error}" for error in report.errors]
    if report.unreadable:
        found.append(
            f"{where}: {report.unreadable} file(s) with an unreadable header, e.g. "
            f"{report.unreadable_examples[0]}"
        )
    if report.missing and ds.on_missing == "error":
        found.append(
            f"{where}: {report.missing} of {report.bonafide + report.spoof} audio files are "
            f"missing, e.g. {report.missing_examples[0]} (on_missing: skip scores without them)"
        )
    return found


def check_corpora(cfg: TrainerConfig, progress: bool | None = None) -> dict[str, SplitReport]:
    """Check every split of ``cfg``; ``ConfigError`` lists every unusable one. Missing files of
    a split with ``on_missing: skip`` are counted, not refused."""
    reports, problems = {}, []
    for name, ds in corpora(cfg).items():
        report = check_split(ds, progress=progress)
        reports[name] = report
        problems += _problems(name, ds, report)
    if problems:
        raise ConfigError("unusable corpora; nothing was started:\n  " + "\n  ".join(problems))
    return reports


def describe(reports: dict[str, SplitReport]) -> str:
    """One line per split: its bona fide, spoof and missing counts."""
    lines = []
    for name, r in reports.items():
        skipped = f", {r.missing} missing (skipped)" if r.missing else ""
        lines.append(f"  {name}: {r.bonafide} bona fide, {r.spoof} spoof{skipped}")
    return "\n".join(lines)


def steps_per_epoch(cfg: TrainerConfig, train: SplitReport, world_size: int) -> int:
    """Batches per rank in one stage-1 epoch of ``cfg`` on ``world_size`` ranks."""
    return epoch_batches(cfg.data.sampler, train.bonafide, train.spoof, world_size)
