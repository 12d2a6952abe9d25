"""A sweep's storage through pyarrow's filesystems (here a local path, as on one machine):
text round trips, missing files named, folders copied both ways, and the checkpoints a dead
worker group left behind deleted while the one Ray Train keeps stays. No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.storage import (
    SNAPSHOT,
    local_folder,
    missing_files,
    prune_unregistered_checkpoints,
    read_text,
    upload_folder,
    write_text,
)


def test_text_round_trips_and_a_missing_file_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "tune" / "s" / "settings.json")
    write_text(path, '{"a": 1}')
    assert read_text(path) == '{"a": 1}'
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_text(str(tmp_path / "nowhere"))


def test_folders_are_copied_and_missing_model_files_listed(tmp_path: Path) -> None:
    local = tmp_path / "trial"
    local.mkdir()
    (local / "weights.pt").write_bytes(b"w")
    dest = upload_folder(local, str(tmp_path / "models" / "t1"))
    assert dest == str((tmp_path / "models" / "t1").resolve())
    assert missing_files(dest, ("weights.pt", "config.yaml")) == ["config.yaml"]
    assert missing_files(str(tmp_path / "gone"), ("weights.pt",)) == ["weights.pt"]
    assert local_folder(dest, tmp_path / "scratch") == Path(dest)  # a local path is itself


def test_only_unregistered_checkpoints_are_pruned(tmp_path: Path) -> None:
    run = tmp_path / "train" / "t1"
    for name in ("checkpoint_0001", "checkpoint_0002", "checkpoint_0003"):
        (run / name).mkdir(parents=True)
    assert prune_unregistered_checkpoints(str(run)) == []  # no record: nothing is deleted
    kept = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_0002"}]}
    (run / SNAPSHOT).write_text(json.dumps(kept))
    assert sorted(prune_unregistered_checkpoints(str(run))) == [
        "checkpoint_0001",
        "checkpoint_0003",
    ]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_0002", SNAPSHOT]
    (run / SNAPSHOT).write_text(json.dumps({"checkpoint_results": []}))
    assert prune_unregistered_checkpoints(str(run)) == []  # an empty record deletes nothing
    assert (run / "checkpoint_0002").is_dir()
