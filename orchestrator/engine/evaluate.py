"""Scoring finished trials on the evaluation sets, for the sweep (its best ``--eval-top-k``)
and for ``confirm`` (the sweep trials it confirms): one loop, each trial's evaluation planned
from its MLflow run (:func:`orchestrator.train.evaluation.plan`) and run on the cluster with
the trial's own resources (:func:`orchestrator.train.evaluator.evaluate_on_ray`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from orchestrator.tracking import Tracking
from orchestrator.train.evaluation import EvaluationError, plan
from orchestrator.train.evaluator import evaluate_on_ray

log = logging.getLogger(__name__)


def evaluate_rows(tracking: Tracking, rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Score the evaluation sets each run of ``rows`` (query rows) lacks, concurrently; sets
    a run already has are skipped. Returns trial id -> error for those that failed."""
    jobs, failures = [], {}
    for row in rows:
        try:
            job = plan(tracking, row["run_id"])
        except EvaluationError as err:
            failures[row["trial_id"]] = str(err)
            continue
        if job is not None:
            jobs.append(job)
    if jobs:
        names = ", ".join(job.trial_id for job in jobs)
        log.info("scoring the evaluation sets of %d trial(s): %s", len(jobs), names)
    outcome = evaluate_on_ray(jobs)
    return failures | {job.trial_id: outcome[job.run_id] for job in jobs if outcome[job.run_id]}
