"""Errors raised for unusable corpora and audio; each names the file or key at fault."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.errors import PicklableError


class CorpusError(PicklableError, ValueError):
    """A corpus cannot be used as configured (layout, protocol, labels, files)."""


class ProtocolFormatError(CorpusError):
    def __init__(self, path: Path, line_no: int, expected: str, line: str) -> None:
        super().__init__(
            f"{path}:{line_no}: expected {expected}, got {len(line.split())} column(s): {line!r}"
        )
        self.path = path
        self.line_no = line_no


class MissingAudioError(CorpusError):
    def __init__(self, protocol: Path, missing: Sequence[Path], total: int) -> None:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        super().__init__(
            f"{len(missing)} of {total} audio file(s) listed in {protocol} are missing: "
            f"{shown}{more}. Fix the corpus root, or set data.on_missing=skip to drop them."
        )
        self.missing = list(missing)


class AudioDecodeError(CorpusError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot decode audio file {path}: {reason}")
        self.path = path
