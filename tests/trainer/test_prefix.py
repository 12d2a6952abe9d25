"""A trial started from another trial's checkpoint at the end of their shared prefix ends
bit-identical to the same trial run from scratch; a checkpoint that is not its prefix is refused,
naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import micro
from trainer.config import ConfigError, load_config
from trainer.prefix import LATE_KEYS, divergence_epoch, prefix_id
from trainer.reporting import JsonlReporter
from trainer.run import run_trial


class KeepCheckpoint(JsonlReporter):
    """The local reporter, also copying the checkpoint written after epoch ``epoch``."""

    def __init__(self, out_dir: Path, epoch: int, dest: Path) -> None:
        super().__init__(out_dir)
        self.epoch, self.dest = epoch, dest

    def report(self, metrics, *, epoch, step, checkpoint, history=()):
        if epoch == self.epoch and checkpoint is not None:
            shutil.copytree(checkpoint, self.dest)
        return super().report(metrics, epoch=epoch, step=step, checkpoint=checkpoint)


def _epochs(out: Path) -> dict[int, dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {row["epoch"]: row for row in map(json.loads, lines)}


def _config(synth_root: Path, *overrides: str):
    return load_config(None, [*micro(synth_root), "runtime.threads=1", *overrides])


def test_prefix_identity_ignores_only_the_late_keys(synth_root: Path) -> None:
    base = _config(synth_root)
    queued = _config(
        synth_root, "queue.size=64", "queue.start_epoch=2", "queue.same_label=positive"
    )
    assert prefix_id(base, 2) == prefix_id(queued, 2)
    assert prefix_id(base, 2) != prefix_id(base, 1)  # the world size changes the batches
    for other in ("seed=1", "loss.temperature=0.07", "runtime.threads=2", "stage1.epochs=4"):
        assert prefix_id(_config(synth_root, other), 2) != prefix_id(base, 2), other
    assert divergence_epoch(queued) == 2
    assert divergence_epoch(_config(synth_root, "queue.size=0")) == 3  # never: the last epoch
    late = {"queue.size", "queue.start_epoch", "queue.start_step", "queue.same_label"}
    assert late == LATE_KEYS


def test_a_fork_ends_bit_identical_to_the_run_from_scratch(synth_root: Path, tmp_path: Path):
    """No queue (the trunk) -> its state after epoch 0 -> a queue of another size from epoch 1
    (the child), against that child trained from scratch: every epoch's metrics, the final
    metrics and the final weights are equal, not close."""
    prefix = tmp_path / "prefix-epoch-1"
    trunk = _config(synth_root, "queue.size=0")
    run_trial(trunk, tmp_path / "trunk", KeepCheckpoint(tmp_path / "trunk", 0, prefix))
    child = _config(synth_root, "queue.size=24", "queue.start_epoch=1")
    scratch = run_trial(child, tmp_path / "scratch", with_eval=False)
    forked = run_trial(child, tmp_path / "forked", with_eval=False, fork=prefix)
    mine, theirs = _epochs(tmp_path / "forked"), _epochs(tmp_path / "scratch")
    assert sorted(mine) == [1, 2]  # epoch 0 was the trunk's
    for epoch, row in mine.items():
        assert row == theirs[epoch], epoch
    assert theirs[2]["encoder/train/queue_fill"] > 0  # the queue did act after the fork
    timeless = {k: v for k, v in forked.items() if not k.startswith("time/")}
    assert timeless == {k: v for k, v in scratch.items() if not k.startswith("time/")}
    a = torch.load(tmp_path / "forked" / "model" / "model.pt")
    b = torch.load(tmp_path / "scratch" / "model" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_outside_the_prefix_is_refused(synth_root: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    trunk = _config(synth_root, "queue.size=0", "stage1.epochs=1")
    run_trial(trunk, tmp_path / "trunk", KeepCheckpoint(tmp_path / "trunk", 0, prefix))
    other = _config(synth_root, "loss.temperature=0.07", "queue.start_epoch=1")
    with pytest.raises(ConfigError, match=r"differs in loss\.temperature, stage1\.epochs"):
        run_trial(other, tmp_path / "other", with_eval=False, fork=prefix)
    late = _config(synth_root, "stage1.epochs=1", "queue.start_epoch=0")
    with pytest.raises(ConfigError, match="past the shared prefix"):
        run_trial(late, tmp_path / "late", with_eval=False, fork=prefix)
