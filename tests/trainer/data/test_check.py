"""``data check`` (``python -m trainer.data``; ``supcon-sweep data`` too) on broken corpora:
counts, examples, exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer.data.cli import main


@pytest.fixture
def broken_la(synth_root: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic 2019 LA with two dev files deleted and one train file corrupted."""
    root = tmp_path / "LA"
    shutil.copytree(synth_root / "LA", root)
    dev = sorted((root / "ASVspoof2019_LA_dev" / "flac").iterdir())
    for path in dev[:2]:
        path.unlink()
    next((root / "ASVspoof2019_LA_train" / "flac").iterdir()).write_bytes(b"garbage" * 10)
    return root


def test_check_counts_missing_and_unreadable(broken_la: Path, capsys) -> None:
    assert main(["check", "--kind", "asvspoof2019", "--root", str(broken_la), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    splits = report["splits"]
    assert report["usable"] is False
    assert (splits["dev"]["missing"], splits["dev"]["unreadable"]) == (2, 0)
    assert (splits["train"]["missing"], splits["train"]["unreadable"]) == (0, 1)
    assert splits["eval"]["usable"] is True
    assert len(splits["dev"]["missing_examples"]) == 2


def test_check_human_output_names_the_files(broken_la: Path, capsys) -> None:
    assert (
        main(
            [
                "check",
                "--kind",
                "asvspoof2019",
                "--root",
                str(broken_la),
                "--split",
                "train",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "unreadable 1" in out and "NOT USABLE" in out and ".flac" in out
    assert "[dev]" not in out


def test_check_missing_root_and_protocol(tmp_path: Path, capsys) -> None:
    assert main(["check", "--kind", "itw", "--root", str(tmp_path / "none")]) == 1
    assert "In-the-Wild root not found" in capsys.readouterr().out
    assert main(["check", "--kind", "manifest", "--root", str(tmp_path)]) == 1
    assert "no split found" in capsys.readouterr().err


def test_check_rejects_unknown_kind(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "--kind", "asvspoof2020", "--root", "."])
    assert exc.value.code == 2
    assert "invalid choice: 'asvspoof2020'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "split", "said"),
    [
        ("asvspoof2019", "nope", "'nope' is not a split of asvspoof2019; choose from train, dev"),
        ("itw", "train", "'train' is not a split of itw; choose from eval"),
        ("manifest", "a/b", "a manifest split is the stem of ROOT/SPLIT.csv, got 'a/b'"),
    ],
)
def test_a_split_the_layout_does_not_have_is_an_argument_error(
    tmp_path: Path, capsys, kind: str, split: str, said: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "--kind", kind, "--root", str(tmp_path), "--split", split])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument --split: {said}" in err and "usage:" in err
    assert "pydantic" not in err and "validation error" not in err
