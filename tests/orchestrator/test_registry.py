"""Registering a trial's model in MLflow's registry, against the embedded SQLite store and a real
MLflow server: the version points at the model folder (or, on a server, at a pointer model in
the run's artifacts: no weight is copied), carries its tags and alias, registering the same
trial again creates nothing, and ``models:/NAME@champion`` loads and scores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.pyfunc import using_store
from orchestrator.tracking.registry import FOLDER_TAG, register
from orchestrator.tracking.store import MODEL_TAG, SWEEP_TAG, TRIAL_TAG, TrackingError
from tests.helpers import free_port, wait_for


def _trial_run(client: MlflowClient, folder: Path, trial_id: str) -> dict:
    """A finished trial run whose final model is ``folder``, as ``best`` returns it."""
    exp = client.get_experiment_by_name("e") or client.get_experiment(client.create_experiment("e"))
    tags = {TRIAL_TAG: trial_id, MODEL_TAG: str(folder), SWEEP_TAG: "smoke"}
    run = client.create_run(exp.experiment_id, tags=tags)
    client.set_terminated(run.info.run_id)
    return {"run_id": run.info.run_id, "trial_id": trial_id, "tags": tags}


def _clips(synth_root: Path) -> list[str]:
    flac = synth_root / "LA" / "ASVspoof2019_LA_eval" / "flac"
    return [str(p) for p in sorted(flac.glob("*.flac"))[:3]]


def _load_and_score(uri: str, model_uri: str, clips: list[str]) -> np.ndarray:
    with using_store(uri):  # never leaves MLFLOW_TRACKING_URI behind for the next tests
        model = mlflow.pyfunc.load_model(model_uri)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    return model.predict(clips)["score"].to_numpy()


def test_register_on_sqlite(micro_trial: Path, synth_root: Path, tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    first = _trial_run(client, micro_trial / "model", "t1")
    done = register(uri, first, "det", "champion", {"supcon.config_id": "abc"})
    assert (done.version, done.created) == ("1", True)
    again = register(uri, first, "det", "champion", {"supcon.config_id": "abc"})
    assert (again.version, again.created) == ("1", False)
    assert len(client.search_model_versions("name = 'det'")) == 1
    version = client.get_model_version_by_alias("det", "champion")
    assert version.source == str((micro_trial / "model").resolve())  # the folder, not a copy
    assert version.run_id == first["run_id"]
    assert version.tags["supcon.config_id"] == "abc" and version.tags[FOLDER_TAG] == version.source
    clips = _clips(synth_root)
    direct = mlflow.pyfunc.load_model(str(micro_trial / "model")).predict(clips)["score"]
    np.testing.assert_allclose(_load_and_score(uri, "models:/det@champion", clips), direct)
    # another trial becomes version 2 and takes the alias
    other = tmp_path / "other"
    shutil.copytree(micro_trial / "model", other)
    second = register(uri, _trial_run(client, other, "t2"), "det", "champion", {})
    assert (second.version, second.created) == ("2", True)
    assert str(client.get_model_version_by_alias("det", "champion").version) == "2"


def test_register_refuses_a_folder_that_is_not_an_mlflow_model(
    micro_trial: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.pt", "classifier.pt", "config.yaml"):
        shutil.copy(micro_trial / "model" / name, old)
    row = _trial_run(MlflowClient(uri), old, "t1")
    with pytest.raises(TrackingError, match="is not an MLflow model"):
        register(uri, row, "det", "champion", {})
    row["tags"].pop(MODEL_TAG)
    with pytest.raises(TrackingError, match="records no final model"):
        register(uri, row, "det", "champion", {})


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    cmd += ["--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            return True
        except Exception:
            return server.poll() is not None

    try:
        wait_for(up, 90, "the MLflow server")
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_register_through_an_mlflow_server(
    micro_trial: Path, synth_root: Path, mlflow_server: str
) -> None:
    """A server takes a local source only inside the run's artifacts: the version points at a
    pointer model there, a few kB, and the weights are read from the trial's folder."""
    client = MlflowClient(mlflow_server, mlflow_server)
    row = _trial_run(client, micro_trial / "model", "t1")
    done = register(mlflow_server, row, "det", "champion", {"supcon.sweep": "smoke"})
    assert done.created and done.source.endswith("/detector")
    logged = {a.path: a.file_size for a in client.list_artifacts(row["run_id"], "detector")}
    assert "detector/MLmodel" in logged and "detector/weights_at.txt" in logged
    assert not any(p.endswith(".pt") for p in logged) and sum(logged.values()) < 100_000
    assert not register(mlflow_server, row, "det", "champion", {}).created
    clips = _clips(synth_root)
    direct = mlflow.pyfunc.load_model(str(micro_trial / "model")).predict(clips)["score"]
    np.testing.assert_allclose(
        _load_and_score(mlflow_server, "models:/det@champion", clips), direct
    )
