"""Score files: a bit-identical round trip, atomic rewrites, and rows a reader can trust."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data.records import Utterance
from trainer.metrics import evaluate
from trainer.scores import read_scores, write_scores


def _utt(
    utt_id: str, label: str, attack: str | None = None, key: tuple[str, ...] = ()
) -> Utterance:
    return Utterance(utt_id=utt_id, path=Path("x.flac"), label=label, attack=attack, key=key)


def _set(bonafide: list[float], spoofs: dict[str | None, list[float]], tag: str = ""):
    """Utterances and aligned scores: bona fide first, then each attack's spoofs."""
    utts = [_utt(f"{tag}b{i}", "bonafide") for i in range(len(bonafide))]
    scores = list(bonafide)
    for attack, values in spoofs.items():
        utts += [_utt(f"{tag}s{attack}{i}", "spoof", attack) for i in range(len(values))]
        scores += values
    return utts, scores


def test_scores_round_trip_bit_identical(tmp_path: Path):
    values = [1 / 3, 1e-17, -2.5e300, 0.1 + 0.2, float(np.float32(0.1)), -0.0, 5e-324]
    utts = [_utt(f"u{i}", "spoof", "A07") for i in range(len(values))]
    path = write_scores(tmp_path / "scores.tsv", utts, np.array(values))
    back = read_scores(path)
    assert list(back) == [u.utt_id for u in utts]
    np.testing.assert_array_equal(
        np.array(list(back.values())).view(np.uint64), np.array(values).view(np.uint64)
    )


def test_rewrite_replaces_instead_of_appending(tmp_path: Path):
    utts, _ = _set([0.9], {"A01": [0.1]})
    path = tmp_path / "scores.tsv"
    write_scores(path, utts, [0.9, 0.1])
    write_scores(path, utts, [0.5, 0.4])
    assert read_scores(path) == {"b0": 0.5, "sA010": 0.4}
    assert len(path.read_text().splitlines()) == 1 + len(utts)


def test_failed_write_leaves_nothing_behind(tmp_path: Path):
    utts = [_utt("a", "bonafide"), _utt("b", "spoof", "A01", key=("spk", "bad\tfield"))]
    with pytest.raises(ValueError, match="tab"):
        write_scores(tmp_path / "scores.tsv", utts, [0.1, 0.2])
    assert list(tmp_path.iterdir()) == []
    previous = write_scores(tmp_path / "scores.tsv", utts[:1], [0.7])
    with pytest.raises(ValueError, match="tab"):
        write_scores(previous, utts, [0.1, 0.2])
    assert list(tmp_path.iterdir()) == [previous]
    assert read_scores(previous) == {"a": 0.7}


def test_row_count_is_checked_before_the_file_appears(tmp_path: Path):
    utts = [_utt("a", "bonafide"), _utt("b", "spoof", "A01", key=("line\nbreak",))]
    with pytest.raises(ValueError, match="wrote 3 rows for 2 utterances"):
        write_scores(tmp_path / "scores.tsv", utts, [0.1, 0.2])
    assert list(tmp_path.iterdir()) == []


def test_duplicate_ids_are_rejected(tmp_path: Path):
    utts, scores = _set([0.9], {"A01": [0.1, 0.2]})
    path = write_scores(tmp_path / "scores.tsv", utts, scores)
    rows = path.read_text().splitlines(keepends=True)
    path.write_text("".join(rows + rows[1:2]))  # what an appending rerun leaves
    with pytest.raises(
        ValueError, match=r"scores.tsv:5: duplicate utt_id 'b0' \(first on line 2\)"
    ):
        read_scores(path)
    with pytest.raises(ValueError, match="1 duplicate utterance ids"):
        write_scores(tmp_path / "other.tsv", [*utts, utts[0]], [*scores, 0.0])


def test_spaces_in_key_columns(tmp_path: Path):
    utts = [
        _utt("4.wav", "bonafide", key=("Christopher Hitchens", "bona-fide")),
        _utt("0.wav", "spoof", key=("Alec Guinness", "spoof")),
    ]
    path = write_scores(tmp_path / "itw.tsv", utts, [1.5, -0.25])
    lines = path.read_text().splitlines()
    assert lines[0] == "utt_id\tscore\tlabel\tattack\tkey"
    assert lines[1].split("\t") == [
        "4.wav",
        "1.5",
        "bonafide",
        "-",
        "Christopher Hitchens bona-fide",
    ]
    assert lines[2].split("\t") == ["0.wav", "-0.25", "spoof", "-", "Alec Guinness spoof"]
    assert read_scores(path) == {"4.wav": 1.5, "0.wav": -0.25}
    assert evaluate(utts, read_scores(path), "itw").eer == 0.0
