"""What an evaluation scores, decided from the trial's MLflow run alone (no Ray): the sets it
lacks, the pooled figures only with every set, the step of its final summary, its resources;
and every run that cannot be evaluated named with the reason. The store is an SQLite MLflow
seeded through the project's own tracking code, as a sweep's trials leave it."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import DEFAULT_EXPERIMENT, TrialResources
from orchestrator.tracking import MODEL_TAG, RESOURCES_TAG, SweepRun, Tracking
from orchestrator.train.evaluation import EvaluationError, plan
from trainer.config import flatten, load_config
from trainer.evaluate import MODEL_FILES

SETS = ("asv19", "itw")
EVAL = "{asv19: {kind: asvspoof2019, root: /d/LA, split: eval}, itw: {kind: itw, root: /d/itw}}"


def _model(folder: Path, complete: bool = True) -> str:
    folder.mkdir(parents=True)
    for name in MODEL_FILES[: None if complete else 1]:
        (folder / name).write_bytes(b"x")
    return str(folder)


def _trial(
    parent: SweepRun, trial_id: str, *, model: str | None, status: str = "FINISHED", **metrics
) -> str:
    tracker = Tracking(parent.target).open_trial(
        trial_id, flatten(load_config(overrides=[f"data.eval={EVAL}"]))
    )
    for step in range(4):
        tracker.log_metrics({"classifier/dev/eer": 0.1 / (step + 1)}, step=step)
    if metrics:
        tracker.log_metrics({k.replace("__", "/"): v for k, v in metrics.items()}, step=3)
    if model is not None:
        tracker.set_tag(MODEL_TAG, model)
    tracker.set_tag(RESOURCES_TAG, TrialResources(2, 0, 0.5).to_json())
    if status != "RUNNING":
        tracker.finish(status)
    return tracker.run_id


@pytest.fixture
def sweep(tmp_path: Path) -> SweepRun:
    tracking = Tracking.at(f"sqlite:///{tmp_path / 'mlflow.db'}", DEFAULT_EXPERIMENT)
    return tracking.start_sweep("s", searcher="grid", params={}, tags={}, space_text=None)


def test_a_fresh_trial_gets_every_set_and_the_pooled_figures(sweep, tmp_path: Path) -> None:
    run_id = _trial(sweep, "t1", model=_model(tmp_path / "models" / "t1"))
    job = plan(Tracking(sweep.target), run_id)
    assert job is not None
    assert (job.trial_id, job.sets, job.pooled, job.step) == ("t1", SETS, True, 3)
    assert job.resources == TrialResources(2, 0, 0.5)
    assert job.tracking == sweep.target and job.storage_root == str(tmp_path)


def test_sets_already_scored_are_skipped_unless_forced(sweep, tmp_path: Path) -> None:
    model = _model(tmp_path / "models" / "t1")
    done = {"eval__asv19__eer": 0.1, "eval__itw__eer": 0.2, "eval__pooled_mean__eer": 0.15}
    run_id = _trial(sweep, "t1", model=model, **done)
    tracking = Tracking(sweep.target)
    assert plan(tracking, run_id) is None
    assert plan(tracking, run_id, ["itw"]) is None
    forced = plan(tracking, run_id, ["itw"], force=True)
    assert forced is not None and (forced.sets, forced.pooled) == (("itw",), False)
    assert plan(tracking, run_id, force=True).sets == SETS


def test_one_set_missing_rescores_every_set_for_the_pooled_figures(sweep, tmp_path) -> None:
    run_id = _trial(sweep, "t1", model=_model(tmp_path / "m"), eval__asv19__eer=0.1)
    tracking = Tracking(sweep.target)
    assert plan(tracking, run_id).sets == SETS  # the pooled mean needs both sets' scores
    asked = plan(tracking, run_id, ["itw"])
    assert (asked.sets, asked.pooled) == (("itw",), False)


def test_what_cannot_be_evaluated_is_named(sweep, tmp_path: Path) -> None:
    tracking = Tracking(sweep.target)
    cases = {
        "0" * 32: f"no MLflow run {'0' * 32}",
        _trial(sweep, "running", model=None, status="RUNNING"): "is RUNNING: only a finished",
        _trial(sweep, "failed", model=None, status="FAILED"): "is FAILED",
        _trial(sweep, "bare", model=None): r"has no stored model \(no supcon.model_uri tag\)",
        _trial(sweep, "gone", model=str(tmp_path / "gone")): "is gone or incomplete",
        _trial(sweep, "partial", model=_model(tmp_path / "p", complete=False)): "missing ",
    }
    for run_id, message in cases.items():
        with pytest.raises(EvaluationError, match=message):
            plan(tracking, run_id)
    ok = _trial(sweep, "ok", model=_model(tmp_path / "ok"))
    with pytest.raises(EvaluationError, match="no evaluation set asv21df; its sets: asv19, itw"):
        plan(tracking, ok, ["asv21df"])
    other = Tracking.at(sweep.uri, "elsewhere").start_sweep(
        "o", searcher="grid", params={}, tags={}, space_text=None
    )
    with pytest.raises(EvaluationError, match="is in experiment 'supcon-sweep', not 'elsewhere'"):
        plan(tracking, ok, experiment_id=other.experiment_id)
