"""The sweep: its MLflow parent run, the Tuner's search (:mod:`orchestrator.tune.tuner`), the
scoring of its best trials on the evaluation sets, and its summary.

``run_sweep`` starts one; ``resume_sweep`` continues one from its Tune folder, with the same
MLflow parent and trial runs.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.exceptions import RayActorError

from orchestrator.engine.evaluate import evaluate_rows
from orchestrator.objective import OBJECTIVE
from orchestrator.reports.sweep_summary import (
    grid_heatmap,
    rebuild_study,
    record,
    study_plots,
    summary_metrics,
)
from orchestrator.settings import SweepSettings
from orchestrator.storage import delete_folder
from orchestrator.tracking import TUNE_DIR_TAG, SweepRun, Tracking
from orchestrator.train.prefixes import SHARED_EPOCHS, SHARED_SECONDS
from orchestrator.tune.scheduling import Rungs, decision_epochs
from orchestrator.tune.searcher import check_searcher, label
from orchestrator.tune.tuner import build_tuner, check_resumable, open_ledger, trainable
from search_spaces import SearchSpace

log = logging.getLogger(__name__)


def _start_parent(settings: SweepSettings, searcher: str) -> tuple[SweepRun, SweepSettings]:
    """The sweep's MLflow parent run (created once, found again by name on ``resume``), tagged
    with the sweep's Tune folder (``confirm`` reads the settings saved there), and the settings
    that now hold its tracking target."""
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
    parent = Tracking(settings.tracking).start_sweep(
        settings.name,
        searcher=searcher,
        params=params,
        tags={},
        space_text=Path(settings.space_path).read_text(),
    )
    parent.tag(TUNE_DIR_TAG, f"{settings.tune_dir}/{settings.name}")
    return parent, replace(settings, tracking=parent.target)


def evaluate_top(settings: SweepSettings) -> dict[str, str]:
    """Score the sweep's best ``eval_top_k`` finished trials (by its objective) on the
    evaluation sets, concurrently, each with its trial's resources; sets a trial already has
    are skipped. Returns trial id -> error for those that could not be evaluated."""
    k = settings.eval_top_k
    if k == 0:
        return {}
    tracking = Tracking(settings.target)
    rows = tracking.best(OBJECTIVE, settings.mode, k or 10**6, settings.target.parent_run_id)
    return evaluate_rows(tracking, rows)


def prefix_figures(
    runs: list, gpus_per_trial: float, stats: dict[str, int] | None
) -> dict[str, float]:
    """What sharing prefixes saved: the stage-1 trial-epochs the forks did not train
    (``sweep/trial_epochs_saved``), the GPU-hours of those epochs when trials had GPUs, and
    the prefix checkpoints kept on the way (how many, at most at once, their peak size)."""
    epochs = sum(r.data.metrics.get(SHARED_EPOCHS, 0.0) for r in runs)
    seconds = sum(r.data.metrics.get(SHARED_SECONDS, 0.0) for r in runs)
    if stats is None and not epochs:
        return {}
    out = {"sweep/trial_epochs_saved": float(epochs)}
    if stats is not None:
        out |= {
            "sweep/prefix_checkpoints": float(stats["published"]),
            "sweep/prefix_checkpoints_peak": float(stats["peak_count"]),
            "sweep/prefix_storage_peak_gb": stats["peak_bytes"] / 1e9,
        }
    if gpus_per_trial:
        out["sweep/gpu_hours_saved"] = seconds * gpus_per_trial / 3600
    return out


def summarise(
    settings: SweepSettings, space: SearchSpace | None, prefixes: dict[str, int] | None = None
) -> dict[str, float]:
    """Log the sweep's summary on its parent run (see :mod:`orchestrator.reports.
    sweep_summary`): the metrics, Optuna's study plots and, for a grid over temperatures, its
    heatmap, under ``plots/``; ``prefixes``: the ledger's counts, for :func:`prefix_figures`.
    Returns the metrics."""
    tracking = Tracking(settings.target)
    runs = tracking.trial_runs()
    records = [record(r) for r in runs]
    metrics = summary_metrics(records, settings.mode)
    metrics |= prefix_figures(runs, settings.gpus_per_trial, prefixes)
    study = rebuild_study(records, settings.mode, space.study_distributions() if space else None)
    with tempfile.TemporaryDirectory(prefix="supcon-summary-") as tmp:
        files, skipped = study_plots(study, Path(tmp), OBJECTIVE)
        if space is not None and space.is_grid:  # TPE's temperatures are not a grid's axis
            heatmap = grid_heatmap(
                records, Path(tmp) / "grid_heatmap.png", OBJECTIVE, settings.mode
            )
            files += [heatmap] if heatmap else []
        tracking.log_summary(settings.target.parent_run_id, metrics, files, "plots")
    for name, why in skipped.items():
        log.info("sweep %s: no %s plot (%s)", settings.name, name, why)
    return metrics


def _clean_prefixes(ledger: Any, settings: SweepSettings) -> dict[str, int] | None:
    """Delete the prefix checkpoints the sweep still keeps; the ledger's counts (None without
    sharing, or when the ledger was lost: its folder is then deleted here)."""
    if ledger is None:
        return None
    try:
        return ray.get(ledger.cleanup.remote())
    except RayActorError as err:
        log.warning("sweep %s: its prefix ledger is gone (%s)", settings.name, err)
        delete_folder(settings.prefixes_dir)
        return None


def _tracked_fit(
    parent: SweepRun,
    tuner: tune.Tuner,
    settings: SweepSettings,
    space: SearchSpace | None,
    ledger: Any = None,
) -> tuple[tune.ResultGrid, dict[str, str]]:
    """Run the search, delete the prefix checkpoints ``ledger`` still keeps, score its best
    trials on the evaluation sets and log the summary; the parent run ends FINISHED (FAILED
    when a trial failed), or KILLED when interrupted (the prefix checkpoints then stay for
    ``resume``)."""
    try:
        results = tuner.fit()
        prefixes = _clean_prefixes(ledger, settings)
        failures = evaluate_top(settings)
        metrics = summarise(settings, space, prefixes)
    except BaseException:
        parent.finish("KILLED")
        raise
    if metrics.get("sweep/trial_epochs_saved"):
        print(
            f"shared prefixes: {metrics['sweep/trial_epochs_saved']:.0f} stage-1 trial-epochs "
            "were not trained again (sweep/trial_epochs_saved)",
            file=sys.stderr,
        )
    parent.tag("supcon.eval_failures", str(len(failures)))
    parent.finish("FINISHED" if not results.errors else "FAILED")
    return results, failures


def run_sweep(
    space: SearchSpace, settings: SweepSettings, rungs: Rungs | None = None
) -> tuple[SweepSettings, tune.ResultGrid, dict[str, str]]:
    """Start the sweep's parent run, save the settings (with their tracking target) beside the
    Tune experiment, run it (ASHA's first rung at ``rungs``) and score its best trials. Returns
    those settings, Tune's results and the trials whose evaluation failed (trial id -> error)."""
    settings = replace(
        settings,
        decision_epochs=decision_epochs(settings.scheduler, rungs),
        searcher=check_searcher(settings.searcher or None, space),
    )
    parent, settings = _start_parent(settings, label(settings.searcher))
    settings.save()
    ledger = open_ledger(space, settings, rungs)
    tuner = build_tuner(space, settings, rungs)
    return settings, *_tracked_fit(parent, tuner, settings, space, ledger)


def resume_sweep(
    folder: str, settings: SweepSettings, space: SearchSpace | None = None
) -> tuple[SweepSettings, tune.ResultGrid, dict[str, str]]:
    """``Tuner.restore``: finished trials stay, unfinished and errored ones restart from their
    checkpoints (their Train runs resume by name), the searcher continues from its state, and
    the same MLflow parent and trial runs continue; then the best trials are scored (sets
    already scored are not scored again)."""
    check_resumable(folder)
    parent, settings = _start_parent(settings, settings.target.searcher)
    try:
        tuner = tune.Tuner.restore(
            folder, trainable=trainable(settings), resume_unfinished=True, resume_errored=True
        )
    except BaseException:
        parent.undo_reopen()
        raise
    # the grid's order hangs on whether ASHA could stop trials: it did when it had rungs
    first = settings.decision_epochs[:1]
    rungs = Rungs(first[0], None, settings.base.stage1.epochs) if first else None
    ledger = open_ledger(space, settings, rungs)
    return settings, *_tracked_fit(parent, tuner, settings, space, ledger)
