"""The Tune side of a sweep: the trial driver Tune runs, what of its reports Tune sees, the
callbacks that print and close trials, the ASHA scheduler and the Tuner.

Each Tune trial is a small function trainable (the trial's driver, holding no CPU) that launches
one ``TorchTrainer`` (:mod:`orchestrator.train.trainer`) and relays its per-epoch reports to
Tune (:mod:`orchestrator.train.decisions`), so the searcher and the ASHA scheduler see every
epoch, and at ASHA's rungs the workers learn Tune's decision before they start the next epoch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.util.queue import Queue

from orchestrator.objective import OBJECTIVE
from orchestrator.settings import SweepSettings, TrackingTarget
from orchestrator.tracking import Tracking, error_text
from orchestrator.tracking.store import STOPPED_EARLY
from orchestrator.train.decisions import Decisions, ForwardReports, relay
from orchestrator.train.prefixes import claim_prefix, start_ledger
from orchestrator.train.resources import DRIVER_RESOURCE
from orchestrator.train.trainer import fit_trial, torch_trainer, trial_cause
from orchestrator.tune.prefix_tree import PrefixTree, build_tree, searched_candidates
from orchestrator.tune.scheduling import Rungs, run_order
from orchestrator.tune.searcher import check_searcher, search_algorithm
from orchestrator.tune.study import RecordTrials, rdb_storage
from search_spaces import SearchSpace
from trainer.config import ConfigError

GRID_KEY = "grid_point"


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
    (:mod:`orchestrator.train.decisions`)."""
    params = config.get(GRID_KEY, config)
    trial_id = tune.get_context().get_trial_id()
    prefix = claim_prefix(settings, trial_id, params) if settings.share_prefix else None
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
        prefix=prefix,
    )
    relay(
        lambda: fit_trial(trainer, settings, trial_id), results, decisions, settings.decision_epochs
    )


def failure_of(trial) -> str:
    """``Class: first line`` of what failed a Tune trial (its driver's or a worker's error),
    from the files Tune has just written in the trial's local folder (its storage copy is
    synced later)."""
    pickled, text = trial.pickled_error_file, trial.error_file
    cause = None
    if pickled and os.path.isfile(pickled):
        try:
            with open(pickled, "rb") as f:
                cause = trial_cause(cloudpickle.load(f))
        except Exception:  # an error that does not unpickle here: Tune's text trace instead
            cause = None
    if cause is None and text and os.path.isfile(text):
        lines = [line for line in Path(text).read_text("utf-8").splitlines() if line]
        cause = RuntimeError(lines[-1] if lines else "no error recorded")
    return error_text(cause if cause is not None else RuntimeError("no error recorded"))


def wall_s(trial) -> float:
    """Seconds since the trial first ran (a trial that failed reports no ``time_total_s``)."""
    result = trial.last_result or {}
    started = trial.run_metadata.start_time
    since = time.time() - started if started else 0.0
    return max(result.get("time_total_s", 0.0), since)


class TrialLines(tune.Callback):
    """One line per trial that ends: its id, params, objective, how it ended, its wall time;
    a failed one's cause on the next line."""

    def _print(self, trial, status: str) -> None:
        result = trial.last_result or {}
        config = trial.config.get(GRID_KEY, trial.config)
        params = " ".join(f"{k}={v}" for k, v in config.items())
        value = result.get(OBJECTIVE)
        shown = f"{value:.4g}" if isinstance(value, float) else "-"
        wall = wall_s(trial)
        print(f"trial {trial.trial_id} {status}: {params}  {OBJECTIVE}={shown}  {wall:.0f} s")
        if status == "FAILED":
            print(f"  cause: {failure_of(trial)}")

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
        self.tracking = Tracking(target)

    def _close(self, trial, status: str, reason: str) -> None:
        self.tracking.close_trial(trial.trial_id, status, reason)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "KILLED", STOPPED_EARLY)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        cause = failure_of(trial)
        self.tracking.close_trial(trial.trial_id, "FAILED", "trial errored", error=cause)


class ReleasePrefixes(tune.Callback):
    """Tells the sweep's prefix ledger that a trial ended (finished, stopped early or failed
    for good): what it promised and did not publish is free, so a trial waiting for it trains
    that prefix itself. Holds the ledger's name, so it survives Tune's pickling."""

    def __init__(self, ledger_name: str) -> None:
        self.ledger_name = ledger_name

    def _ended(self, trial) -> None:
        import ray

        with contextlib.suppress(ValueError):  # no ledger (it ended with its sweep): nothing
            ray.get_actor(self.ledger_name).ended.remote(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)


def grid_tree(space: SearchSpace, s: SweepSettings, rungs: Rungs | None) -> PrefixTree:
    """A grid's shared-prefix tree over :func:`~orchestrator.tune.scheduling.run_order`
    (:mod:`orchestrator.tune.prefix_tree`): its points in prefix waves, and the ledger's plan."""
    points = run_order(space, s.scheduler, rungs, s.seed)
    return build_tree(points, s.base, s.workers_per_trial)


def grid_order(space: SearchSpace, s: SweepSettings, rungs: Rungs | None) -> list[dict[str, Any]]:
    """A grid's points in the order its trials start: :func:`~orchestrator.tune.scheduling.
    run_order`, in prefix waves when the sweep shares prefixes."""
    if not s.share_prefix:
        return run_order(space, s.scheduler, rungs, s.seed)
    return grid_tree(space, s, rungs).points


def open_ledger(space: SearchSpace | None, s: SweepSettings, rungs: Rungs | None) -> Any:
    """The sweep's prefix ledger actor (None when it does not share prefixes): a grid's tree
    as its plan, or a sampled space's publishing epochs. Without the space (a resumed sweep
    whose file is gone) trials still start from the prefixes already published."""
    if not s.share_prefix:
        return None
    if space is not None and space.is_grid:
        return start_ledger(s, grid_tree(space, s, rungs).plan(), frozenset())
    candidates = searched_candidates(space, s.base)[0] if space is not None else frozenset()
    return start_ledger(s, None, candidates)


def check_resumable(folder: str) -> None:
    """ConfigError naming ``folder`` when it holds no Tune state to restore (``tuner.pkl``):
    checked before ``resume`` touches the sweep's MLflow run."""
    if not tune.Tuner.can_restore(folder):
        raise ConfigError(
            f"{folder} holds no Tune state to resume (no tuner.pkl): the sweep's driver died "
            "before Tune saved it, or this is not the sweep's Tune folder (TUNE_DIR/NAME); "
            "start the sweep again instead"
        )


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
    """The Tuner's param space and config: a grid's points in :func:`~orchestrator.tune.
    scheduling.run_order`, or the named searcher's suggestions (:mod:`orchestrator.tune.
    searcher`). Tune selects on :data:`OBJECTIVE` (the sweep's metric, summarised per trial),
    which the searcher, the scheduler and Tune's strict metric check all read."""
    common = {
        "metric": OBJECTIVE,
        "mode": s.mode,
        "scheduler": _scheduler(s, rungs),
        "max_concurrent_trials": s.max_concurrent,
    }
    searcher = check_searcher(s.searcher or None, space)
    study = {}
    if s.optuna_storage:
        study = {"storage": rdb_storage(s.optuna_storage), "study_name": s.study_name}
    algorithm = search_algorithm(searcher, space, OBJECTIVE, s.mode, s.seed, **study)
    if algorithm is None:
        param_space = {GRID_KEY: tune.grid_search(grid_order(space, s, rungs))}
        return param_space, tune.TuneConfig(num_samples=1, **common)
    limited = ConcurrencyLimiter(algorithm, max_concurrent=s.max_concurrent)
    return {}, tune.TuneConfig(num_samples=s.num_samples, search_alg=limited, **common)


def build_tuner(
    space: SearchSpace, settings: SweepSettings, rungs: Rungs | None = None
) -> tune.Tuner:
    param_space, config = tune_config(space, settings, rungs)
    callbacks = [CloseTrialRuns(settings.target), TrialLines()]
    if settings.share_prefix:
        callbacks.append(ReleasePrefixes(settings.ledger_name))
    if settings.optuna_storage and config.search_alg is None:  # a grid: record its trials
        distributions = space.study_distributions()
        url, name = settings.optuna_storage, settings.study_name
        callbacks.append(RecordTrials(url, name, settings.mode, distributions, GRID_KEY))
    return tune.Tuner(
        trainable(settings),
        param_space=param_space,
        tune_config=config,
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.tune_dir,
            callbacks=callbacks,
            verbose=2 if settings.verbose else 1,
        ),
    )
