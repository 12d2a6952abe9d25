"""One isolated local Ray instance for every orchestrator test that needs one (starting Ray
costs 5-15 s), in token-auth mode like a real cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import sweep_args, team_mlflow, use_ray_token_auth

use_ray_token_auth()


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.engine import leftovers
    from orchestrator.engine.session import (
        API_SERVER_VAR,
        free_port,
        local_runtime_env,
        loopback_node,
    )

    # address="local" ignores RAY_ADDRESS and stale cluster files: never joins another Ray.
    # As the CLI starts a local instance: its processes query this instance's State API.
    port = free_port()
    env = local_runtime_env(port)
    os.environ[API_SERVER_VAR] = env["env_vars"][API_SERVER_VAR]
    with loopback_node():
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            num_cpus=2,
            resources={"TRAIN_DRIVER": 2},
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            log_to_driver=False,
            runtime_env=env,
        )
    entry = leftovers.record()  # a killed test run's agents go at the next local start
    yield ray
    ray.shutdown()
    leftovers.forget(entry)


@pytest.fixture(scope="session")
def smoke_sweep(ray_session, synth_root: Path, tmp_path_factory) -> Path:
    """``OUT`` of the 2-trial smoke sweep (2 gloo workers per trial), its best trial alone
    scored on the evaluation sets (``--eval-top-k 1``); shared by the sweep, evaluate and
    confirm tests (the confirm tests rerun its best trial into the same store).

    The evaluate tests score the other trial later, so what the sweep itself logged is kept in
    ``OUT/after_sweep.json``: trial run id -> its metric keys when the sweep ended."""
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("sweep")
    assert main(sweep_args(out, synth_root, "--eval-top-k", "1")) == 0
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("supcon-sweep").experiment_id],
        "tags.`supcon.trial_id` IS NOT NULL",
    )
    keys = {r.info.run_id: sorted(r.data.metrics) for r in runs}
    (out / "after_sweep.json").write_text(json.dumps(keys))
    return out


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """One team MLflow server (PostgreSQL + basic-auth, ``cluster server``) for the session's
    tests of it (no Ray): about 20 s to start."""
    with team_mlflow(tmp_path_factory.mktemp("team-mlflow")) as server:
        yield server
