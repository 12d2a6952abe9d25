"""Scoring finished trials on the evaluation (test) sets, after the fact, into their own runs.

A sweep's trials stop at the dev evaluation; selection never reads a test figure. Once the
search ends, the best ``--eval-top-k`` finished trials are scored here, and ``supcon-sweep
evaluate`` scores any finished trial later. Each evaluation loads the trial's final model from
its storage (tag ``supcon.model_uri``), scores the requested sets, and logs into the trial's
existing MLflow run with the keys a trial logs itself (``eval/<set>/eer``, per attack, the
pooled figures), the score files and the DET plot. The run's status is not touched.

Nothing is half-logged: a set's score file is uploaded first, then all of its metrics in one
batch, so a set that fails leaves no ``eval/<set>/*`` metric; the error names the set. The
pooled figures cover every configured set and are logged only by an evaluation that scored
all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.settings import TrackingTarget, TrialResources
from orchestrator.storage import local_folder, missing_files
from orchestrator.tracking import MODEL_TAG, RESOURCES_TAG, Tracking, decode_param
from orchestrator.tracking.store import TRIAL_TAG
from trainer.config import ConfigError, config_from_params, load_config
from trainer.evaluate import MODEL_FILES

log = logging.getLogger(__name__)

JOB_KEY = "job"  # the one entry of the evaluation's train_loop_config


class EvaluationError(ValueError):
    """A run cannot be evaluated as asked (bad input); the message names the run and why."""


class SetFailedError(RuntimeError):
    """Scoring an evaluation set failed (the work ran and failed); the message names the set."""


@dataclass(frozen=True)
class EvalJob:
    """One run to evaluate: which sets, from which model, into which MLflow run.

    ``pooled``: the sets are every configured set, so the pooled figures are logged too.
    ``step``: the step of the run's final summary, at which the metrics are logged.
    """

    run_id: str
    trial_id: str
    tracking: TrackingTarget
    model_uri: str
    sets: tuple[str, ...]
    pooled: bool
    step: int
    resources: TrialResources

    @property
    def storage_root(self) -> str:
        """``STORAGE`` of ``STORAGE/models/TRIAL``: where the evaluation's Ray run is kept."""
        return self.model_uri.rstrip("/").rsplit("/", 2)[0]


def _configured_sets(run) -> list[str]:
    """The evaluation sets of the trial's config, rebuilt from its params."""
    params = {k: v for k, v in run.data.params.items() if "." in k}
    try:
        cfg = config_from_params({k: decode_param(v) for k, v in params.items()})
    except ConfigError as err:
        raise EvaluationError(f"run {run.info.run_id} has no valid trainer config: {err}") from None
    return list(cfg.data.eval)


def _stored_model(run) -> str:
    """Where the run's final model is; EvaluationError when it has none or it is gone."""
    run_id, model_uri = run.info.run_id, run.data.tags.get(MODEL_TAG)
    if not model_uri:
        raise EvaluationError(
            f"run {run_id} has no stored model (no {MODEL_TAG} tag): it is not a trial run of a "
            "sweep, or was trained by an older version"
        )
    missing = missing_files(model_uri, MODEL_FILES)
    if missing:
        raise EvaluationError(
            f"run {run_id}: its model storage {model_uri} is gone or incomplete "
            f"(missing {', '.join(missing)})"
        )
    return model_uri


def plan(
    tracking: Tracking,
    run_id: str,
    sets: Sequence[str] | None = None,
    *,
    force: bool = False,
    experiment_id: str | None = None,
) -> EvalJob | None:
    """The evaluation of run ``run_id`` on ``sets`` (default: every configured set), or None
    when every asked set is already evaluated (and not ``force``).

    :class:`EvaluationError` names what is wrong: an unknown run, a run of another experiment
    (``experiment_id``), a run still running or not finished, one without a stored model or
    whose model is gone from storage, an unknown set.
    """
    try:
        run = tracking.run(run_id)
    except LookupError as err:
        raise EvaluationError(str(err)) from None
    if experiment_id is not None and run.info.experiment_id != experiment_id:
        theirs = tracking.experiment_name(run.info.experiment_id)
        ours = tracking.experiment_name(experiment_id)
        raise EvaluationError(
            f"run {run_id} is in experiment {theirs!r}, not {ours!r} (pass --experiment {theirs})"
        )
    status = run.info.status
    if status != "FINISHED":
        raise EvaluationError(
            f"run {run_id} is {status}: only a finished trial has a final model to evaluate"
        )
    model_uri = _stored_model(run)
    configured = _configured_sets(run)
    asked = list(sets) if sets else configured
    unknown = [s for s in asked if s not in configured]
    if unknown:
        raise EvaluationError(
            f"run {run_id} has no evaluation set {', '.join(unknown)}; its sets: "
            f"{', '.join(configured) or '(none)'}"
        )
    done = {s for s in asked if f"eval/{s}/eer" in run.data.metrics}
    todo = tuple(s for s in asked if force or s not in done)
    if todo and not sets and "eval/pooled_mean/eer" not in run.data.metrics:
        todo = tuple(configured)  # the pooled figures need every set's scores in one go
    if not todo:
        return None
    resources = run.data.tags.get(RESOURCES_TAG)
    return EvalJob(
        run_id=run_id,
        trial_id=run.data.tags.get(TRIAL_TAG, run_id),
        tracking=tracking.target,
        model_uri=model_uri,
        sets=todo,
        pooled=set(todo) == set(configured),
        step=tracking.last_step(run_id, "classifier/dev/eer"),
        resources=TrialResources.from_json(resources) if resources else TrialResources(1, 0, 1.0),
    )


class RunLogger:
    """Rank 0's writes into the evaluated run, through the tracking's buffered, retrying
    writer: a set's score file, then its metrics in one batch; the pooled figures and the DET
    plot at the end."""

    def __init__(self, job: EvalJob) -> None:
        self.job = job
        self.writer = Tracking(job.tracking).writer(job.run_id)

    def log_set(self, metrics: dict[str, float], score_file: Path) -> None:
        self.writer.log_artifacts([score_file], "scores")
        self.log_metrics(metrics)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.writer.log_metrics(metrics, self.job.step)
        self.writer.flush()

    def log_file(self, path: Path) -> None:
        self.writer.log_artifacts([path])


def run_job(job: EvalJob, scratch: Path, *, progress: bool = False) -> dict[str, float]:
    """Score ``job.sets`` in this process, or as one rank of the evaluation's process group
    (rank 0 logs); returns the metrics logged. :class:`SetFailedError` names a set that
    failed; the sets before it stay logged."""
    from trainer import distributed
    from trainer.data.corpora import read_corpus
    from trainer.evaluate import CONFIG, load_model, pooled_metrics
    from trainer.plots import det_plot
    from trainer.runtime import setup

    distributed.init_from_env()
    folder = local_folder(job.model_uri, scratch / "model")
    cfg = load_config(folder / CONFIG, [f"runtime.progress={str(progress).lower()}"], stored=True)
    rt = setup(cfg.runtime, cfg.seed)
    final = load_model(folder, rt.device)
    logger = RunLogger(job) if distributed.is_main() else None
    logged: dict[str, float] = {}
    scored = []
    for name in job.sets:
        try:
            split = read_corpus(cfg.data.eval[name], scoring=True)
            result = final.score_set(name, split, rt)
            if logger is not None:
                logger.log_set(result.metrics(), result.write(scratch / "scores"))
        except Exception as err:
            raise SetFailedError(f"run {job.run_id}: evaluation set {name} failed: {err}") from err
        scored.append(result)
        logged |= result.metrics()
        log.info("run %s: %s EER %.2f %%", job.run_id, name, 100 * result.result.eer)
    if job.pooled:
        logged |= pooled_metrics(scored)
        if logger is not None:
            logger.log_metrics(pooled_metrics(scored))
    if logger is not None and scored:
        logger.log_file(det_plot({s.name: s.by_class() for s in scored}, scratch / "det.png"))
    return logged
