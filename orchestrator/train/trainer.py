"""A trial's Ray Train run: its worker group and its ``TorchTrainer``, shared by the sweep's
trials, ``trial --ray``, ``confirm``'s reruns and the evaluations (:mod:`orchestrator.train.
evaluator`)."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import ray
from ray.train import (
    CheckpointConfig,
    ControllerError,
    FailureConfig,
    LoggingConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.settings import PrefixPlan, SweepSettings, TrialResources, TrialSpec
from orchestrator.storage import prune_unregistered_checkpoints
from orchestrator.train.worker import SPEC_KEY, train_worker

log = logging.getLogger(__name__)

# Ray Train's own wait for a worker group's resources, per start attempt (60 s by default).
START_TIMEOUT_VAR = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class TrialStartError(RuntimeError):
    """A trial's workers could not get their resources in time; the message says what the
    trial asked for and what the cluster has."""


def start_attempts(timeout_s: float) -> int:
    """Ray Train's start attempts that fit in ``timeout_s``: it retries a worker group that
    timed out without limit by default (``FailureConfig.controller_failure_limit`` -1), so an
    infeasible request, a GPU no node has, waited forever."""
    per_attempt = float(os.environ.get(START_TIMEOUT_VAR, 60.0))
    return max(1, math.ceil(timeout_s / per_attempt))


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
    prefix: PrefixPlan | None = None,
) -> TorchTrainer:
    """The Ray Train run of one trial, named after it so that a rerun resumes from its storage.
    ``corpora_checked``: the driver checked the corpora's files, so the workers do not.
    ``run_tags``: set on the trial's MLflow run when it is created. ``decisions``: where the
    workers learn Tune's decision at ``settings.decision_epochs`` (None: they never wait).
    ``prefix``: the shared prefix it starts from and publishes (:mod:`orchestrator.train.
    prefixes`; None: it shares nothing).

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
        prefix=prefix,
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
            failure_config=FailureConfig(
                max_failures=settings.max_failures,
                controller_failure_limit=start_attempts(settings.start_timeout_s) - 1,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            # Ray Train's own lines ("Reporting training result ...", per rank per report)
            # bury Tune's table: warnings only, unless --verbose.
            logging_config=LoggingConfig(log_level="INFO" if settings.verbose else "WARNING"),
        ),
    )


def failure_line(err: Exception, marker: str | None = None) -> str:
    """The failed worker's own error line, not Ray's traceback around it: the last line of
    the first worker failure that names ``marker`` (the failing evaluation set), else its last
    line."""
    failures = getattr(err, "worker_failures", None) or {0: err}
    text = str(next(iter(failures.values())))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if marker and marker in line]
    return (named or lines or [type(err).__name__])[-1]


def _resources_text(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items()) if k in ("CPU", "GPU")}
    return ", ".join(f"{v:g} {k}" for k, v in shown.items()) or "none"


def start_failure(settings: SweepSettings, trial_id: str) -> str:
    """What a trial whose workers never started asked for, and what the cluster has."""
    res = settings.resources
    asked = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus / res.workers} if res.gpus else {})}
    return (
        f"trial {trial_id}: its {res.workers} worker(s) did not start within "
        f"{settings.start_timeout_s:g} s: each asks for {_resources_text(asked)}; the cluster "
        f"has {_resources_text(ray.cluster_resources())} in all, "
        f"{_resources_text(ray.available_resources())} free now (raise --start-timeout for an "
        "autoscaling cluster)"
    )


def trial_cause(err: BaseException | None) -> BaseException | None:
    """The exception that failed a trial, unwrapped from Ray's layers: the driver's own error
    (a Ray task error's cause) or, for a failed worker group, the first worker's."""
    for _ in range(4):  # RayTaskError -> TrainingFailedError -> RayTaskError -> cause
        if err is None:
            return None
        failures = getattr(err, "worker_failures", None)
        if failures:
            err = next(iter(failures.values()))
        elif getattr(err, "cause", None) is not None:
            err = err.cause
        else:
            return err
    return err


def fit_trial(trainer: TorchTrainer, settings: SweepSettings, trial_id: str) -> None:
    """Run the trial's Train run; then drop the checkpoints a dead worker group left behind.
    :class:`TrialStartError` when its workers could not get their resources in time."""
    try:
        trainer.fit()
    except ControllerError as err:
        if "WorkerGroupStartupTimeoutError" not in type(err.controller_failure).__name__:
            raise
        raise TrialStartError(start_failure(settings, trial_id)) from None
    stale = prune_unregistered_checkpoints(f"{settings.train_dir}/{trial_id}")
    if stale:
        log.info("trial %s: deleted %d unregistered checkpoint(s)", trial_id, len(stale))
