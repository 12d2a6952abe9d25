"""Two local sweeps on one machine at once, each with its own private Ray instance, and ASHA
stopping trials in both: both finish, and neither instance listens beyond loopback.

Before, Ray Train's placement-group cleaner of a trial ASHA stopped asked the State API for
"the" local Ray instance, found two and gave up; the stopped trial's group was never freed,
and the sweep's next trial waited for its workers forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking.store import END_REASON_TAG, STOPPED_EARLY
from tests.helpers import listeners, micro, off_loopback

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 5
# The head's learning rate is the metric, so ASHA's choices depend on the points alone;
# TPE with seed 3 proposes them in the order the ASHA test of test_objective.py knows.
SPACE = """\
stage1.lr_head: {categorical: [0.001, 0.002, 0.004]}
queue.start_epoch: {int: [1, 2]}
"""


def _start(out: Path, synth_root: Path) -> subprocess.Popen:
    out.mkdir(parents=True)
    (out / "space.yaml").write_text(SPACE)
    argv = ["sweep", "--space", str(out / "space.yaml"), "--out", str(out), "--seed", "3"]
    # A trial takes every CPU of its sweep's instance: one group left behind stalls the next.
    argv += ["--workers-per-trial", "1", "--cpus-per-worker", "2", "--max-concurrent", "1"]
    argv += ["--num-samples", "4", "--scheduler", "asha", "--metric", "encoder/train/lr_head"]
    argv += ["--eval-top-k", "0", *micro(synth_root, EPOCHS)]
    log = (out / "sweep.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *argv],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def summary_storage(out: Path) -> str:
    return f"sqlite:///{out / 'optuna.db'}"


def _trials(out: Path) -> list:
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return [r for r in client.search_runs([exp.experiment_id]) if "supcon.trial_id" in r.data.tags]


def test_two_local_sweeps_at_once_both_finish(synth_root: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "first", tmp_path / "second"]
    sweeps = [_start(out, synth_root) for out in outs]
    deadline = time.monotonic() + 1200  # a stall waits forever; both took ~5 min on 2 cores
    heard: set = set()  # every socket either sweep's Ray listened on, sampled every 2 s
    try:
        while any(s.poll() is None for s in sweeps) and time.monotonic() < deadline:
            for sweep in sweeps:
                heard |= listeners(sweep.pid)
            time.sleep(2)
    finally:
        for sweep in sweeps:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
    for out, sweep in zip(outs, sweeps, strict=True):
        tail = (out / "sweep.log").read_text()[-3000:]
        assert sweep.returncode == 0, f"{out.name} sweep ended {sweep.returncode}:\n{tail}"
        trials = _trials(out)
        assert len(trials) == 4, tail
        stopped = [r for r in trials if r.data.tags.get(END_REASON_TAG) == STOPPED_EARLY]
        assert stopped, f"ASHA stopped no trial of the {out.name} sweep"
        assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)
        # TPE's own study lives in OUT/optuna.db: one trial per run, the values MLflow holds
        (summary,) = optuna.get_all_study_summaries(f"sqlite:///{out / 'optuna.db'}")
        study = optuna.load_study(study_name=summary.study_name, storage=summary_storage(out))
        assert sorted(t.value for t in study.trials) == pytest.approx(
            sorted(r.data.metrics["sweep/objective"] for r in trials)
        )
    # Each local instance listens on loopback only: GCS, raylet, dashboard, agents, workers.
    names = {entry[0] for entry in heard}
    assert {"gcs_server", "raylet"} <= names, sorted(names)
    for title in ("ray::DashboardA", "ray::RayTrainWo"):
        assert any(name.startswith(title) for name in names), (title, sorted(names))
    assert not off_loopback(heard), sorted(off_loopback(heard))
