"""Bad input to ``supcon-sweep confirm`` is refused with exit status 2, naming the problem, and
leaves nothing in MLflow. Nothing here starts Ray: the sweeps are written into MLflow directly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.engine.confirm import candidates, plan_jobs
from orchestrator.settings import DEFAULT_EXPERIMENT, SweepSettings
from orchestrator.tracking import TUNE_DIR_TAG, SweepRun, Tracking
from trainer.config import flatten, load_config


def _sweep(out: Path, name: str, trials: int) -> SweepRun:
    """A sweep's parent run with ``trials`` finished trials, its settings saved in its Tune
    folder, as a real sweep leaves them."""
    uri = f"sqlite:///{out / 'mlflow.db'}"
    cfg = load_config()
    parent = Tracking.at(uri, DEFAULT_EXPERIMENT).start_sweep(
        name,
        searcher="grid",
        params={"metric": "encoder/dev/eer", "mode": "min"},
        tags={},
        space_text=None,
    )
    settings = SweepSettings(
        name=name,
        base=cfg,
        space_path="",
        metric="encoder/dev/eer",
        mode="min",
        num_samples=1,
        max_concurrent=1,
        scheduler="none",
        workers_per_trial=2,
        cpus_per_worker=1.0,
        gpus_per_trial=0,
        max_failures=0,
        seed=0,
        out_dir=str(out),
        tracking=parent.target,
    )
    settings.save()
    parent.tag(TUNE_DIR_TAG, f"{settings.tune_dir}/{name}")
    for i in range(trials):
        params = flatten(cfg) | {"loss.temperature": 0.1 * (i + 1)}
        tracker = Tracking(parent.target).open_trial(f"{name}_{i}", params)
        tracker.log_metrics({"sweep/objective": 0.1 * i, "encoder/dev/eer": 0.1 * i}, step=0)
        tracker.finish()
    parent.finish()
    return parent


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    _sweep(tmp_path, "smoke", trials=2)
    _sweep(tmp_path, "empty", trials=0)
    return tmp_path


def _runs(out: Path) -> list:
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])


def _confirm(out: Path, *argv: str) -> int:
    return main(["confirm", "--out", str(out), *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sweep", "nope"], "no sweep named 'nope' in experiment 'supcon-sweep'"),
        (["--parent-run-id", "0" * 32], f"no sweep parent run {'0' * 32}"),
        (["--sweep", "empty"], "sweep empty has no finished trial with the metric"),
        (["--sweep", "smoke", "--gpus-per-trial", "1"], "a GPU of its own"),
    ],
)
def test_bad_input_is_refused_and_creates_no_run(store: Path, argv, message, capsys) -> None:
    before = len(_runs(store))
    assert _confirm(store, *argv) == 2
    err = capsys.readouterr().err
    assert message in err
    if "no sweep" in message:
        assert "its sweeps: empty, smoke" in err  # the confirmations are not listed
    assert len(_runs(store)) == before


def test_a_seed_list_with_duplicates_is_refused(store: Path, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        _confirm(store, "--sweep", "smoke", "--seed-list", "7,8,7")
    assert done.value.code == 2
    assert "seed(s) 7 given more than once" in capsys.readouterr().err


def test_a_sweep_whose_storage_is_gone_is_named(store: Path, capsys) -> None:
    shutil.rmtree(store / "tune" / "smoke")
    before = len(_runs(store))
    assert _confirm(store, "--sweep", "smoke") == 2
    err = capsys.readouterr().err
    assert "the storage of sweep smoke is gone" in err and str(store / "tune" / "smoke") in err
    assert len(_runs(store)) == before


def test_fewer_trials_than_top_confirms_what_exists_and_new_seeds_avoid_the_sweeps(
    store: Path,
) -> None:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    tracking = Tracking.at(uri, DEFAULT_EXPERIMENT)
    _, sweep = tracking.find_sweep(name="smoke")
    chosen, n_finished = candidates(tracking, sweep, "sweep/objective", "min", 5)
    assert n_finished == 2 and [c.rank for c in chosen] == [1, 2]
    assert chosen[0].row["params"]["loss.temperature"] == pytest.approx(0.1)  # objective 0
    assert chosen[0].config_id != chosen[1].config_id
    jobs = plan_jobs(chosen, None, 3)
    assert [j.seed for j in jobs[:3]] == [1000, 2000, 3000]  # the sweep trials ran seed 0
    assert len({j.trial_id for j in jobs}) == 6
    # A listed seed equal to the sweep trial's is that trial: it is not rerun.
    assert [j.seed for j in plan_jobs(chosen[:1], [0, 5], 0)] == [5]
