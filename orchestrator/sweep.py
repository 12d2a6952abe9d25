"""The sweep driver: Ray Tune + Optuna (or an exhaustive grid) over Ray Train trials, in MLflow.

Each Tune trial is a small function trainable (the trial's driver, holding no CPU) that launches
one ``TorchTrainer`` and relays its per-epoch reports to Tune (:mod:`orchestrator.decisions`), so
the searcher and the ASHA scheduler see every epoch, and at ASHA's rungs the workers learn Tune's
decision before they start the next epoch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.util.queue import Queue

from orchestrator.decisions import Decisions, ForwardReports, relay
from orchestrator.objective import OBJECTIVE
from orchestrator.options import check_ray_address
from orchestrator.ray_trial import SPEC_KEY, train_worker
from orchestrator.resources import DRIVER_RESOURCE
from orchestrator.scheduling import Rungs, decision_epochs, run_order
from orchestrator.settings import SweepSettings, TrackingTarget, TrialResources, TrialSpec
from orchestrator.storage import prune_unregistered_checkpoints
from orchestrator.tracking import TUNE_DIR_TAG, SweepRun, close_trial, query_best
from orchestrator.tracking.store import STOPPED_EARLY
from search_spaces import SearchSpace

log = logging.getLogger(__name__)

GRID_KEY = "grid_point"


def scaling(resources: TrialResources, placement: str = "PACK") -> ScalingConfig:
    """The worker group of a trial (or of its evaluation): ``resources.workers`` DDP ranks with
    their CPUs and an equal share of the trial's GPUs."""
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.gpus:
        per_worker["GPU"] = resources.gpus / resources.workers
    return ScalingConfig(
        num_workers=resources.workers,
        use_gpu=bool(resources.gpus),
        resources_per_worker=per_worker,
        placement_strategy=placement,
    )


def torch_trainer(
    settings: SweepSettings,
    trial_id: str,
    params: dict[str, Any],
    callbacks: list,
    *,
    with_eval: bool,
    corpora_checked: bool,
    run_tags: dict[str, str] | None = None,
    decisions: Any = None,
) -> TorchTrainer:
    """The Ray Train run of one trial, named after it so that a rerun resumes from its storage.
    ``corpora_checked``: the driver checked the corpora's files, so the workers do not.
    ``run_tags``: set on the trial's MLflow run when it is created. ``decisions``: where the
    workers learn Tune's decision at ``settings.decision_epochs`` (None: they never wait).

    Storage keeps one reported checkpoint (Ray deletes the older one as each new one lands):
    the latest, which holds the best weights too, is all that resume needs.
    """
    spec = TrialSpec(
        base=settings.base,
        params=params,
        trial_id=trial_id,
        trials_dir=settings.trials_dir,
        models_dir=settings.models_dir,
        tracking=settings.target,
        resources=settings.resources,
        driver_started=time.time(),
        with_eval=with_eval,
        objective=settings.objective,
        corpora_checked=corpora_checked,
        run_tags=run_tags or {},
        verbose=settings.verbose,
        decisions=decisions,
        decision_epochs=settings.decision_epochs if decisions is not None else (),
    )
    return TorchTrainer(
        train_worker,
        # Ray Train wants a dict here (it exports it as the run's state); it holds the one spec.
        train_loop_config={SPEC_KEY: spec},
        scaling_config=scaling(settings.resources, settings.placement),
        torch_config=TorchConfig(backend="nccl" if settings.gpus_per_trial else "gloo"),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=settings.train_dir,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            # Ray Train's own lines ("Reporting training result ...", per rank per report)
            # bury Tune's table: warnings only, unless --verbose.
            logging_config=LoggingConfig(log_level="INFO" if settings.verbose else "WARNING"),
        ),
    )


def fit_trial(trainer: TorchTrainer, settings: SweepSettings, trial_id: str) -> None:
    """Run the trial's Train run; then drop the checkpoints a dead worker group left behind."""
    trainer.fit()
    stale = prune_unregistered_checkpoints(f"{settings.train_dir}/{trial_id}")
    if stale:
        log.info("trial %s: deleted %d unregistered checkpoint(s)", trial_id, len(stale))


# What a Tune result holds, in this order: Tune's progress table shows the first four, so the
# objective, the epoch, the dev loss and the queue's fill; everything else is in MLflow.
TUNE_KEYS = (
    OBJECTIVE,
    "epoch",
    "encoder/dev/loss",
    "encoder/train/queue_fill",
    "encoder/dev/eer",
    "classifier/dev/eer",
    "step",
)


def objective_report(metric: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """Which reports reach Tune, and what of them: those that carry the sweep's objective
    (:data:`OBJECTIVE`), every epoch's for a per-epoch metric, only the final one for an
    end-of-trial metric, so Tune's strict metric check holds for every result and the searcher
    is told each trial's value once it exists. Each holds :data:`TUNE_KEYS` and ``metric``."""
    keys = (*TUNE_KEYS, metric) if metric not in TUNE_KEYS else TUNE_KEYS

    def keep(metrics: dict[str, Any]) -> dict[str, Any] | None:
        if OBJECTIVE not in metrics:
            return None
        return {k: metrics[k] for k in keys if k in metrics}

    return keep


def _trial_driver(config: dict[str, Any], settings: SweepSettings) -> None:
    """One Tune trial: its TorchTrainer, each objective-carrying report relayed to Tune by this
    driver, which tells the workers Tune's decision at the ASHA rungs
    (:mod:`orchestrator.decisions`)."""
    params = config.get(GRID_KEY, config)
    trial_id = tune.get_context().get_trial_id()
    results = Queue(actor_options={"num_cpus": 0})
    decisions = Decisions.remote() if settings.decision_epochs else None
    callbacks = [ForwardReports(results, objective_report(settings.metric))]
    trainer = torch_trainer(
        settings,
        trial_id,
        params,
        callbacks,
        with_eval=False,
        corpora_checked=True,
        decisions=decisions,
    )
    relay(
        lambda: fit_trial(trainer, settings, trial_id), results, decisions, settings.decision_epochs
    )


def run_single_trial(settings: SweepSettings) -> dict[str, Any]:
    """``supcon-sweep trial --ray``: one trial through Ray Train, the code path of a sweep trial,
    tracked as a one-trial sweep in MLflow. Returns the final metrics."""
    parent = SweepRun.start(
        settings.tracking_uri,
        settings.experiment,
        settings.name,
        searcher="single trial",
        params={"workers_per_trial": settings.workers_per_trial},
        tags={},
        space_text=None,
    )
    settings = replace(settings, tracking=parent.target)
    try:
        fit_trial(
            torch_trainer(settings, settings.name, {}, [], with_eval=True, corpora_checked=False),
            settings,
            settings.name,
        )
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.finish("FINISHED")
    # Train's Result keeps the last checkpointed report; the final metrics live in MLflow.
    rows = query_best(
        settings.tracking_uri,
        settings.experiment,
        metric=settings.metric,
        parent_run_id=parent.run_id,
        top=1,
    )
    return rows[0]["metrics"] if rows else {}


class TrialLines(tune.Callback):
    """One line per trial that ends: its id, params, objective, how it ended, its wall time."""

    def _print(self, trial, status: str) -> None:
        result = trial.last_result or {}
        config = trial.config.get(GRID_KEY, trial.config)
        params = " ".join(f"{k}={v}" for k, v in config.items())
        value = result.get(OBJECTIVE)
        shown = f"{value:.4g}" if isinstance(value, float) else "-"
        wall = result.get("time_total_s", 0.0)
        print(f"trial {trial.trial_id} {status}: {params}  {OBJECTIVE}={shown}  {wall:.0f} s")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        finished = "classifier/dev/eer" in (trial.last_result or {})
        self._print(trial, "finished" if finished else "stopped early")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._print(trial, "FAILED")


class CloseTrialRuns(tune.Callback):
    """Marks a trial's MLflow run when Tune ends the trial from outside its workers: KILLED for a
    trial stopped early by ASHA (its workers stop at the rung and leave the run to this, or are
    torn down first), FAILED for an errored one. Runs the workers finished themselves are not
    touched, and the workers do not change a run this closed."""

    def __init__(self, target: TrackingTarget) -> None:
        self.target = target

    def _close(self, trial, status: str, reason: str) -> None:
        close_trial(self.target, trial.trial_id, status, reason)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "KILLED", STOPPED_EARLY)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "FAILED", "trial errored")


def trainable(settings: SweepSettings) -> Callable[..., Any]:
    """The Tune trainable: the trial driver with no CPU of its own and one driver slot."""
    fn = tune.with_parameters(_trial_driver, settings=settings)
    return tune.with_resources(fn, {"CPU": 0, DRIVER_RESOURCE: 1})


def _scheduler(s: SweepSettings, rungs: Rungs | None) -> ASHAScheduler | None:
    """ASHA with its first rung after the space's queues have run (None when it could stop
    nothing, or with ``--scheduler none``)."""
    if s.scheduler != "asha" or rungs is None or not rungs.stops:
        return None
    return ASHAScheduler(
        time_attr="epoch", max_t=s.base.stage1.epochs, grace_period=rungs.grace, reduction_factor=2
    )


def tune_config(
    space: SearchSpace, s: SweepSettings, rungs: Rungs | None
) -> tuple[dict, tune.TuneConfig]:
    """The Tuner's param space and config: a grid's points in :func:`~orchestrator.scheduling.
    run_order`, or TPE. Tune selects on :data:`OBJECTIVE` (the sweep's metric, summarised per
    trial), which the searcher, the scheduler and Tune's strict metric check all read."""
    common = {
        "metric": OBJECTIVE,
        "mode": s.mode,
        "scheduler": _scheduler(s, rungs),
        "max_concurrent_trials": s.max_concurrent,
    }
    if space.is_grid:
        param_space = {GRID_KEY: tune.grid_search(run_order(space, s.scheduler, rungs, s.seed))}
        return param_space, tune.TuneConfig(num_samples=1, **common)
    searcher = ConcurrencyLimiter(
        space.optuna_search(OBJECTIVE, s.mode, s.seed), max_concurrent=s.max_concurrent
    )
    return {}, tune.TuneConfig(num_samples=s.num_samples, search_alg=searcher, **common)


def build_tuner(
    space: SearchSpace, settings: SweepSettings, rungs: Rungs | None = None
) -> tune.Tuner:
    param_space, config = tune_config(space, settings, rungs)
    return tune.Tuner(
        trainable(settings),
        param_space=param_space,
        tune_config=config,
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.tune_dir,
            callbacks=[CloseTrialRuns(settings.target), TrialLines()],
            verbose=2 if settings.verbose else 1,
        ),
    )


# A local instance's job: no Ray Train preemption watcher (see ray_init_kwargs).
LOCAL_RUNTIME_ENV = {"env_vars": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}


def ray_init_kwargs(address: str | None, max_concurrent: int) -> dict[str, Any]:
    """``ray.init``'s arguments: join ``address``; else, inside a Ray Job (whose supervisor sets
    ``RAY_ADDRESS``) or wherever a user set it, join that cluster as a plain ``ray.init()``
    does; else start an isolated local instance bound to 127.0.0.1 with the driver slots, and
    without Ray Train's preemption watcher: one machine has no node to be drained, and in Ray
    2.60 the watcher prints an error-level ``core_worker.cc`` line for every trial."""
    if address:
        return {"address": address, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        return {"log_to_driver": True}
    return {
        "address": "local",
        "_node_ip_address": "127.0.0.1",
        "resources": {DRIVER_RESOURCE: max_concurrent},
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "runtime_env": LOCAL_RUNTIME_ENV,
    }


def start_ray(address: str | None, max_concurrent: int) -> None:
    """Connect to Ray as :func:`ray_init_kwargs` says (nothing when already connected)."""
    if ray.is_initialized():
        return
    check_ray_address(address)
    kwargs = ray_init_kwargs(address, max_concurrent)
    if "address" not in kwargs:
        log.info("joining the Ray cluster at RAY_ADDRESS=%s", os.environ["RAY_ADDRESS"])
    ray.init(**kwargs)


def _parent_run(settings: SweepSettings, searcher: str) -> SweepRun:
    """The sweep's MLflow parent run: created once, found again by name on ``resume``."""
    params = {
        "space": Path(settings.space_path).name,
        "num_samples": settings.num_samples,
        "scheduler": settings.scheduler,
        "metric": settings.metric,
        "mode": settings.mode,
        "workers_per_trial": settings.workers_per_trial,
        "gpus_per_trial": settings.gpus_per_trial,
        "seed": settings.seed,
    }
    return SweepRun.start(
        settings.tracking_uri,
        settings.experiment,
        settings.name,
        searcher=searcher,
        params=params,
        tags={},
        space_text=Path(settings.space_path).read_text(),
    )


def _start_parent(settings: SweepSettings, searcher: str) -> tuple[SweepRun, SweepSettings]:
    """The parent run, tagged with the sweep's Tune folder (``confirm`` reads the settings saved
    there), and the settings that now hold its tracking target."""
    parent = _parent_run(settings, searcher)
    parent.tag(TUNE_DIR_TAG, f"{settings.tune_dir}/{settings.name}")
    return parent, replace(settings, tracking=parent.target)


def evaluate_top(settings: SweepSettings) -> dict[str, str]:
    """Score the sweep's best ``eval_top_k`` finished trials (by its objective) on the
    evaluation sets, concurrently, each with its trial's resources; sets a trial already has
    are skipped. Returns trial id -> error for those that could not be evaluated."""
    from orchestrator.evaluation import EvaluationError, plan
    from orchestrator.ray_eval import evaluate_on_ray

    k, target = settings.eval_top_k, settings.target
    if k == 0:
        return {}
    rows = query_best(
        target.uri,
        target.experiment,
        OBJECTIVE,
        settings.mode,
        k or 10**6,
        target.parent_run_id,
    )
    jobs, failures = [], {}
    for row in rows:
        try:
            job = plan(target.uri, row["run_id"])
        except EvaluationError as err:
            failures[row["trial_id"]] = str(err)
            continue
        if job is not None:
            jobs.append(job)
    if jobs:
        names = ", ".join(job.trial_id for job in jobs)
        log.info("scoring the evaluation sets of the best %d trial(s): %s", len(jobs), names)
    outcome = evaluate_on_ray(jobs)
    failures |= {job.trial_id: outcome[job.run_id] for job in jobs if outcome[job.run_id]}
    return failures


def summarise(settings: SweepSettings, space: SearchSpace | None) -> dict[str, float]:
    """Log the sweep's summary on its parent run (see :mod:`orchestrator.sweep_summary`): the
    metrics, Optuna's study plots and, for a grid over temperatures, its heatmap, under
    ``plots/``. Returns the metrics."""
    from orchestrator.sweep_summary import (
        grid_heatmap,
        rebuild_study,
        record,
        study_plots,
        summary_metrics,
    )
    from orchestrator.tracking.sweeps import log_summary, trial_runs

    target = settings.target
    records = [
        record(r) for r in trial_runs(target.uri, target.experiment_id, target.parent_run_id)
    ]
    metrics = summary_metrics(records, settings.mode)
    study = rebuild_study(records, settings.mode, space.study_distributions() if space else None)
    with tempfile.TemporaryDirectory(prefix="supcon-summary-") as tmp:
        files, skipped = study_plots(study, Path(tmp), OBJECTIVE)
        if space is not None and space.is_grid:  # TPE's temperatures are not a grid's axis
            heatmap = grid_heatmap(
                records, Path(tmp) / "grid_heatmap.png", OBJECTIVE, settings.mode
            )
            files += [heatmap] if heatmap else []
        log_summary(target.uri, target.parent_run_id, metrics, files, "plots")
    for name, why in skipped.items():
        log.info("sweep %s: no %s plot (%s)", settings.name, name, why)
    return metrics


def _tracked_fit(
    parent: SweepRun, tuner: tune.Tuner, settings: SweepSettings, space: SearchSpace | None
) -> tuple[tune.ResultGrid, dict[str, str]]:
    """Run the search, score its best trials on the evaluation sets and log the summary; the
    parent run ends FINISHED (FAILED when a trial failed), or KILLED when interrupted."""
    try:
        results = tuner.fit()
        failures = evaluate_top(settings)
        summarise(settings, space)
    except BaseException:
        parent.finish("KILLED")
        raise
    parent.tag("supcon.eval_failures", str(len(failures)))
    parent.finish("FINISHED" if not results.errors else "FAILED")
    return results, failures


def run_sweep(
    space: SearchSpace, settings: SweepSettings, rungs: Rungs | None = None
) -> tuple[SweepSettings, tune.ResultGrid, dict[str, str]]:
    """Start the sweep's parent run, save the settings (with their tracking target) beside the
    Tune experiment, run it (ASHA's first rung at ``rungs``) and score its best trials. Returns
    those settings, Tune's results and the trials whose evaluation failed (trial id -> error)."""
    settings = replace(settings, decision_epochs=decision_epochs(settings.scheduler, rungs))
    parent, settings = _start_parent(settings, "grid" if space.is_grid else "optuna-tpe")
    settings.save()
    return settings, *_tracked_fit(parent, build_tuner(space, settings, rungs), settings, space)


def resume_sweep(
    folder: str, settings: SweepSettings, space: SearchSpace | None = None
) -> tuple[SweepSettings, tune.ResultGrid, dict[str, str]]:
    """``Tuner.restore``: finished trials stay, unfinished and errored ones restart from their
    checkpoints (their Train runs resume by name), the searcher continues from its state, and
    the same MLflow parent and trial runs continue; then the best trials are scored (sets
    already scored are not scored again)."""
    parent, settings = _start_parent(settings, settings.target.searcher)
    tuner = tune.Tuner.restore(
        folder, trainable=trainable(settings), resume_unfinished=True, resume_errored=True
    )
    return settings, *_tracked_fit(parent, tuner, settings, space)
