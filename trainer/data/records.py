"""The one record type every corpus reader returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

Label = Literal["bonafide", "spoof"]


@dataclass(frozen=True, slots=True)
class Utterance:
    """One trial of a corpus.

    ``attack`` is the protocol's attack id (``A01``...) for spoofs and ``None`` for bona fide
    or where the corpus has no attack labels (In-the-Wild). ``key`` holds the protocol's own
    columns for this trial, in protocol order and without the utterance id, so score files can
    carry them verbatim. ``extra`` holds corpus-specific fields by name (codec, subset, ...).
    """

    utt_id: str
    path: Path
    label: Label
    speaker: str | None = None
    attack: str | None = None
    corpus: str = ""
    split: str = ""
    key: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_bonafide(self) -> bool:
        return self.label == "bonafide"

    @property
    def target(self) -> int:
        """1 for bona fide (the positive class of stage 2 and of EER), 0 for spoof."""
        return 1 if self.label == "bonafide" else 0
