"""The local reporter: rank 0 appends one JSON line per epoch report; other ranks write nothing."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.reporting import JsonlReporter


def test_the_main_rank_appends_one_line_per_report(tmp_path: Path) -> None:
    reporter = JsonlReporter(tmp_path)
    reporter.report({"encoder/train/loss": 1.5}, epoch=0, step=2, checkpoint=tmp_path / "ckpt")
    reporter.report({"encoder/train/loss": 0.5}, epoch=1, step=4, checkpoint=None)
    reporter.final({"eval/itw/eer": 0.1}, [tmp_path / "metrics.json"])
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"epoch": 0, "step": 2, "encoder/train/loss": 1.5},
        {"epoch": 1, "step": 4, "encoder/train/loss": 0.5},
    ]
    JsonlReporter(tmp_path).report({"x": 1.0}, epoch=2, step=6, checkpoint=None)  # a resumed run
    assert len((tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    reporter = JsonlReporter(tmp_path, main=False)
    reporter.report({"encoder/train/loss": 1.5}, epoch=0, step=2, checkpoint=None)
    reporter.final({"eval/itw/eer": 0.1}, [])
    assert list(tmp_path.iterdir()) == []
