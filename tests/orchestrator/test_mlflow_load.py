"""The team's MLflow server under concurrent trial-shaped writers loses nothing: a trimmed
``bench/mlflow_load.py`` (one ``supcon-sweep cluster server``, PostgreSQL + basic-auth, 16
writers through the trials' own ``TrialTracker``), checked by an exact count in the database.

The old single-worker SQLite server deadlocked at ~24 writers (points lost, runs left RUNNING);
the bench compares the two, this keeps the PostgreSQL one honest. No Ray."""

from __future__ import annotations

import pytest

from bench.mlflow_load import count_stored, run_load

pytestmark = pytest.mark.slow

WRITERS, EPOCHS, METRICS = 16, 20, 20


def test_concurrent_writers_lose_nothing(team_server, tmp_path) -> None:
    """16 writers, each 20 synchronous log_metrics of 20 metrics, 3 artifacts and finish():
    every point sent is in the database, no writer saw an error, every run ended."""
    server = team_server  # the session's `cluster server` (tests/orchestrator/conftest.py)
    load = run_load(
        server.url,
        WRITERS,
        epochs=EPOCHS,
        metrics=METRICS,
        deadline=120,
        grace=60,
        processes=4,
        env=server.env,
        work=tmp_path,
    )
    assert load.errors == 0, load.error_samples
    assert not load.deadline_hit, f"{load.stopped} stopped, {load.unfinished} unfinished"
    assert load.sent == WRITERS * EPOCHS * METRICS
    stored = count_stored(server.db_uri, load.parent_run_id, server.passfile)
    assert stored.points == load.sent
    assert stored.runs == WRITERS
    assert stored.running == 0
