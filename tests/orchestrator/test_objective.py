"""What the searcher and the scheduler compare: one quantity per trial, the same in Optuna's
study, in Tune's records and in MLflow, with ASHA stopping nothing before the queue has run.

Three real sweeps (Ray Tune + Optuna TPE + Ray Train on gloo + SQLite MLflow), sequential
trials so ASHA's decisions do not depend on timing:
- ASHA over a space whose queue starts at epoch 1 or 2, selecting on a per-epoch metric whose
  value is fixed by the trial's point (the head's learning rate), so which trials ASHA stops
  is known from the order TPE proposes them; a stopped trial's workers wait for Tune's
  decision at the rung, so MLflow holds exactly the epochs Tune saw;
- an end-of-trial objective (``classifier/dev/eer``) with TPE and no scheduler;
- the dev EER selected on while stage 1 keeps the dev loss's best epoch: the objective is the
  dev EER of the delivered epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from orchestrator.cli import main
from orchestrator.objective import OBJECTIVE
from orchestrator.settings import DEFAULT_EXPERIMENT
from tests.helpers import micro

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 5
FIRST_RUNG = 3  # latest queue start (epoch 2) + 2 epochs with the queue on, 0-based
ASHA_SPACE = """\
stage1.lr_head: {categorical: [0.001, 0.002, 0.004]}
queue.start_epoch: {int: [1, 2]}
"""
FINAL_SPACE = "loss.temperature: {loguniform: [0.1, 0.5]}\n"
EER, LOSS = "encoder/dev/eer", "encoder/dev/loss"


def _sweep(out: Path, synth_root: Path, space: str, *extra: str) -> int:
    path = out / "space.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(space)
    argv = ["sweep", "--space", str(path), "--out", str(out), "--name", "s", "--seed", "3"]
    # One Train worker per trial: the objective and the rungs are the subject here, not DDP.
    argv += ["--workers-per-trial", "1", "--cpus-per-worker", "1", "--max-concurrent", "1"]
    argv += ["--eval-top-k", "0", *extra, *micro(synth_root, EPOCHS)]
    return main(argv)


@pytest.fixture(scope="module")
def asha_sweep(ray_session, synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("asha")
    args = ["--num-samples", "4", "--scheduler", "asha", "--metric", "encoder/train/lr_head"]
    assert _sweep(out, synth_root, ASHA_SPACE, *args) == 0
    return out


@pytest.fixture(scope="module")
def delivered_sweep(ray_session, synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("delivered")
    args = ["--num-samples", "2", "--scheduler", "none", "--metric", "encoder/dev/eer"]
    assert _sweep(out, synth_root, FINAL_SPACE, *args, "stage1.monitor=dev_loss") == 0
    return out


@pytest.fixture(scope="module")
def final_sweep(ray_session, synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("final")
    args = ["--num-samples", "2", "--scheduler", "none", "--metric", "classifier/dev/eer"]
    assert _sweep(out, synth_root, FINAL_SPACE, *args) == 0
    return out


def _told(out: Path) -> dict[str, float]:
    """Tune trial id -> the value Optuna's study holds for it, read from the searcher state
    Tune saved with the experiment."""
    searcher = ConcurrencyLimiter(OptunaSearch(), max_concurrent=1)
    searcher.restore_from_dir(str(out / "tune" / "s"))
    optuna = searcher.searcher
    by_number = {t.number: t.value for t in optuna._ot_study.trials}
    return {trial_id: by_number[t.number] for trial_id, t in optuna._ot_trials.items()}


def _runs(out: Path) -> dict[str, object]:
    """Tune trial id -> its MLflow run."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`supcon.trial_id` IS NOT NULL")
    return {r.data.tags["supcon.trial_id"]: r for r in runs}


def test_asha_stops_trials_only_after_the_queue_has_run_two_epochs(asha_sweep: Path) -> None:
    analysis = ExperimentAnalysis(str(asha_sweep / "tune" / "s"))
    last_epoch = {t: df["epoch"].max() for t, df in analysis.trial_dataframes.items()}
    finished = {
        t: "classifier/dev/eer" in df.columns for t, df in analysis.trial_dataframes.items()
    }
    assert len(last_epoch) == 4
    stopped = [t for t in last_epoch if not finished[t]]
    assert stopped, "ASHA stopped no trial: the rung was never exercised"
    # Each stopped trial ran to the first rung exactly, never earlier; the others ran to the end.
    assert {last_epoch[t] for t in stopped} == {FIRST_RUNG}
    assert all(last_epoch[t] == EPOCHS - 1 for t in last_epoch if finished[t])
    runs = _runs(asha_sweep)
    assert len(runs) == 4
    for run in runs.values():
        expected = "FINISHED" if "classifier/dev/eer" in run.data.metrics else "KILLED"
        assert run.info.status == expected


def test_a_stopped_trial_logs_exactly_the_epochs_tune_saw(asha_sweep: Path) -> None:
    """Its workers waited for Tune's decision at the rung: no extra epoch in MLflow, and the
    run is closed as stopped early."""
    analysis = ExperimentAnalysis(str(asha_sweep / "tune" / "s"))
    client = MlflowClient(f"sqlite:///{asha_sweep / 'mlflow.db'}")
    runs = _runs(asha_sweep)
    stopped = 0
    for trial_id, df in analysis.trial_dataframes.items():
        # encoder/train/loss is logged once per epoch and not in the final report.
        history = client.get_metric_history(runs[trial_id].info.run_id, "encoder/train/loss")
        epochs = sorted(int(m.step) for m in history)
        iterations = int(df["training_iteration"].max())
        finished = "classifier/dev/eer" in df.columns
        # A finished trial's final report is one more Tune result than its epochs; a trial
        # that started from a shared prefix (TPE proposed its lr_head again with another
        # queue start) reported only its own epochs, and its run has the prefix's too.
        shared = int(runs[trial_id].data.metrics.get("prefix/epochs_shared", 0))
        assert len(epochs) == iterations - finished + shared, trial_id
        assert epochs == list(range(int(df["epoch"].max()) + 1))
        if not finished:
            stopped += 1
            tags = runs[trial_id].data.tags
            assert tags.get("supcon.end_reason") == "stopped early by the scheduler"
    assert stopped >= 1


def test_the_searcher_is_told_each_trials_objective_as_mlflow_has_it(asha_sweep: Path) -> None:
    told = _told(asha_sweep)
    runs = _runs(asha_sweep)
    client = MlflowClient(f"sqlite:///{asha_sweep / 'mlflow.db'}")
    assert set(told) == set(runs) and len(told) == 4
    for trial_id, value in told.items():
        run = runs[trial_id]
        history = client.get_metric_history(run.info.run_id, "encoder/train/lr_head")
        best_epoch = min(m.value for m in history)
        # Stopped and finished alike: the best epoch's value, which MLflow logs as the objective.
        assert value == pytest.approx(best_epoch) == pytest.approx(run.data.metrics[OBJECTIVE])
        assert value == pytest.approx(float(run.data.params["stage1.lr_head"]))


def test_an_end_of_trial_objective_reaches_the_searcher_at_the_trials_end(
    final_sweep: Path,
) -> None:
    told = _told(final_sweep)
    runs = _runs(final_sweep)
    assert set(told) == set(runs) and len(told) == 2
    for trial_id, value in told.items():
        metrics = runs[trial_id].data.metrics
        assert math.isfinite(value)
        assert value == pytest.approx(metrics["classifier/dev/eer"])
        assert value == pytest.approx(metrics[OBJECTIVE])
    # Tune saw one result per trial, the final one: no per-epoch report without the objective.
    analysis = ExperimentAnalysis(str(final_sweep / "tune" / "s"))
    assert {len(df) for df in analysis.trial_dataframes.values()} == {1}


def test_the_objective_is_the_dev_eer_of_the_epoch_stage_1_keeps(delivered_sweep: Path) -> None:
    """With stage1.monitor=dev_loss, each trial's objective (MLflow's, and what Optuna was
    told) is the dev EER at the dev loss's best epoch, the epoch whose weights stage 2 used."""
    told = _told(delivered_sweep)
    runs = _runs(delivered_sweep)
    client = MlflowClient(f"sqlite:///{delivered_sweep / 'mlflow.db'}")
    assert set(told) == set(runs) and len(told) == 2
    for trial_id, value in told.items():
        run = runs[trial_id]
        eer = {int(m.step): m.value for m in client.get_metric_history(run.info.run_id, EER)}
        loss = {int(m.step): m.value for m in client.get_metric_history(run.info.run_id, LOSS)}
        kept = min(loss, key=lambda e: (loss[e], e))
        assert run.data.metrics["encoder/best_epoch"] == kept
        assert value == pytest.approx(eer[kept]) == pytest.approx(run.data.metrics[OBJECTIVE])
    analysis = ExperimentAnalysis(str(delivered_sweep / "tune" / "s"))
    assert all(len(df) == EPOCHS + 1 for df in analysis.trial_dataframes.values())


def test_the_parent_run_summarises_the_search(asha_sweep: Path) -> None:
    """The parent run counts finished and stopped trials as MLflow has them, holds the best
    objective and the trials' CPU-hours, and Optuna's plots of the study rebuilt from them."""
    client = MlflowClient(f"sqlite:///{asha_sweep / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`supcon.sweep` = 's'")
    runs = list(_runs(asha_sweep).values())
    m = parent.data.metrics
    finished = sum(r.info.status == "FINISHED" for r in runs)
    assert (m["sweep/trials_finished"], m["sweep/trials_stopped"]) == (finished, 4 - finished)
    assert m["sweep/trials_failed"] == 0 and m["sweep/trials_stopped"] >= 1
    assert m["sweep/best_objective"] == min(r.data.metrics[OBJECTIVE] for r in runs)
    walls = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    assert m["sweep/trial_cpu_hours"] == pytest.approx(sum(walls) * 2 * 0.5 / 3600, rel=1e-6)
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/slice.png"} <= plots
    assert "plots/grid_heatmap.png" not in plots  # the space has no temperature axis
