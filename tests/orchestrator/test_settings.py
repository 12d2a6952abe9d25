"""The orchestrator's typed state: frozen values that round-trip through JSON (``resume``) and
pickle (the Ray boundary) unchanged. No Ray, no MLflow."""

from __future__ import annotations

import json
import pickle
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from orchestrator.settings import (
    DEFAULT_EXPERIMENT,
    SETTINGS_FILE,
    SweepSettings,
    TrackingTarget,
    TrialSpec,
)
from trainer.config import load_config


def _settings(out: Path) -> SweepSettings:
    return SweepSettings(
        name="s",
        base=load_config(overrides=["loss.temperature=0.2", "stage1.weight_decay=1e-5"]),
        space_path="/spaces/default.yaml",
        metric="encoder/dev/eer",
        mode="min",
        num_samples=3,
        max_concurrent=2,
        scheduler="asha",
        workers_per_trial=2,
        cpus_per_worker=0.5,
        gpus_per_trial=0,
        max_failures=1,
        seed=7,
        out_dir=str(out),
        tracking=TrackingTarget(f"sqlite:///{out / 'mlflow.db'}", DEFAULT_EXPERIMENT),
    )


def _target(settings: SweepSettings) -> TrackingTarget:
    return TrackingTarget(settings.tracking_uri, settings.experiment, "1", "abc123", "optuna-tpe")


def test_settings_round_trip_through_the_sweep_folder(tmp_path: Path) -> None:
    before = _settings(tmp_path)
    after = replace(before, tracking=_target(before), storage=str(tmp_path / "shared"))
    for settings in (before, after):
        settings.save()
        folder = f"{settings.tune_dir}/{settings.name}"
        assert SweepSettings.load(folder) == settings
    saved = json.loads((tmp_path / "shared" / "tune" / "s" / SETTINGS_FILE).read_text())
    assert saved["tracking"]["parent_run_id"] == "abc123"
    assert saved["base"]["stage1"]["weight_decay"] == 1e-5
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SweepSettings.load(str(tmp_path / "nowhere"))


def test_settings_cross_the_ray_boundary_as_themselves(tmp_path: Path) -> None:
    settings = replace(_settings(tmp_path), tracking=_target(_settings(tmp_path)))
    spec = TrialSpec(
        base=settings.base,
        params={"loss.temperature": 0.05, "queue.size": 8},
        trial_id="t1",
        trials_dir=settings.trials_dir,
        models_dir=settings.models_dir,
        tracking=settings.target,
        resources=settings.resources,
        driver_started=1.0,
    )
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert pickle.loads(pickle.dumps(spec)) == spec
    cfg = spec.config()
    assert (cfg.loss.temperature, cfg.queue.size, cfg.stage1.weight_decay) == (0.05, 8, 1e-5)
    assert spec.out_dir == tmp_path / "trials" / "t1"
    assert spec.model_uri == f"{settings.storage_root}/models/t1"


def test_settings_are_frozen_and_gain_their_target_by_replace(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(FrozenInstanceError):
        settings.name = "other"  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="parent run is not started"):
        _ = settings.target
    target = _target(settings)
    assert replace(settings, tracking=target).target is target
    assert not settings.tracking.parent_run_id  # the original is unchanged
    # The store is held once, in the target: nothing can disagree with it.
    elsewhere = replace(settings, tracking=replace(target, uri="sqlite:////elsewhere.db"))
    assert elsewhere.tracking_uri == "sqlite:////elsewhere.db" == elsewhere.target.uri


def test_settings_saved_by_the_previous_version_still_load(tmp_path: Path) -> None:
    """Before 2026-12-07 the store was saved twice (tracking_uri and experiment beside the
    target, which was null until the parent run existed); resume and confirm read those."""
    for started in (False, True):
        settings = _settings(tmp_path)
        if started:
            settings = replace(settings, tracking=_target(settings))
        raw = json.loads(settings.to_json())
        raw["tracking_uri"], raw["experiment"] = settings.tracking_uri, settings.experiment
        raw.pop("searcher")
        raw["tracking"] = raw["tracking"] if started else None
        assert SweepSettings.from_json(json.dumps(raw)) == settings


def test_a_ray_worker_runs_as_many_threads_as_the_cpus_it_reserves(capsys) -> None:
    """The local default leaves runtime.threads unset: a Ray rank gets its --cpus-per-worker;
    a config that asks for more keeps its value, with a warning that names the oversubscription."""
    from orchestrator.train.resources import worker_threads

    local = load_config()
    assert local.runtime.threads is None
    assert worker_threads(local, 2.0).runtime.threads == 2
    assert worker_threads(local, 0.5).runtime.threads == 1
    assert capsys.readouterr().err == ""
    assert worker_threads(load_config(overrides=["runtime.threads=4"]), 1.0).runtime.threads == 4
    err = capsys.readouterr().err
    assert "runtime.threads=4 with --cpus-per-worker 1" in err and "oversubscribes" in err


def test_a_packed_trial_gets_its_share_of_the_gpu_memory() -> None:
    """--gpus-per-trial 0.25 with one worker: Ray packs 4 trials per GPU, each rank's
    allocator stops at a quarter of the memory, and each Ray worker asks for 0.25 GPU."""
    from orchestrator.settings import TrialResources
    from orchestrator.train.resources import check_gpus, gpu_share
    from orchestrator.train.trainer import scaling

    check_gpus(1, 0.25)  # accepted
    local = load_config()
    assert gpu_share(local, 0.25).runtime.gpu_memory_fraction == 0.25
    assert gpu_share(local, 1).runtime.gpu_memory_fraction is None
    own = load_config(overrides=["runtime.gpu_memory_fraction=0.2"])
    assert gpu_share(own, 0.25).runtime.gpu_memory_fraction == 0.2  # the user's value stays
    config = scaling(TrialResources(workers=1, gpus=0.25, cpus_per_worker=4.0))
    assert config.use_gpu and config.resources_per_worker == {"CPU": 4.0, "GPU": 0.25}


def test_confirm_on_another_gpu_share_moves_the_memory_fraction_with_it() -> None:
    """A sweep packed 4 per GPU, confirmed on 2 per GPU or whole GPUs: the reruns' memory cap
    follows the confirmation's share, not the sweep's quarter; a cap the user chose stays."""
    from orchestrator.train.resources import moved_share

    key = "runtime.gpu_memory_fraction"
    packed = {"loss.temperature": 0.1, key: 0.25}
    assert moved_share(packed, 0.25, 0.5) == {"loss.temperature": 0.1, key: 0.5}
    assert moved_share(packed, 0.25, 1)[key] is None
    assert moved_share({key: None}, 1, 0.5)[key] == 0.5
    assert moved_share({key: 0.2}, 0.25, 0.5)[key] == 0.2  # the user's value stays
    assert moved_share({key: 0.2}, 1, 0.5)[key] == 0.2


def test_resume_of_a_folder_without_tune_state_leaves_the_failed_sweep_as_it_was(
    tmp_path: Path, capsys
) -> None:
    """It reopened the FAILED parent run ("continuing MLflow run ..."), then died on pyarrow's
    FileNotFoundError: the run stayed RUNNING for good."""
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main
    from orchestrator.tracking import Tracking

    settings = _settings(tmp_path)
    settings.save()  # the sweep's settings are there; Tune's tuner.pkl is not
    parent = Tracking(settings.tracking).start_sweep(
        settings.name, searcher="grid", params={}, tags={}, space_text=None
    )
    parent.finish("FAILED")
    folder = f"{settings.tune_dir}/{settings.name}"
    assert main(["resume", folder]) == 2
    err = capsys.readouterr().err
    assert f"{folder} holds no Tune state to resume (no tuner.pkl)" in err
    assert "continuing MLflow run" not in err
    assert MlflowClient(settings.tracking_uri).get_run(parent.run_id).info.status == "FAILED"


def test_a_resume_that_fails_after_reopening_puts_the_status_back(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracking

    tracking = Tracking.at(f"sqlite:///{tmp_path / 'mlflow.db'}", "e")
    first = tracking.start_sweep("s", searcher="grid", params={}, tags={}, space_text=None)
    first.finish("KILLED")
    again = tracking.start_sweep("s", searcher="grid", params={}, tags={}, space_text=None)
    client = MlflowClient(tracking.target.uri)
    assert again.run_id == first.run_id
    assert client.get_run(again.run_id).info.status == "RUNNING"
    again.undo_reopen()
    assert client.get_run(again.run_id).info.status == "KILLED"
