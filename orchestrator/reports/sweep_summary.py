"""What a sweep's parent run shows when the sweep ends (and again on ``resume``): the best
objective, how many trials finished, were stopped early or failed, the trials' compute, and
Optuna's study plots.

The study is rebuilt from the trial runs in MLflow (their swept params and ``sweep/objective``),
so grids, TPE sweeps and resumed sweeps get the same plots from the same source, and the plots
agree with what ``best`` lists. Plots use Optuna's own matplotlib visualisations; a grid over the
loss temperature also gets the paper's ablation figure: the objective over similarity x
temperature, one panel per queue size.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState, create_trial

from orchestrator.objective import OBJECTIVE
from orchestrator.settings import TrialResources
from orchestrator.tracking import RESOURCES_TAG, decode_param
from orchestrator.tracking.store import END_REASON_TAG, STOPPED_EARLY, TRIAL_TAG

log = logging.getLogger(__name__)

# MLflow status (and the reason a KILLED run was closed with) -> what the summary counts.
FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"


@dataclass(frozen=True)
class TrialRecord:
    """One trial run of the sweep: its swept params, its objective (None when it has none),
    what became of it, and its wall time (run start to end) with the resources it held."""

    trial_id: str
    params: Mapping[str, Any]
    objective: float | None
    outcome: str | None  # FINISHED, STOPPED, FAILED; None while running or interrupted
    wall_s: float
    resources: TrialResources
    started: int


def record(run: Any) -> TrialRecord:
    """The :class:`TrialRecord` of an MLflow trial run (``mlflow.entities.Run``)."""
    info, data = run.info, run.data
    outcome = {"FINISHED": FINISHED, "FAILED": FAILED}.get(info.status)
    if info.status == "KILLED" and data.tags.get(END_REASON_TAG) == STOPPED_EARLY:
        outcome = STOPPED
    resources = data.tags.get(RESOURCES_TAG)
    end = info.end_time or info.start_time
    return TrialRecord(
        trial_id=data.tags.get(TRIAL_TAG, info.run_id),
        params={k: decode_param(v) for k, v in data.params.items()},
        objective=data.metrics.get(OBJECTIVE),
        outcome=outcome,
        wall_s=max(0.0, (end - info.start_time) / 1000),
        resources=TrialResources.from_json(resources) if resources else TrialResources(1, 0, 1.0),
        started=info.start_time,
    )


def summary_metrics(records: Sequence[TrialRecord], mode: str) -> dict[str, float]:
    """``sweep/best_objective``, ``sweep/trials_{finished,stopped,failed}`` and
    ``sweep/trial_{gpu,cpu}_hours`` (each trial's wall time x its GPUs, or x its CPUs)."""
    values = [r.objective for r in records if r.objective is not None]
    out = {
        f"sweep/trials_{k}": float(sum(r.outcome == k for r in records))
        for k in (FINISHED, STOPPED, FAILED)
    }
    if values:
        out["sweep/best_objective"] = min(values) if mode == "min" else max(values)
    gpu = sum(r.wall_s * r.resources.gpus for r in records) / 3600
    cpu = sum(r.wall_s * r.resources.workers * r.resources.cpus_per_worker for r in records) / 3600
    if any(r.resources.gpus for r in records):
        out["sweep/trial_gpu_hours"] = gpu
    out["sweep/trial_cpu_hours"] = cpu
    return out


def swept_keys(records: Sequence[TrialRecord]) -> list[str]:
    """The params whose value differs between trials."""
    keys = sorted({k for r in records for k in r.params})
    return [k for k in keys if len({repr(r.params.get(k)) for r in records}) > 1]


def rebuild_study(
    records: Sequence[TrialRecord],
    mode: str,
    distributions: Mapping[str, BaseDistribution] | None = None,
) -> optuna.Study:
    """An in-memory Optuna study of the sweep's trials in start order: COMPLETE with their
    objective (a trial ASHA stopped included, with its best epoch, as Tune told the searcher),
    FAIL for failed ones. ``distributions`` (the space's) default to the values seen."""
    keys = swept_keys(records)
    dists = dict(distributions or {})
    for key in keys:
        if key not in dists:
            seen = sorted({r.params[key] for r in records if key in r.params}, key=repr)
            dists[key] = CategoricalDistribution(seen)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for rec in sorted(records, key=lambda r: r.started):
        params = {k: rec.params[k] for k in keys if k in rec.params}
        if rec.objective is not None and math.isfinite(rec.objective):
            trial = create_trial(
                value=rec.objective, params=params, distributions={k: dists[k] for k in params}
            )
        elif rec.outcome == FAILED:
            trial = create_trial(
                state=TrialState.FAIL, params=params, distributions={k: dists[k] for k in params}
            )
        else:
            continue
        study.add_trial(trial)
    return study


_PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "slice": optuna.visualization.matplotlib.plot_slice,
}


def draw(study: optuna.Study, name: str, target_name: str) -> plt.Figure:
    """Optuna's ``name`` plot of ``study`` (a key of ``_PLOTS``). Log-scaled x axes are labelled
    at 1, 2 and 5 per decade, in plain numbers: Optuna's slice plot labels every minor tick of a
    temperature axis as 2x10^-1, 3x10^-1, ..., which print on top of each other."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
        axes = _PLOTS[name](study, target_name=target_name)
    fig = np.ravel(axes)[0].figure
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    return fig


def study_plots(
    study: optuna.Study, folder: Path, target_name: str
) -> tuple[list[Path], dict[str, str]]:
    """Optuna's plots of ``study`` as PNGs in ``folder``; returns the files and, per plot that
    could not be drawn (e.g. importances of fewer than two trials), why."""
    folder.mkdir(parents=True, exist_ok=True)
    files, skipped = [], {}
    for name in _PLOTS:
        try:
            fig = draw(study, name, target_name)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            skipped[name] = str(err).splitlines()[0] if str(err) else type(err).__name__
            continue
        files.append(folder / f"{name}.png")
        fig.savefig(files[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return files, skipped


def grid_heatmap(
    records: Sequence[TrialRecord], path: Path, target_name: str, mode: str = "min"
) -> Path | None:
    """The objective over similarity (rows) x temperature (columns), one panel per queue size:
    the paper's ablation figure; None unless the trials differ in temperature. A cell whose
    value comes from a trial ASHA stopped (its objective at the rung, not at its end) is
    hatched and starred, so it is not read as a finished trial's."""
    rows = [r for r in records if r.objective is not None and "loss.temperature" in r.params]
    if len({r.params["loss.temperature"] for r in rows}) < 2:
        return None
    temps = sorted({r.params["loss.temperature"] for r in rows})
    sims = sorted({str(r.params.get("loss.similarity", "cosine")) for r in rows})
    queues = sorted({r.params.get("queue.size", 0) for r in rows})
    values = [r.objective for r in rows]
    lo, hi = min(values), max(values)
    any_stopped = False
    with plt.style.context("default"):
        size = (1.5 + 1.0 * len(temps) * len(queues), 1.4 + 0.5 * len(sims))
        fig, axes = plt.subplots(1, len(queues), figsize=size, squeeze=False, sharey=True)
        for ax, queue in zip(axes[0], queues, strict=True):
            grid, stopped = heatmap_panel(rows, queue, sims, temps, mode)
            image = ax.imshow(grid, cmap="viridis_r", vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
            for (i, j), value in np.ndenumerate(grid):
                if np.isnan(value):
                    continue
                dark = (value - lo) > 0.5 * (hi - lo)
                star = "*" if stopped[i, j] else ""
                color = "white" if dark else "black"
                ax.text(
                    j, i, f"{value:.3g}{star}", ha="center", va="center", fontsize=8, color=color
                )
                if stopped[i, j]:
                    any_stopped = True
                    ax.add_patch(
                        plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", lw=0)
                    )
            ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
            ax.set_yticks(range(len(sims)), sims)
            ax.set_xlabel("temperature")
            ax.set_title(f"queue.size {queue}", fontsize=10)
        fig.colorbar(image, ax=axes[0].tolist(), label=target_name)
        note = "; * hatched: stopped early by ASHA (its value at the rung)" if any_stopped else ""
        fig.suptitle(
            f"{target_name} per grid point (the best where a point ran twice){note}", fontsize=10
        )
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return path


def heatmap_panel(
    rows: Sequence[TrialRecord], queue: Any, sims: list[str], temps: list[Any], mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, temperatures) objectives of the trials with queue size ``queue``, and
    whether each cell's value is a stopped trial's."""
    grid = np.full((len(sims), len(temps)), np.nan)
    stopped = np.zeros(grid.shape, dtype=bool)
    sign = 1.0 if mode == "min" else -1.0
    for r in rows:
        if r.params.get("queue.size", 0) == queue:
            i = sims.index(str(r.params.get("loss.similarity", "cosine")))
            j = temps.index(r.params["loss.temperature"])
            if np.isnan(grid[i, j]) or sign * r.objective < sign * grid[i, j]:
                grid[i, j], stopped[i, j] = r.objective, r.outcome == STOPPED
    return grid, stopped
