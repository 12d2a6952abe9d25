"""``supcon-sweep data check``: is a corpus usable, before any GPU hour is spent on it?

Per split: counts by label and attack, missing and unreadable files, sample rates and a duration
summary. A corpus is usable when every split parses, holds both classes and every listed file
exists and opens.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from trainer.data.config import DatasetConfig
from trainer.data.corpora import parse_protocol, splits_of
from trainer.data.errors import CorpusError
from trainer.data.records import Utterance

_EXAMPLES = 5


@dataclass
class SplitReport:
    split: str
    protocol: str = ""
    bonafide: int = 0
    spoof: int = 0
    attacks: dict[str, int] = field(default_factory=dict)
    subsets: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    unreadable: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unreadable_examples: list[str] = field(default_factory=list)
    sample_rates: dict[str, int] = field(default_factory=dict)
    duration_s: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.errors and not self.missing and not self.unreadable

    def to_json(self) -> dict:
        return asdict(self) | {"usable": self.usable}


def _probe(path: Path, decode: bool) -> tuple[str, int, float] | tuple[str, str]:
    """('ok', rate, seconds), ('missing', reason) or ('unreadable', reason) for one file."""
    if not os.path.isfile(path):
        return "missing", str(path)
    try:
        if decode:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            frames = data.shape[0]
        else:
            info = sf.info(str(path))
            rate, frames = info.samplerate, info.frames
    except (sf.LibsndfileError, RuntimeError) as err:
        return "unreadable", f"{path}: {err}"
    if frames == 0:
        return "unreadable", f"{path}: no samples"
    return "ok", rate, frames / rate


def _summarise(report: SplitReport, records: list[Utterance], probes: list[tuple]) -> None:
    report.bonafide = sum(r.is_bonafide for r in records)
    report.spoof = len(records) - report.bonafide
    report.attacks = dict(sorted(Counter(r.attack for r in records if r.attack).items()))
    report.subsets = dict(
        sorted(Counter(r.extra.get("subset") for r in records if r.extra.get("subset")).items())
    )
    rates: Counter[int] = Counter()
    seconds = []
    for probe in probes:
        if probe[0] == "ok":
            rates[probe[1]] += 1
            seconds.append(probe[2])
        else:
            kind = probe[0]
            setattr(report, kind, getattr(report, kind) + 1)
            examples = getattr(report, f"{kind}_examples")
            if len(examples) < _EXAMPLES:
                examples.append(probe[1])
    report.sample_rates = {str(k): v for k, v in sorted(rates.items())}
    if seconds:
        sec = np.asarray(seconds)
        report.duration_s = {
            "min": float(sec.min()),
            "median": float(np.median(sec)),
            "mean": float(sec.mean()),
            "max": float(sec.max()),
            "total_hours": float(sec.sum() / 3600),
        }
    if not records:
        report.errors.append("no rows")
    elif not report.bonafide or not report.spoof:
        report.errors.append(f"single class: {report.bonafide} bonafide, {report.spoof} spoof")


def check_split(
    cfg: DatasetConfig, *, decode: bool = False, workers: int = 8, progress: bool | None = None
) -> SplitReport:
    """Inspect one split; layout and protocol errors are recorded, not raised."""
    report = SplitReport(split=cfg.split)
    try:
        protocol, records = parse_protocol(cfg)
    except CorpusError as err:
        report.errors.append(str(err))
        return report
    report.protocol = str(protocol)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probes = list(
            tqdm(
                pool.map(lambda r: _probe(r.path, decode), records),
                total=len(records),
                desc=f"check {cfg.kind}/{cfg.split}",
                unit="file",
                disable=None if progress is None else not progress,
            )
        )
    _summarise(report, records, probes)
    return report


def check_corpus(
    kind: str,
    root: Path,
    *,
    split: str | None = None,
    subset: str = "eval",
    decode: bool = False,
    progress: bool | None = None,
) -> dict[str, SplitReport]:
    """Reports for ``split`` or, when None, for every split of the corpus."""
    splits = (split,) if split else splits_of(kind, root)
    if not splits:
        raise CorpusError(f"no split found for {kind} under {root}")
    return {
        s: check_split(
            DatasetConfig(kind=kind, root=root, split=s, subset=subset),
            decode=decode,
            progress=progress,
        )
        for s in splits
    }


def format_report(kind: str, root: Path, reports: dict[str, SplitReport]) -> str:
    """A human-readable summary, one block per split."""
    lines = [f"{kind} at {root}"]
    for name, rep in reports.items():
        lines.append(f"\n[{name}] {rep.protocol or '(no protocol read)'}")
        if rep.protocol:
            lines.append(
                f"  trials      {rep.bonafide + rep.spoof}  (bonafide {rep.bonafide}, "
                f"spoof {rep.spoof})"
            )
            if rep.attacks:
                lines.append(
                    "  attacks     " + "  ".join(f"{a}:{n}" for a, n in rep.attacks.items())
                )
            if rep.subsets:
                lines.append(
                    "  subsets     " + "  ".join(f"{s}:{n}" for s, n in rep.subsets.items())
                )
            lines.append(f"  files       missing {rep.missing}, unreadable {rep.unreadable}")
            lines += [f"    missing    {p}" for p in rep.missing_examples]
            lines += [f"    unreadable {p}" for p in rep.unreadable_examples]
            rates = ", ".join(f"{r} Hz: {n}" for r, n in rep.sample_rates.items())
            lines.append(f"  sample rate {rates or '-'}")
            if rep.duration_s:
                d = rep.duration_s
                lines.append(
                    f"  duration    min {d['min']:.2f} s, median {d['median']:.2f} s, "
                    f"mean {d['mean']:.2f} s, max {d['max']:.2f} s, "
                    f"total {d['total_hours']:.2f} h"
                )
        lines += [f"  error       {e}" for e in rep.errors]
        lines.append(f"  status      {'OK' if rep.usable else 'NOT USABLE'}")
    usable = all(r.usable for r in reports.values())
    lines.append(f"\n{'usable' if usable else 'NOT USABLE'}: {len(reports)} split(s) checked")
    return "\n".join(lines)
