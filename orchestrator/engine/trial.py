"""``supcon-sweep trial --ray``: one trial through Ray Train, the code path of a sweep trial,
tracked in MLflow as a one-trial sweep."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.settings import SweepSettings
from orchestrator.tracking import Tracking
from orchestrator.train.trainer import fit_trial, torch_trainer


def run_single_trial(settings: SweepSettings) -> dict[str, Any]:
    """Run the trial (named ``settings.name``) and return its final metrics."""
    tracking = Tracking(settings.tracking)
    parent = tracking.start_sweep(
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
    rows = tracking.best(settings.metric, top=1, parent_run_id=parent.run_id)
    return rows[0]["metrics"] if rows else {}
