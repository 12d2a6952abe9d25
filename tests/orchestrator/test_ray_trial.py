"""The per-worker reporter of a trial, on a real SQLite MLflow store without a Ray context: every
rank reports to Ray the same number of times (a barrier), and only rank 0 writes to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import result as tune_result

from orchestrator.settings import TrialResources, TrialSpec
from orchestrator.tracking import Tracking
from orchestrator.train.worker import make_reporter
from trainer.config import load_config

EPOCHS = 3


def _spec(tmp_path: Path) -> TrialSpec:
    parent = Tracking.at(f"sqlite:///{tmp_path / 'mlflow.db'}", "ranks").start_sweep(
        "s",
        searcher="grid",
        params={},
        tags={},
        space_text=None,
    )
    return TrialSpec(
        base=load_config(),
        params={"loss.temperature": 0.2},
        trial_id="t0",
        trials_dir=str(tmp_path / "trials"),
        models_dir=str(tmp_path / "models"),
        tracking=parent.target,
        resources=TrialResources(2, 0, 1.0),
        driver_started=time.time(),
    )


def _run_rank(spec: TrialSpec, world_rank: int) -> list[dict]:
    """What one rank's worker does with its reporter; returns what it sent to Ray."""
    sent: list[dict] = []
    reporter = make_reporter(
        spec, spec.config(), world_rank, 0.5, send=lambda m, checkpoint=None: sent.append(m)
    )
    for epoch in range(EPOCHS):
        metrics = {"encoder/dev/eer": 0.3 - 0.05 * epoch, "encoder/train/loss": 2.0 - epoch}
        reporter.report(metrics, epoch=epoch, step=2 * (epoch + 1), checkpoint=None)
    reporter.final({"encoder/dev/eer": 0.2, "eval/pooled_mean/eer": 0.25}, [])
    reporter.finish("FINISHED")
    return sent


def _runs(spec: TrialSpec) -> list:
    return MlflowClient(spec.tracking.uri).search_runs([spec.tracking.experiment_id])


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 sets MLflow's HTTP retry variables if unset; keep them out of other tests."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


@pytest.mark.usefixtures("quiet_env")
@pytest.mark.slow
def test_only_rank_0_writes_to_mlflow(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    (parent,) = _runs(spec)
    sent_by_1 = _run_rank(spec, 1)
    assert [r.info.run_id for r in _runs(spec)] == [parent.info.run_id]  # no run, no metric
    assert MlflowClient(spec.tracking.uri).get_run(parent.info.run_id).data.metrics == {}
    sent_by_0 = _run_rank(spec, 0)
    assert len(sent_by_0) == len(sent_by_1) == EPOCHS + 1  # Ray's report is a barrier
    assert sent_by_0 == sent_by_1
    (child,) = [r for r in _runs(spec) if r.info.run_id != parent.info.run_id]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["supcon.trial_id"] == "t0" and child.info.status == "FINISHED"
    assert child.data.params["loss.temperature"] == "0.2"
    client = MlflowClient(spec.tracking.uri)
    history = client.get_metric_history(child.info.run_id, "encoder/dev/eer")
    assert [m.step for m in history] == [*range(EPOCHS), EPOCHS]  # each epoch once, then final
    assert child.data.metrics["time/launch_s"] == 0.5


# Keys Tune fills in or acts on: a report carrying one would end or confuse the trial.
TUNE_RESERVED = {
    tune_result.DONE,
    tune_result.SHOULD_CHECKPOINT,
    tune_result.TRIAL_ID,
    tune_result.EXPERIMENT_TAG,
    *tune_result.AUTO_RESULT_KEYS,
    *tune_result.DEBUG_METRICS,
}


@pytest.mark.usefixtures("quiet_env")
def test_reports_carry_no_tune_reserved_key(tmp_path: Path) -> None:
    """A ``done`` in the final report let Tune end the trial before rank 0 closed its MLflow
    run, which was then marked KILLED and dropped from ``best``."""
    sent = _run_rank(_spec(tmp_path), 0)
    assert all(TUNE_RESERVED.isdisjoint(report) for report in sent)
    assert sent[-1]["epoch"] == EPOCHS - 1 and "eval/pooled_mean/eer" in sent[-1]


@pytest.mark.usefixtures("quiet_env")
def test_every_report_carries_the_delivered_epochs_value_as_the_objective(tmp_path: Path) -> None:
    """Tune's searcher and ASHA read the objective: the metric at the epoch stage 1 keeps (the
    stage-1 monitor's best so far), for a trial ASHA stops and one that finishes alike; not
    the metric's own best epoch, whose weights may have been thrown away."""
    from dataclasses import replace

    from orchestrator.objective import OBJECTIVE, Objective

    spec = replace(_spec(tmp_path), objective=Objective("encoder/dev/eer", "min"))
    sent: list[dict] = []

    def reporter_of(spec, rank: int = 0):
        return make_reporter(
            spec, spec.config(), rank, 0.5, send=lambda m, checkpoint=None: sent.append(m)
        )

    history: list[dict] = []
    # The monitor is the dev loss: its best epoch is 1, while the dev EER is best at epoch 2.
    epochs = [(0.30, 2.0), (0.25, 1.5), (0.20, 1.8)]
    monitored = replace(spec, params={**spec.params, "stage1.monitor": "dev_loss"})
    reporter = reporter_of(monitored)
    for epoch, (eer, loss) in enumerate(epochs):
        history.append({"encoder/dev/eer": eer, "encoder/dev/loss": loss, "epoch": float(epoch)})
        reporter.report(history[-1], epoch=epoch, step=epoch, checkpoint=None, history=history)
    reporter.final({"encoder/dev/eer": 0.25, "classifier/dev/eer": 0.1}, [], history=history)
    reporter.finish("FINISHED")
    assert [m[OBJECTIVE] for m in sent] == [0.30, 0.25, 0.25, 0.25]
    (run,) = [r for r in _runs(spec) if "supcon.trial_id" in r.data.tags]
    assert run.data.metrics[OBJECTIVE] == 0.25
    # With the dev EER as the monitor, the delivered epoch is the dev EER's best.
    sent.clear()
    reporter = reporter_of(replace(spec, trial_id="t2"), rank=1)
    for epoch in range(3):
        reporter.report(
            history[epoch], epoch=epoch, step=epoch, checkpoint=None, history=history[: epoch + 1]
        )
    assert [m[OBJECTIVE] for m in sent] == [0.30, 0.25, 0.20]
    # An end-of-trial objective is only in the final report: Tune is not sent the others.
    spec = replace(spec, objective=Objective("classifier/dev/eer", "min"), trial_id="t1")
    sent.clear()
    reporter = reporter_of(spec, rank=1)
    reporter.report(history[0], epoch=0, step=0, checkpoint=None, history=history[:1])
    reporter.final({"classifier/dev/eer": 0.1}, [], history=history[:1])
    assert [OBJECTIVE in m for m in sent] == [False, True] and sent[-1][OBJECTIVE] == 0.1
