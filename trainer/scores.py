"""Score files: one TAB-separated row per utterance, written atomically and read back exactly.

The contract: :func:`write_scores` writes ``utt_id score label attack key`` rows in protocol
order with scores in ``repr`` form, so :func:`read_scores` gives back every score bit-identical
(rounding would create ties, which raise the official EER, see :mod:`trainer.metrics`). A file
is replaced whole or not at all, never appended to; a reader rejects anything else, naming the
line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from trainer.data.records import Utterance
from trainer.metrics import Scores, aligned_scores

SCORE_HEADER = ("utt_id", "score", "label", "attack", "key")


def _score_row(utt: Utterance, score: float) -> str:
    fields = (utt.utt_id, repr(float(score)), utt.label, utt.attack or "-", " ".join(utt.key))
    if any("\t" in f for f in fields):
        raise ValueError(f"{utt.utt_id!r}: a field contains a tab, which separates columns")
    return "\t".join(fields) + "\n"


def write_scores(
    path: str | os.PathLike[str], utterances: Sequence[Utterance], scores: Scores
) -> Path:
    """Write one TAB-separated row per utterance, in protocol order, and return the path.

    Columns: ``utt_id score label attack key``; ``attack`` is ``-`` when absent and ``key`` is the
    protocol's own columns joined by single spaces (In-the-Wild speaker names contain spaces, hence
    tabs between fields). Scores are written with ``repr`` and read back bit-identical. The file is
    written fresh to a temporary file beside ``path`` and renamed over it only after its row count
    has been checked against ``len(utterances)``, so a rerun never appends and a failure leaves no
    partial file (an existing file at ``path`` is then left as it was).
    """
    path = Path(path)
    ids = [u.utt_id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{len(ids) - len(set(ids))} duplicate utterance ids; refusing to write")
    rows = zip(utterances, aligned_scores(utterances, scores).tolist(), strict=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write("\t".join(SCORE_HEADER) + "\n")
            for utt, score in rows:
                handle.write(_score_row(utt, score))
            handle.flush()
            os.fsync(handle.fileno())
        with tmp.open(encoding="utf-8", newline="\n") as handle:
            n_rows = sum(1 for _ in handle) - 1
        if n_rows != len(utterances):
            raise ValueError(
                f"{path}: wrote {n_rows} rows for {len(utterances)} utterances "
                "(a field contains a line break?); file not written"
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_scores(path: str | os.PathLike[str]) -> dict[str, float]:
    """utt_id -> score from a file written by :func:`write_scores`, in file order.

    Rejects a wrong header, rows without five tab-separated fields, unparsable scores and repeated
    ids (the symptom of a score file appended to by a rerun), naming the line.
    """
    path = Path(path)
    out: dict[str, float] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="\n") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != SCORE_HEADER:
            raise ValueError(f"{path}:1: header {header} is not {list(SCORE_HEADER)}")
        for line_no, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(SCORE_HEADER):
                raise ValueError(
                    f"{path}:{line_no}: {len(fields)} fields, expected 5 (tab-separated)"
                )
            utt_id, score = fields[0], fields[1]
            if utt_id in out:
                raise ValueError(
                    f"{path}:{line_no}: duplicate utt_id {utt_id!r} (first on line "
                    f"{first_line[utt_id]})"
                )
            try:
                out[utt_id] = float(score)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: score {score!r} is not a number") from None
            first_line[utt_id] = line_no
    return out
