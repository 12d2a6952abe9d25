"""Readers for the official layouts of ASVspoof 2019 LA, ASVspoof 2021 LA/DF, In-the-Wild, and a
generic CSV manifest. Each returns :class:`~trainer.data.records.Utterance` records; the column
layouts are those of ``shared/reference/METHOD.md``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from trainer.data.config import SPLITS, DatasetConfig
from trainer.data.errors import CorpusError, MissingAudioError, ProtocolFormatError
from trainer.data.records import Label, Utterance

log = logging.getLogger(__name__)

_2019_PROTOCOLS = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}
# ASVspoof 2021 keys: the label is column 5 (column 4 in 2019), the subset column 7.
_2021_COLUMNS = {
    "LA": ("speaker", "trial", "codec", "transmission", "attack", "label", "trim", "subset"),
    "DF": (
        "speaker",
        "trial",
        "compression",
        "source",
        "attack",
        "label",
        "trim",
        "subset",
        "vocoder",
        "task",
        "team",
        "gender_pair",
        "language",
    ),
}
_2021_SUBSETS = ("eval", "progress", "hidden")


@dataclass(frozen=True)
class CorpusSplit:
    """The usable trials of one split, and the missing files dropped under ``on_missing=skip``."""

    config: DatasetConfig
    protocol: Path
    utterances: tuple[Utterance, ...]
    skipped: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.utterances)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise CorpusError(f"{what} not found: {path} (expected a directory)")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CorpusError(f"{what} not found: {path}")
    return path


def _rows(path: Path, n_columns: int, expected: str) -> Iterator[tuple[int, list[str]]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != n_columns:
                raise ProtocolFormatError(path, line_no, expected, line.rstrip("\n"))
            yield line_no, fields


def _label(value: str, path: Path, line_no: int, accepted: dict[str, Label]) -> Label:
    try:
        return accepted[value]
    except KeyError:
        raise CorpusError(
            f"{path}:{line_no}: unknown label {value!r}; expected one of {sorted(accepted)}"
        ) from None


_ASVSPOOF_LABELS: dict[str, Label] = {"bonafide": "bonafide", "spoof": "spoof"}


def _attack(value: str, label: Label) -> str | None:
    return None if label == "bonafide" or value in ("-", "bonafide") else value


def _asvspoof2019_root(root: Path) -> Path:
    """Accept the ``LA`` folder or the folder above it."""
    if not (root / "ASVspoof2019_LA_cm_protocols").is_dir() and (root / "LA").is_dir():
        return root / "LA"
    return root


def read_asvspoof2019(cfg: DatasetConfig) -> tuple[Path, list[Utterance]]:
    root = _asvspoof2019_root(_require_dir(cfg.root, "ASVspoof 2019 LA root"))
    protocol = _require_file(
        root / "ASVspoof2019_LA_cm_protocols" / _2019_PROTOCOLS[cfg.split],
        f"ASVspoof 2019 LA {cfg.split} protocol",
    )
    audio_dir = root / f"ASVspoof2019_LA_{cfg.split}" / "flac"
    records = []
    for line_no, (speaker, utt, _, attack, key) in _rows(
        protocol, 5, "5 columns 'SPEAKER UTT_ID - ATTACK KEY'"
    ):
        label = _label(key, protocol, line_no, _ASVSPOOF_LABELS)
        records.append(
            Utterance(
                utt_id=utt,
                path=audio_dir / f"{utt}.flac",
                label=label,
                speaker=speaker,
                attack=_attack(attack, label),
                corpus=cfg.kind,
                split=cfg.split,
                key=(speaker, "-", attack, key),
            )
        )
    return protocol, records


def _read_asvspoof2021(cfg: DatasetConfig, track: str) -> tuple[Path, list[Utterance]]:
    root = _require_dir(cfg.root, f"ASVspoof 2021 {track} root")
    protocol = _require_file(
        root / "keys" / track / "CM" / "trial_metadata.txt", f"ASVspoof 2021 {track} key file"
    )
    audio_dir = root / f"ASVspoof2021_{track}_eval" / "flac"
    columns = _2021_COLUMNS[track]
    expected = f"{len(columns)} columns '{' '.join(columns)}'"
    records = []
    for line_no, fields in _rows(protocol, len(columns), expected):
        row = dict(zip(columns, fields, strict=True))
        subset = "hidden" if row["subset"].startswith("hidden") else row["subset"]
        if subset not in _2021_SUBSETS:
            raise CorpusError(
                f"{protocol}:{line_no}: unknown subset {row['subset']!r} in column 7; "
                f"expected one of {_2021_SUBSETS}"
            )
        if cfg.subset != "all" and subset != cfg.subset:
            continue
        label = _label(row["label"], protocol, line_no, _ASVSPOOF_LABELS)
        extra = {k: v for k, v in row.items() if k not in ("speaker", "trial", "attack", "label")}
        extra["subset"] = subset
        records.append(
            Utterance(
                utt_id=row["trial"],
                path=audio_dir / f"{row['trial']}.flac",
                label=label,
                speaker=row["speaker"],
                attack=_attack(row["attack"], label),
                corpus=cfg.kind,
                split=cfg.split,
                key=tuple(v for k, v in row.items() if k != "trial"),
                extra=MappingProxyType(extra),
            )
        )
    return protocol, records


def read_asvspoof2021_la(cfg: DatasetConfig) -> tuple[Path, list[Utterance]]:
    return _read_asvspoof2021(cfg, "LA")


def read_asvspoof2021_df(cfg: DatasetConfig) -> tuple[Path, list[Utterance]]:
    return _read_asvspoof2021(cfg, "DF")


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [c for c in required if c not in header]
        if absent:
            raise CorpusError(
                f"{path}:1: header {header} lacks column(s) {absent}; "
                f"expected a header row with {list(required)}"
            )
        for row in reader:
            if None in row or any(row[c] is None for c in header):
                raise CorpusError(
                    f"{path}:{reader.line_num}: expected {len(header)} comma-separated fields "
                    f"matching the header {header}"
                )
            if any(v.strip() for v in row.values()):
                yield reader.line_num, row


_ITW_LABELS: dict[str, Label] = {"bona-fide": "bonafide", "spoof": "spoof"}


def read_itw(cfg: DatasetConfig) -> tuple[Path, list[Utterance]]:
    root = _require_dir(cfg.root, "In-the-Wild root")
    if root.name != "release_in_the_wild" and (root / "release_in_the_wild").is_dir():
        root = root / "release_in_the_wild"
    protocol = _require_file(root / "meta.csv", "In-the-Wild meta.csv")
    records = []
    for line_no, row in _csv_rows(protocol, ("file", "speaker", "label")):
        label = _label(row["label"], protocol, line_no, _ITW_LABELS)
        records.append(
            Utterance(
                utt_id=row["file"],
                path=root / row["file"],
                label=label,
                speaker=row["speaker"],
                corpus=cfg.kind,
                split=cfg.split,
                key=(row["speaker"], row["label"]),
            )
        )
    return protocol, records


_MANIFEST_LABELS: dict[str, Label] = {
    "bonafide": "bonafide",
    "bona-fide": "bonafide",
    "bona_fide": "bonafide",
    "spoof": "spoof",
}


def read_manifest(cfg: DatasetConfig) -> tuple[Path, list[Utterance]]:
    root = _require_dir(cfg.root, "manifest root")
    protocol = _require_file(root / f"{cfg.split}.csv", f"manifest for split {cfg.split!r}")
    records = []
    for line_no, row in _csv_rows(protocol, ("path", "label")):
        label = _label(row["label"].strip().lower(), protocol, line_no, _MANIFEST_LABELS)
        rel = Path(row["path"].strip())
        attack = (row.get("attack") or "").strip() or None
        records.append(
            Utterance(
                utt_id=row.get("utt_id") or rel.with_suffix("").as_posix(),
                path=rel if rel.is_absolute() else root / rel,
                label=label,
                speaker=(row.get("speaker") or "").strip() or None,
                attack=None if label == "bonafide" else attack,
                corpus=cfg.kind,
                split=cfg.split,
                key=(label, attack or "-"),
            )
        )
    return protocol, records


READERS: dict[str, Callable[[DatasetConfig], tuple[Path, list[Utterance]]]] = {
    "asvspoof2019": read_asvspoof2019,
    "asvspoof2021-la": read_asvspoof2021_la,
    "asvspoof2021-df": read_asvspoof2021_df,
    "itw": read_itw,
    "manifest": read_manifest,
}


def splits_of(kind: str, root: Path) -> tuple[str, ...]:
    """The splits a corpus kind offers; for manifests, the ``*.csv`` files under ``root``."""
    if kind == "manifest":
        return tuple(sorted(p.stem for p in _require_dir(root, "manifest root").glob("*.csv")))
    return SPLITS[kind]


def has_subsets(cfg: DatasetConfig) -> bool:
    """Whether ``cfg``'s key divides its trials into subsets (ASVspoof 2021)."""
    return cfg.kind.startswith("asvspoof2021")


def scored_rows(cfg: DatasetConfig) -> DatasetConfig:
    """The rows an evaluation of ``cfg`` scores: every subset of an ASVspoof 2021 key (its EER
    stays over ``cfg.subset``; see :mod:`trainer.breakdown`), any other set as it is."""
    return cfg.model_copy(update={"subset": "all"}) if has_subsets(cfg) else cfg


def parse_protocol(cfg: DatasetConfig) -> tuple[Path, list[Utterance]]:
    """Read the layout and protocol of ``cfg``; no audio file is touched."""
    protocol, records = READERS[cfg.kind](cfg)
    seen: set[str] = set()
    for rec in records:
        if rec.utt_id in seen:
            raise CorpusError(f"{protocol}: utterance id {rec.utt_id!r} is listed twice")
        seen.add(rec.utt_id)
    return protocol, records


def read_corpus(
    cfg: DatasetConfig,
    *,
    require_both_classes: bool = True,
    check_files: bool = True,
    scoring: bool = False,
) -> CorpusSplit:
    """Parse a split and check that its audio files exist. ``scoring``: the rows an evaluation
    scores (:func:`scored_rows`: every subset of an ASVspoof 2021 key), the split's config kept.

    Missing files raise :class:`MissingAudioError` (count plus the first few paths), or with
    ``on_missing=skip`` are dropped and counted in ``CorpusSplit.skipped`` (and logged). A split
    with no rows, or (by default) with a single class, raises :class:`CorpusError`.
    ``check_files=False`` trusts a check already made (a sweep's driver checks every corpus
    once, so its trials do not stat hundreds of thousands of files again); a split with
    ``on_missing=skip`` is still looked at, since its trials must drop the same files.
    """
    protocol, records = parse_protocol(scored_rows(cfg) if scoring else cfg)
    look = check_files or cfg.on_missing == "skip"
    missing = [r.path for r in records if look and not os.path.isfile(r.path)]
    if missing and cfg.on_missing == "error":
        raise MissingAudioError(protocol, missing, len(records))
    if missing:
        gone = set(missing)
        records = [r for r in records if r.path not in gone]
        log.warning(
            "%s/%s: skipped %d of %d trials whose audio is missing (data.on_missing=skip)",
            cfg.kind,
            cfg.split,
            len(missing),
            len(records) + len(missing),
        )
    subset = "all" if scoring else cfg.subset
    where = f"{cfg.kind} split {cfg.split!r}" + (f" subset {subset!r}" if has_subsets(cfg) else "")
    if not records:
        raise CorpusError(f"{where} has no usable rows ({protocol})")
    labels = {r.label for r in records}
    if require_both_classes and len(labels) < 2:
        raise CorpusError(
            f"{where} has only {labels.pop()} rows ({protocol}); "
            "training and EER need both bonafide and spoof"
        )
    return CorpusSplit(cfg, protocol, tuple(records), tuple(missing))
