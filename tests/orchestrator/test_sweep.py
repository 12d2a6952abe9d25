"""Real sweeps on a local Ray instance: Optuna/grid over Ray Train DDP trials, MLflow tracking.

Each starts Ray Train runs of 2 gloo workers: tens of seconds to minutes apiece."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking import query_best
from tests.helpers import data_overrides, sweep_args

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCHS = 3  # stage-1 epochs of the smoke sweep (data_overrides' default)


@pytest.fixture(scope="module")
def smoke_sweep(ray_session, synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert main(sweep_args(out, synth_root)) == 0
    return out


def _assert_one_point_per_epoch(client: MlflowClient, run_id: str) -> None:
    """Each metric of the run has at most one point per step: epochs 0..EPOCHS-1, and the
    final summary at step EPOCHS. A second rank logging would write every point twice."""
    keys = client.get_run(run_id).data.metrics
    per_epoch = [k for k in keys if k.startswith("encoder/train/")]
    assert per_epoch, f"no per-epoch training metric among {sorted(keys)}"
    for key in keys:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == sorted(set(steps)), f"{key} logged twice at a step: {steps}"
        assert set(steps) <= set(range(EPOCHS + 1)), f"{key}: {steps}"
    for key in [*per_epoch, "encoder/dev/eer"]:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert set(range(EPOCHS)) <= set(steps), f"{key} misses an epoch: {steps}"


def test_sweep_tracks_parent_and_nested_trials(smoke_sweep: Path) -> None:
    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    temps = sorted(float(c.data.params["loss.temperature"]) for c in children)
    assert temps == [0.1, 0.3]
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "encoder/dev/eer")
        assert [m.step for m in history][:3] == [0, 1, 2]
        _assert_one_point_per_epoch(client, child.info.run_id)
        assert "eval/pooled_mean/eer" in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "det.png", "scores"} <= artifacts


def test_best_returns_the_lowest(smoke_sweep: Path, capsys) -> None:
    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    rows = query_best(uri, DEFAULT_EXPERIMENT, metric="eval/pooled_mean/eer", mode="min", top=2)
    values = [r["metrics"]["eval/pooled_mean/eer"] for r in rows]
    assert len(rows) == 2 and values == sorted(values)
    assert main(["best", "--out", str(smoke_sweep), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["run_id"] == rows[0]["run_id"]


def test_sweep_with_an_active_mlflow_run(
    ray_session, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a process that already has an active MLflow run (the normal state inside a Tune
    trial), the sweep logs to its own parent and child runs and leaves the active run alone."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    ours = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = tmp_path / "shared"  # --storage: Tune results and Train checkpoints go there
    with mlflow.start_run() as active:
        args = sweep_args(tmp_path, synth_root, "--tracking-uri", ours, "--storage", str(shared))
        assert main([*args, "stage1.epochs=1"]) == 0
        assert mlflow.active_run().info.run_id == active.info.run_id
    assert MlflowClient(mlflow.get_tracking_uri()).get_run(active.info.run_id).data.metrics == {}
    rows = query_best(ours, DEFAULT_EXPERIMENT, metric="encoder/dev/eer", top=5)
    assert len(rows) == 2
    assert (shared / "tune" / "smoke" / "sweep_settings.json").is_file()
    assert len(list((shared / "train").glob("*/checkpoint_*"))) >= 2
    assert not (tmp_path / "tune").exists() and not (tmp_path / "train").exists()


def test_failing_trial_is_marked_failed_while_the_sweep_goes_on(
    ray_session, synth_root: Path, tmp_path: Path
) -> None:
    """A NaN loss in one trial (temperature 1e-40) fails that trial in Tune and in MLflow; the
    other trial of the grid still finishes."""
    space = tmp_path / "space.yaml"
    space.write_text("loss.temperature: {grid: [1.0e-40, 0.3]}\n")
    args = sweep_args(tmp_path, synth_root, "--max-failures", "0")
    args[args.index("--space") + 1] = str(space)
    assert main([*args, "stage1.epochs=1"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    children = {
        float(r.data.params["loss.temperature"]): r.info.status
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    }
    assert children == {1e-40: "FAILED", 0.3: "FINISHED"}


def test_a_sweep_in_which_every_trial_fails_exits_1(
    ray_session, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """The work ran and failed: exit status 1 (not 2, which says nothing ran)."""
    space = tmp_path / "space.yaml"
    space.write_text("loss.temperature: {grid: [1.0e-40]}\n")
    args = sweep_args(tmp_path, synth_root, "--max-failures", "0")
    args[args.index("--space") + 1] = str(space)
    assert main([*args, "stage1.epochs=1"]) == 1
    assert "every trial of sweep smoke failed" in capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    statuses = {
        "parent" if "mlflow.parentRunId" not in r.data.tags else "trial": r.info.status
        for r in client.search_runs([exp.experiment_id])
    }
    assert statuses == {"parent": "FAILED", "trial": "FAILED"}


def test_single_trial_through_ray_train(
    ray_session, synth_root: Path, tmp_path: Path, capsys
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "trial",
        "--ray",
        "--workers",
        "2",
        "--cpus-per-worker",
        "0.5",
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path),
        *data_overrides(synth_root),
        "stage1.epochs=1",
    ]
    assert main(argv) == 0
    assert "eval/asv19/eer" in capsys.readouterr().out
    rows = query_best(uri, DEFAULT_EXPERIMENT, metric="eval/pooled_mean/eer")
    assert len(rows) == 1 and rows[0]["trial_id"].startswith("trial-")
