"""The one way the orchestrator reaches MLflow: a :class:`Tracking` bound to a tracking target.

It holds one :class:`~mlflow.tracking.MlflowClient` for the target's store (built on first use,
not pickled: a ``Tracking`` crosses the Ray boundary as its target), and every read and write
of the sweeps, trials, evaluations and confirmations goes through its methods. Reads of an
embedded (SQLite) store that does not exist fail with :class:`TrackingError` instead of
creating it empty. Writes into a trial's run go through a :class:`TrialTracker` (buffered, and
retried through an MLflow outage), whoever writes: the trial's rank 0 or a later evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.settings import TrackingTarget
from orchestrator.tracking import query, runs, sweeps
from orchestrator.tracking.store import TrackingError, existing_store, safe_uri

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class Tracking:
    """MLflow at ``target``: its store (``uri``), experiment and, once a sweep's parent run
    exists, that run. Queries default to the target's parent run where they take one."""

    def __init__(self, target: TrackingTarget) -> None:
        self.target = target
        self._client: MlflowClient | None = None

    @classmethod
    def at(cls, uri: str, experiment: str) -> Tracking:
        """The store and experiment only (before any sweep's parent run is known)."""
        return cls(TrackingTarget(uri, experiment))

    def __getstate__(self) -> dict[str, Any]:
        return {"target": self.target, "_client": None}

    @property
    def uri(self) -> str:
        return self.target.uri

    @property
    def experiment(self) -> str:
        return self.target.experiment

    @property
    def client(self) -> MlflowClient:
        """The client, for writes (an embedded store is created on first use)."""
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def reader(self) -> MlflowClient:
        """The client, for reads: TrackingError when the embedded store does not exist."""
        if self._client is None:
            self._client = existing_store(self.uri)
        return self._client

    def experiment_id(self) -> str:
        """The target's experiment id, looked up when the target does not hold it."""
        return self.target.experiment_id or query.find_experiment(
            self.reader, self.uri, self.experiment
        )

    # Reads.

    def best(
        self,
        metric: str = "eval/pooled_mean/eer",
        mode: str = "min",
        top: int = 5,
        parent_run_id: str | None = None,
        *,
        confirmations: bool = True,
    ) -> list[dict[str, Any]]:
        """:func:`~orchestrator.tracking.query.query_best` in this experiment."""
        return query.query_best(
            self.reader,
            self.uri,
            self.experiment,
            metric,
            mode,
            top,
            parent_run_id,
            confirmations=confirmations,
        )

    def configured_runs(self) -> list[dict[str, Any]]:
        return query.configured_runs(self.reader, self.uri, self.experiment)

    def sweep_objective(self) -> tuple[str, str]:
        """The experiment's sweeps' (metric, mode); the default when the store is missing
        (the query that follows says so; creating it here would hide that)."""
        try:
            return query.sweep_objective(self.reader, self.experiment)
        except TrackingError:
            return query.DEFAULT_OBJECTIVE

    def find_sweep(
        self, *, name: str | None = None, parent_run_id: str | None = None
    ) -> tuple[str, sweeps.SweepRef]:
        return sweeps.find_sweep(
            self.reader, self.uri, self.experiment, name=name, parent_run_id=parent_run_id
        )

    def finished_trials(self, parent_run_id: str | None = None) -> list[dict[str, Any]]:
        """Every finished trial run under ``parent_run_id`` (default: the target's)."""
        parent = parent_run_id or self.target.parent_run_id
        return sweeps.finished_trials(self.reader, self.experiment_id(), parent)

    def trial_runs(self, parent_run_id: str | None = None) -> list[Any]:
        """Every trial run under ``parent_run_id`` (default: the target's), any status."""
        parent = parent_run_id or self.target.parent_run_id
        return sweeps.trial_runs(self.reader, self.experiment_id(), parent)

    def run(self, run_id: str) -> Any:
        """The MLflow run ``run_id``; LookupError when the store has none, TrackingError when
        the store cannot answer."""
        try:
            return self.reader.get_run(run_id)
        except MlflowException as err:
            if err.error_code == NOT_FOUND:
                raise LookupError(f"no MLflow run {run_id} in {safe_uri(self.uri)}") from None
            raise TrackingError(f"MLflow at {safe_uri(self.uri)}: {str(err)[:200]}") from None

    def experiment_name(self, experiment_id: str) -> str:
        return self.reader.get_experiment(experiment_id).name

    def last_step(self, run_id: str, key: str) -> int:
        """The largest step at which ``run_id`` logged ``key`` (0 when it never did)."""
        history = self.reader.get_metric_history(run_id, key)
        return max((m.step for m in history), default=0)

    def download_scores(self, run_id: str, set_name: str, folder: Path) -> Path:
        return sweeps.download_scores(self.reader, run_id, set_name, folder)

    # Writes.

    def start_sweep(
        self,
        name: str,
        *,
        searcher: str,
        params: dict[str, Any],
        tags: dict[str, str],
        space_text: str | None,
    ) -> runs.SweepRun:
        """Create (or continue) the parent run of sweep ``name``; see :class:`SweepRun`."""
        return runs.SweepRun.start(
            self.client,
            self.uri,
            self.experiment,
            name,
            searcher=searcher,
            params=params,
            tags=tags,
            space_text=space_text,
        )

    def open_trial(
        self,
        trial_id: str,
        params: dict[str, Any],
        *,
        spool: Path | None = None,
        patience: float = 300,
        tags: Mapping[str, str] | None = None,
    ) -> runs.TrialTracker:
        """The run of ``trial_id`` under the target's parent run, created or continued."""
        return runs.TrialTracker.open(
            self.client, self.target, trial_id, params, spool, patience, tags
        )

    def writer(
        self, run_id: str, *, spool: Path | None = None, patience: float = 300
    ) -> runs.TrialTracker:
        """A buffered, retrying writer into the existing run ``run_id`` (an evaluation's)."""
        return runs.TrialTracker(self.client, run_id, spool, patience)

    def close_trial(
        self, trial_id: str, status: str, reason: str, error: str | None = None
    ) -> bool:
        """End the run of ``trial_id`` under the target's parent run, unless it has ended;
        ``error``: a failure's cause, tagged on the run either way."""
        return runs.close_trial(self.client, self.target, trial_id, status, reason, error)

    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        sweeps.tag_run(self.client, run_id, tags)

    def log_summary(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        files: list[Path],
        artifact_path: str | None = None,
    ) -> None:
        """Log ``metrics`` (step 0) and upload ``files`` to ``run_id``."""
        sweeps.log_summary(self.client, run_id, metrics, files, artifact_path)
