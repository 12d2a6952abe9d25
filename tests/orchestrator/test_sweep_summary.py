"""The sweep summary from known trial records: counts, compute, the rebuilt Optuna study and its
plots, the grid heatmap. No Ray, no MLflow (the sweep tests check the parent run itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from orchestrator.reports.sweep_summary import (
    FAILED,
    FINISHED,
    STOPPED,
    TrialRecord,
    draw,
    grid_heatmap,
    heatmap_panel,
    rebuild_study,
    study_plots,
    summary_metrics,
)
from orchestrator.settings import TrialResources

CPU2 = TrialResources(workers=2, gpus=0, cpus_per_worker=0.5)


def _records() -> list[TrialRecord]:
    """A paper-like grid: 2 similarities x 3 temperatures x 2 queue sizes, one failed trial."""
    out = []
    for i, (sim, temp, queue) in enumerate(
        (s, t, q) for s in ("cosine", "angular") for t in (0.07, 0.1, 0.3) for q in (0, 4096)
    ):
        objective = 0.05 + 0.1 * temp + (0.02 if sim == "angular" else 0) - (0.01 if queue else 0)
        outcome = FAILED if i == 5 else STOPPED if i % 4 == 3 else FINISHED
        out.append(
            TrialRecord(
                trial_id=f"t{i}",
                params={
                    "loss.similarity": sim,
                    "loss.temperature": temp,
                    "queue.size": queue,
                    "seed": 0,
                },
                objective=None if outcome == FAILED else objective,
                outcome=outcome,
                wall_s=1800.0,
                resources=CPU2,
                started=i,
            )
        )
    return out


def test_summary_counts_outcomes_best_objective_and_compute() -> None:
    records = _records()
    metrics = summary_metrics(records, "min")
    assert metrics["sweep/trials_finished"] == 8
    assert metrics["sweep/trials_stopped"] == 3
    assert metrics["sweep/trials_failed"] == 1
    assert metrics["sweep/best_objective"] == pytest.approx(0.05 + 0.007 - 0.01)
    assert metrics["sweep/trial_cpu_hours"] == pytest.approx(12 * 0.5 * 2 * 0.5)
    assert "sweep/trial_gpu_hours" not in metrics
    gpu = [TrialRecord("g", {}, 0.1, FINISHED, 3600.0, TrialResources(4, 4, 8.0), 0)]
    assert summary_metrics(gpu, "max")["sweep/trial_gpu_hours"] == 4


def test_study_is_rebuilt_in_start_order_with_the_spaces_distributions(tmp_path: Path) -> None:
    records = _records()[::-1]  # MLflow's order is not the trials' order
    dists = {"loss.temperature": FloatDistribution(0.05, 0.5, log=True)}
    study = rebuild_study(records, "min", dists)
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 1
    assert len(study.trials) == 12
    assert study.trials[0].params == {
        "loss.similarity": "cosine",
        "loss.temperature": 0.07,
        "queue.size": 0,
    }
    assert study.trials[0].distributions["loss.temperature"] == dists["loss.temperature"]
    assert study.best_value == pytest.approx(0.047)

    files, skipped = study_plots(study, tmp_path, "sweep/objective")
    names = {f.stem for f in files}
    assert names | set(skipped) == {
        "optimization_history",
        "param_importances",
        "parallel_coordinate",
        "slice",
    }
    assert {"optimization_history", "slice"} <= names, skipped
    assert all(f.stat().st_size > 5000 for f in files)


def test_the_slice_plots_temperature_axis_has_readable_labels() -> None:
    """Temperatures 0.07-0.3 on a log axis: Optuna labels 2x10^-1, 3x10^-1, ... on top of each
    other; the saved plot labels 0.05, 0.1, 0.2, 0.5 and nothing in between."""
    import matplotlib.pyplot as plt

    dists = {"loss.temperature": FloatDistribution(0.05, 0.5, log=True)}
    fig = draw(rebuild_study(_records(), "min", dists), "slice", "sweep/objective")
    fig.canvas.draw()
    log_axes = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(log_axes) == 1
    minor = [t.get_text() for t in log_axes[0].xaxis.get_minorticklabels()]
    major = [t.get_text() for t in log_axes[0].xaxis.get_majorticklabels()]
    assert not any(minor) and {"0.1", "0.2"} <= set(major), (minor, major)
    plt.close(fig)


def test_grid_heatmap_has_one_panel_per_queue_size(tmp_path: Path) -> None:
    path = grid_heatmap(_records(), tmp_path / "heat.png", "sweep/objective")
    assert path is not None and path.stat().st_size > 5000
    one_temperature = [r for r in _records() if r.params["loss.temperature"] == 0.1]
    assert grid_heatmap(one_temperature, tmp_path / "none.png", "x") is None


def test_the_heatmap_marks_cells_of_stopped_trials() -> None:
    """A stopped trial's objective is its value at the rung, not at its end: its cell says so."""
    records = [r for r in _records() if r.objective is not None]
    temps = sorted({r.params["loss.temperature"] for r in records})
    sims = sorted({r.params["loss.similarity"] for r in records})
    for queue in (0, 4096):
        grid, stopped = heatmap_panel(records, queue, sims, temps, "min")
        for r in records:
            if r.params["queue.size"] == queue:
                i = sims.index(r.params["loss.similarity"])
                j = temps.index(r.params["loss.temperature"])
                assert grid[i, j] == r.objective
                assert stopped[i, j] == (r.outcome == STOPPED)
        assert stopped.any() == (queue == 4096)  # the records' stopped trials have a queue
