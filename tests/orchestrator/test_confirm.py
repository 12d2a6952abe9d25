"""``supcon-sweep confirm`` on the session's smoke sweep: Ray Train reruns under new seeds,
MLflow runs and tags, aggregated metrics, an interrupted confirmation finished by running it
again; ``best --by-config``; ``best --export`` reproducing a 2-worker trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking import Tracking
from orchestrator.tracking.query import row_config_id
from tests.helpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SETS = ("asv19", "itw")
KEYS = [f"eval/{s}/eer" for s in SETS] + ["eval/pooled_mean/eer", "eval/pooled_all/eer"]


@pytest.fixture(scope="module")
def sweep_out(smoke_sweep: Path) -> Path:
    """The session's smoke sweep (2 trials, 2 workers each, its best trial scored on the test
    sets), which the sweep and evaluate tests read too: they look at the sweep's own runs."""
    return smoke_sweep


def _client(out: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{out / 'mlflow.db'}")


def _runs(out: Path, where: str = "") -> list:
    client = _client(out)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return client.search_runs([exp.experiment_id], where)


def _confirm_args(out: Path, *extra: str) -> list[str]:
    return ["confirm", "--sweep", "smoke", "--out", str(out), "--n-boot", "200", *extra]


def _interrupted_confirm(out: Path, address: str) -> None:
    """Start ``confirm`` in its own process and kill it once a rerun has a checkpoint."""
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    argv = _confirm_args(out, "--top", "1", "--seeds", "2", "--max-concurrent", "2")
    cmd = [sys.executable, "-m", "orchestrator.cli", *argv, "--address", address]
    log = (out / "confirm.log").open("w")
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(
        lambda: (
            any((out / "train").glob("confirm-*/checkpoint_manager_snapshot.json"))
            or driver.poll() is not None
        ),
        300,
        "a rerun's checkpoint",
    )
    tail = (out / "confirm.log").read_text()[-3000:]
    assert driver.poll() is None, f"confirm ended before it could be killed:\n{tail}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()


def test_confirm_reruns_the_best_configuration_and_finishes_after_an_interruption(
    ray_session, sweep_out: Path, capsys
) -> None:
    (best,) = Tracking.at(f"sqlite:///{sweep_out / 'mlflow.db'}", DEFAULT_EXPERIMENT).best(
        "sweep/objective", top=1
    )
    cid = row_config_id(best)
    seed = int(best["params"]["seed"])
    _interrupted_confirm(sweep_out, ray_session.get_runtime_context().gcs_address)

    argv = _confirm_args(sweep_out, "--top", "1", "--seeds", "2", "--max-concurrent", "2")
    assert main([*argv, "--register", "confirmed"]) == 0
    out = capsys.readouterr()
    assert "2 rerun(s): " in out.err
    assert "confirmation of sweep smoke" in out.out and cid in out.out  # the console table
    # --register: the confirmed configuration's median seed run, its seeds and interval tagged
    assert "registered configuration" in out.out and "models:/confirmed@champion" in out.out
    client = _client(sweep_out)
    version = client.get_model_version_by_alias("confirmed", "champion")
    assert version.tags["supcon.config_id"] == cid and version.tags["supcon.seeds"] == "2"
    assert version.tags["supcon.pooled_eer_interval"].startswith("[")
    assert int(version.tags["supcon.seed"]) in (seed + 1000, seed + 2000)

    (parent,) = _runs(sweep_out, "tags.`supcon.sweep` = 'confirm-smoke'")
    sweep_run = _client(sweep_out).get_run(best["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["supcon.confirm"] == sweep_run.data.tags["mlflow.parentRunId"]
    reruns = _runs(sweep_out, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # The killed rerun was resumed into its own MLflow run, not duplicated.
    assert len(reruns) == 2
    assert sorted(int(r.data.tags["supcon.seed"]) for r in reruns) == [seed + 1000, seed + 2000]
    for run in reruns:
        assert run.info.status == "FINISHED"
        assert run.data.tags["supcon.config_id"] == cid
        assert int(run.data.params["seed"]) == int(run.data.tags["supcon.seed"])
        for s in SETS:
            m = run.data.metrics
            assert m[f"eval/{s}/eer_ci_low"] <= m[f"eval/{s}/eer"] <= m[f"eval/{s}/eer_ci_high"]
    assert sweep_run.data.tags["supcon.config_id"] == cid  # grouped with its reruns
    assert sweep_run.data.tags["supcon.seed"] == str(seed)

    # The statistics are over the fresh seeds; the sweep trial (selected as the winner) apart.
    stats = parent.data.metrics
    for key in KEYS:
        values = [r.data.metrics[key] for r in reruns]
        assert stats[f"confirm/{cid}/{key}_mean"] == pytest.approx(np.mean(values)), key
        assert stats[f"confirm/{cid}/{key}_min"] == pytest.approx(min(values)), key
        assert stats[f"confirm/{cid}/{key}_max"] == pytest.approx(max(values)), key
        if np.std(values) > 0:
            assert stats[f"confirm/{cid}/{key}_std"] == pytest.approx(np.std(values, ddof=1))
    assert stats[f"confirm/{cid}/n_seeds"] == 2
    pooled = sweep_run.data.metrics["eval/pooled_mean/eer"]
    assert stats[f"confirm/{cid}/sweep_trial/eval/pooled_mean/eer"] == pytest.approx(pooled)
    low = stats[f"confirm/{cid}/eval/pooled_mean/eer_ci_low"]
    assert low <= stats[f"confirm/{cid}/eval/pooled_mean/eer_mean"]
    assert "sweep trial pooled_mean %" in out.out
    artifacts = {a.path for a in _client(sweep_out).list_artifacts(parent.info.run_id)}
    assert {"confirm.md", "confirm.json", "confirm.png"} <= artifacts

    # Again, counting the sweep trial as a seed: nothing reruns, no run is added, and the
    # statistics now hold 3 seeds.
    args = _confirm_args(sweep_out, "--top", "1", "--seeds", "2", "--include-sweep-trial")
    assert main(args) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().err
    assert len(_runs(sweep_out, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")) == 2
    (parent,) = _runs(sweep_out, "tags.`supcon.sweep` = 'confirm-smoke'")
    values = [r.data.metrics["eval/itw/eer"] for r in [sweep_run, *reruns]]
    assert parent.data.metrics[f"confirm/{cid}/n_seeds"] == 3
    assert parent.data.metrics[f"confirm/{cid}/eval/itw/eer_mean"] == pytest.approx(np.mean(values))
    assert parent.data.tags["supcon.include_sweep_trial"] == "true"


def test_best_by_config_ranks_confirmed_configurations(sweep_out: Path, capsys) -> None:
    assert main(["best", "--out", str(sweep_out), "--by-config", "--json"]) == 0
    (config,) = json.loads(capsys.readouterr().out)
    assert len(config["seeds"]) == 3 and len(config["run_ids"]) == 3
    runs = [_client(sweep_out).get_run(r) for r in config["run_ids"]]
    values = [r.data.metrics["eval/itw/eer"] for r in runs]
    assert config["stats"]["eval/itw/eer"]["mean"] == pytest.approx(np.mean(values))
    assert main(["best", "--out", str(sweep_out), "--by-config"]) == 0
    table = capsys.readouterr().out
    assert config["config_id"] in table and "mean ± sample std" in table
    # The plain ranking is of the sweep's own trials: the reruns are not among them.
    assert main(["best", "--out", str(sweep_out), "--json", "--top", "10"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 2 and all(not r["trial_id"].startswith("confirm-") for r in listed)


def test_export_pins_the_world_size_and_reruns_the_same_trial(
    ray_session, sweep_out: Path, tmp_path: Path, capsys
) -> None:
    exported = tmp_path / "best.yaml"
    assert main(["best", "--out", str(sweep_out), "--export", str(exported)]) == 0
    out = capsys.readouterr().out
    assert f"supcon-sweep trial --ray --workers-per-trial 2 --config {exported}" in out
    assert "world_size: 2" in exported.read_text()
    # One process is not the recipe: refused before anything runs, naming the fix.
    assert main(["trial", "--config", str(exported)]) == 2
    assert "torchrun --nproc_per_node 2" in capsys.readouterr().err

    (best,) = Tracking.at(f"sqlite:///{sweep_out / 'mlflow.db'}", DEFAULT_EXPERIMENT).best(
        "sweep/objective", top=1
    )
    uri = f"sqlite:///{tmp_path / 'rerun.db'}"
    argv = ["trial", "--ray", "--config", str(exported), "--cpus-per-worker", "0.5"]
    assert main([*argv, "--out", str(tmp_path), "--tracking-uri", uri]) == 0
    (again,) = Tracking.at(uri, DEFAULT_EXPERIMENT).best("classifier/dev/eer", top=1)
    assert again["tags"]["supcon.resources"] == best["tags"]["supcon.resources"]
    for key in ("classifier/dev/eer", "encoder/dev/eer", "encoder/dev/loss"):
        history = [
            [m.value for m in MlflowClient(u).get_metric_history(r["run_id"], key)]
            for u, r in ((f"sqlite:///{sweep_out / 'mlflow.db'}", best), (uri, again))
        ]
        assert history[0] and history[0] == pytest.approx(history[1], rel=1e-5, abs=1e-7), key
