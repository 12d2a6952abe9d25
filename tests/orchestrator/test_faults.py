"""Faults during a sweep: a killed Train worker and a killed sweep driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from tests.helpers import checkpoint_dirs, cli_env, run_cli, sweep_args, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _checkpoints(out: Path) -> list[Path]:
    return list((out / "train").glob("*/checkpoint_*"))


def _registered(out: Path) -> bool:
    return any((out / "train").glob("*/checkpoint_manager_snapshot.json"))


def summary_trials(out: Path, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}").trials


def _runs(out: Path):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_killed_worker_restarts_from_checkpoint(ray_session, synth_root: Path, tmp_path: Path):
    from ray.util.state import list_actors

    extra = ["--num-samples", "1", "--max-concurrent", "1"]
    args = [*sweep_args(tmp_path, synth_root, *extra), "stage1.epochs=6"]
    args[args.index("--space") + 1] = str(ROOT / "search_spaces" / "default.yaml")
    codes: list[int] = []
    sweep = threading.Thread(target=lambda: codes.append(main(args)))
    sweep.start()
    # Kill only once Ray Train has registered a checkpoint (its snapshot file): rank 0 logging
    # an epoch to MLflow does not mean the controller has consolidated that epoch's reports.
    wait_for(lambda: _registered(tmp_path), 240, "a registered checkpoint")
    address = ray_session.get_runtime_context().gcs_address  # never another Ray on this host
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=address, filters=alive)
    assert workers, "no live Ray Train worker to kill"
    os.kill(workers[-1].pid, signal.SIGKILL)
    sweep.join(timeout=600)
    assert codes == [0]
    child = next(r for r in _runs(tmp_path) if "mlflow.parentRunId" in r.data.tags)
    assert child.info.status == "FINISHED" and "classifier/dev/eer" in child.data.metrics
    steps = [
        m.step
        for m in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
            child.info.run_id, "encoder/dev/eer"
        )
    ]
    assert steps.count(0) == 1 and 5 in steps  # resumed, not restarted from scratch
    # ... from Ray's checkpoint in the run's storage (any node reaches it), not a local folder
    assert child.data.tags["supcon.resumed_from"].startswith("checkpoint_")
    # Storage holds one checkpoint and the final model, as the README says.
    trial_id = child.data.tags["supcon.trial_id"]
    assert [p.parent.name for p in checkpoint_dirs(tmp_path / "train")] == [trial_id]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [trial_id]
    _assert_same_as_uninterrupted(tmp_path, child)


def _assert_same_as_uninterrupted(out: Path, resumed) -> None:
    """The same trial run again without a kill (``trial --ray`` on its exported config, 2
    workers) ends with the same metrics and bit-identical final weights."""
    import torch

    config = out / "exported.yaml"
    assert main(["best", "--out", str(out), "--top", "1", "--export", str(config)]) == 0
    ref = out / "uninterrupted"
    argv = ["trial", "--ray", "--config", str(config), "--workers", "2", "--cpus-per-worker"]
    assert (
        main([*argv, "0.5", "--tracking-uri", f"sqlite:///{ref / 'mlflow.db'}", "--out", str(ref)])
        == 0
    )
    (again,) = [r for r in _runs(ref) if "mlflow.parentRunId" in r.data.tags]
    for key, value in resumed.data.metrics.items():
        if key.startswith(("encoder/", "classifier/")):
            assert again.data.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    mine = torch.load(Path(resumed.data.tags["supcon.model_uri"]) / "model.pt")
    theirs = torch.load(Path(again.data.tags["supcon.model_uri"]) / "model.pt")
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_killed_driver_resumes_without_duplicate_runs(ray_session, synth_root: Path, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    args = [
        *sweep_args(tmp_path, synth_root, "--address", address, "--max-concurrent", "1", workers=1),
        "stage1.epochs=4",
    ]
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: _checkpoints(tmp_path) or driver.poll() is not None, 240, "a checkpoint")
    tail = (tmp_path / "driver.log").read_text()[-3000:]
    assert driver.poll() is None, f"the sweep ended before the driver could be killed:\n{tail}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    folder = tmp_path / "tune" / "smoke"
    done = run_cli("resume", str(folder), "--address", address)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 trial(s), 0 failed" in done.stdout
    runs = _runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].info.status == "FINISHED"
    # resume continued the sweep's Optuna study: each trial once, with MLflow's value
    import optuna

    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")
    values = sorted(t.value for t in summary_trials(tmp_path, summary.study_name))
    assert values == pytest.approx(sorted(c.data.metrics["sweep/objective"] for c in children))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for child in children:
        # the summary (the kept epoch's EER) after the last of 4 epochs, never on an epoch's
        # step (a resumed worker that trained no epoch logged it at step 1)
        eers = [m.step for m in client.get_metric_history(child.info.run_id, "encoder/dev/eer")]
        assert set(eers) == {0, 1, 2, 3, 4} and eers.count(4) == 1, eers
        summary = client.get_metric_history(child.info.run_id, "classifier/dev/eer")
        assert [m.step for m in summary] == [4]
