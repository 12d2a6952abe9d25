"""Checkpoints: a save swaps the folder atomically, a save that fails part-way keeps the previous
checkpoint, the saved config reads back alone, and RNG states round-trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint


class Unpicklable:
    """Pickling raises, as a real failure part-way through ``torch.save`` would."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def _save(folder: Path, value: float, **broken: object) -> Path:
    parts = {
        "state": {"progress": {"epoch": int(value)}, "config": {"seed": int(value)}},
        "model": {"w": torch.full((3,), value)},
        "best_model": {"w": torch.full((3,), -value)},
    }
    for name, bad in broken.items():
        parts[name] = {**parts[name], "bad": bad}
    return checkpoint.save(folder, **parts)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def test_a_second_save_replaces_the_first_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "last"
    assert not checkpoint.exists(folder) and not checkpoint.exists(None)
    assert _save(folder, 1.0) == folder and checkpoint.exists(folder)
    _save(folder, 2.0)
    loaded = checkpoint.load(folder)
    assert loaded["state"]["progress"] == {"epoch": 2}
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 2.0))
    assert torch.equal(loaded["best_model"]["w"], torch.full((3,), -2.0))
    assert _siblings(folder) == ["last"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [checkpoint.STATE, checkpoint.MODEL, checkpoint.BEST]
    )


@pytest.mark.parametrize("broken", ["state", "model", "best_model"])
def test_a_save_that_fails_part_way_keeps_the_previous_checkpoint(
    tmp_path: Path, broken: str
) -> None:
    """The 1st, 2nd or 3rd file fails to pickle: the previous checkpoint loads unchanged and no
    staging folder is left."""
    folder = tmp_path / "last"
    _save(folder, 1.0)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        _save(folder, 2.0, **{broken: Unpicklable()})
    loaded = checkpoint.load(folder)
    assert loaded["state"]["progress"] == {"epoch": 1}
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 1.0))
    assert _siblings(folder) == ["last"]


def test_a_first_save_that_fails_leaves_no_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "last"
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        _save(folder, 1.0, model=Unpicklable())
    assert not checkpoint.exists(folder)
    assert list(tmp_path.iterdir()) == []


def test_a_swap_left_half_done_does_not_block_the_next_save(tmp_path: Path) -> None:
    """A run killed between the two renames leaves ``.last.old`` behind; the next save works."""
    folder = tmp_path / "last"
    _save(folder, 1.0)
    stale = tmp_path / ".last.old"
    _save(stale, 0.0)
    _save(folder, 2.0)
    assert checkpoint.load(folder)["state"]["progress"] == {"epoch": 2}
    assert _siblings(folder) == ["last"]


def test_saved_config_reads_the_config_alone(tmp_path: Path) -> None:
    folder = _save(tmp_path / "last", 7.0)
    assert checkpoint.saved_config(folder) == {"seed": 7}


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(4)


def test_rng_state_round_trip_repeats_the_draws() -> None:
    state = checkpoint.rng_state()
    first = _draws()
    checkpoint.set_rng_state(state)
    again = _draws()
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
    later = _draws()  # the negative control: without the restore, the draws move on
    assert later[:2] != first[:2] and not torch.equal(later[2], first[2])
