"""ASHA's first rung comes after every trial's queue has run two epochs, and the driver checks
every corpus once, refusing an unusable one before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.tune.scheduling import Rungs, asha_rungs
from search_spaces import load_space
from tests.helpers import SMOKE_SPACE, data_overrides
from trainer.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "trainer" / "configs" / "paper.yaml"


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path, load_config(PAPER))


def test_the_paper_grid_is_not_cut_before_its_queue_has_run(tmp_path: Path) -> None:
    base = load_config(PAPER)
    rungs = asha_rungs(load_space(ROOT / "search_spaces" / "paper_grid.yaml", base), base)
    # Queue on from epoch 5 (0-based): epochs 5 and 6 with it, so the first cut is at epoch 6.
    assert (rungs.grace, rungs.latest_queue_epoch, rungs.stops) == (6, 5, True)
    assert "after epoch 6" in rungs.describe()


def test_the_latest_start_in_the_space_sets_the_rung_for_every_trial(tmp_path: Path) -> None:
    base = load_config(PAPER)
    rungs = asha_rungs(load_space(ROOT / "search_spaces" / "default.yaml", base), base)
    assert (rungs.grace, rungs.latest_queue_epoch) == (9, 8)  # start_epoch: {int: [0, 8]}
    # A queue that starts at a step: step 1000 is in epoch 6 (161 steps an epoch), so the
    # queue is on for whole epochs from epoch 7, rounded up, and the first rung is after 8.
    space = _space(tmp_path, "queue.size: {grid: [0, 4096]}\nqueue.start_step: 1000\n")
    rungs = asha_rungs(space, base, steps_per_epoch=161)
    assert (rungs.latest_queue_epoch, rungs.grace) == (7, 8)
    # A start on an epoch's first step is that epoch.
    exact = _space(tmp_path, "queue.size: {grid: [0, 4096]}\nqueue.start_step: 966\n")
    assert asha_rungs(exact, base, steps_per_epoch=161).latest_queue_epoch == 6
    with pytest.raises(ValueError, match="epoch length"):
        asha_rungs(space, base)


@pytest.mark.parametrize(("grace", "epochs"), [(6, 100), (3, 5), (2, 12), (9, 12), (1, 64)])
def test_the_milestones_are_those_of_rays_asha(grace: int, epochs: int) -> None:
    """Where the ranks wait for Tune's decision: exactly the rungs Ray's ASHA compares at."""
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(
        time_attr="epoch",
        metric="m",
        mode="min",
        max_t=epochs,
        grace_period=grace,
        reduction_factor=2,
    )
    rays = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)
    rungs = Rungs(grace, 0, epochs)
    if rungs.stops:
        assert list(rungs.milestones()) == rays
    else:
        assert rungs.milestones() == ()


def test_without_any_queue_the_default_rung_stays(tmp_path: Path) -> None:
    space = _space(tmp_path, "queue.size: 0\nloss.temperature: {grid: [0.1, 0.3]}\n")
    rungs = asha_rungs(space, load_config(PAPER))
    assert (rungs.grace, rungs.latest_queue_epoch) == (2, None)


def test_a_rung_at_the_last_epoch_stops_nothing(tmp_path: Path) -> None:
    base = apply_overrides(load_config(PAPER), {"stage1.epochs": 7})
    rungs = asha_rungs(_space(tmp_path, "queue.start_epoch: {grid: [5]}\n"), base)
    assert not rungs.stops and "can stop no trial" in rungs.describe()


def test_an_unreadable_corpus_is_refused_before_anything_starts(
    synth_root: Path, tmp_path: Path, capsys
) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(synth_root, corpus)
    broken = sorted((corpus / "LA" / "ASVspoof2019_LA_dev" / "flac").glob("*.flac"))[0]
    broken.write_bytes(b"not audio")
    out = tmp_path / "out"
    argv = ["sweep", "--space", str(SMOKE_SPACE), "--out", str(out), "--scheduler", "none"]
    assert main([*argv, *data_overrides(corpus)]) == 2
    err = capsys.readouterr().err
    assert "unusable corpora; nothing was started" in err
    assert "dev (asvspoof2019" in err and broken.name in err
    assert not (out / "mlflow.db").exists() and not (out / "tune").exists()
