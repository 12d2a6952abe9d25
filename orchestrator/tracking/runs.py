"""The sweep's parent run and each trial's nested run (written by rank 0 only)."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from orchestrator.settings import TrackingTarget
from orchestrator.tracking.store import (
    AUTH_ERRORS,
    CODE_TAG,
    END_REASON_TAG,
    END_STATUSES,
    ERROR_TAG,
    PARENT_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TrackingError,
    _quoted,
    _sqlite_path,
    artifact_root,
    auth_refused,
    code_version,
    encode_param,
    ensure_experiment,
)

log = logging.getLogger(__name__)

_METRICS_PER_BATCH = 1000


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` in batches, skipping those the run already holds: MLflow refuses to change
    a logged param, so a resumed run keeps its first value and a changed one is only warned."""
    existing = client.get_run(run_id).data.params
    new: list[Param] = []
    for key, value in params.items():
        text = encode_param(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            log.warning(
                "param %s is longer than MLflow allows (%d chars); not logged", key, len(text)
            )
        elif key not in existing:
            new.append(Param(key, text))
        elif existing[key] != text:
            log.warning("param %s is already %r on run %s; keeping it", key, existing[key], run_id)
    for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)


def _find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> Any | None:
    """The earliest un-deleted run carrying every tag in ``tags``, or None."""
    where = " and ".join(f"tags.`{k}` = {_quoted(v)}" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id],
        where,
        ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def _reopen(client: MlflowClient, run_id: str) -> None:
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, STATUS_TAG, "RUNNING")


def _log_code_version(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    version = code_version()
    extra = {CODE_TAG: version, **tags}
    if len(version) >= 40 and version[:40].isalnum():
        extra["mlflow.source.git.commit"] = version[:40]
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in extra.items()])


def _finish(client: MlflowClient, run_id: str, status: str) -> None:
    if status not in END_STATUSES:
        raise ValueError(f"status must be one of {', '.join(END_STATUSES)}, got {status!r}")
    client.set_tag(run_id, STATUS_TAG, status)
    client.set_terminated(run_id, status)


def close_trial(
    client: MlflowClient,
    target: TrackingTarget,
    trial_id: str,
    status: str,
    reason: str,
    error: str | None = None,
) -> bool:
    """Close a trial's run that its workers could not close (stopped early by the scheduler, or
    killed); a run already ended is left alone. ``error``: the cause of a failure, tagged
    (:data:`ERROR_TAG`) unless the workers tagged one. Returns whether a run was closed."""
    tags = {PARENT_TAG: target.parent_run_id, TRIAL_TAG: trial_id}
    run = _find_run(client, target.experiment_id, tags)
    if run is None:
        return False
    if error and ERROR_TAG not in run.data.tags:
        client.set_tag(run.info.run_id, ERROR_TAG, error)
    if run.info.status in END_STATUSES:
        return False
    client.set_tag(run.info.run_id, END_REASON_TAG, reason)
    _finish(client, run.info.run_id, status)
    return True


class SweepRun:
    """The parent MLflow run of a sweep, found again by its ``supcon.sweep`` tag on resume.

    ``target`` is where the sweep's trials log (the store, the experiment, this run).
    """

    def __init__(self, client: MlflowClient, target: TrackingTarget) -> None:
        self.client = client
        self.target = target
        self.previous_status: str | None = None  # before start() continued it; None: new

    @property
    def uri(self) -> str:
        return self.target.uri

    @property
    def experiment_id(self) -> str:
        return self.target.experiment_id

    @property
    def run_id(self) -> str:
        return self.target.parent_run_id

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        uri: str,
        experiment: str,
        sweep_name: str,
        *,
        searcher: str,
        params: dict[str, Any],
        tags: dict[str, str],
        space_text: str | None,
    ) -> SweepRun:
        """Create the parent run, or continue the un-deleted one tagged with ``sweep_name``;
        log ``searcher`` and ``params`` as its params.

        New experiments on a SQLite store keep artifacts in ``mlartifacts/`` beside the database.
        """
        db = _sqlite_path(uri)
        location = artifact_root(db.parent) if db is not None else None
        experiment_id = ensure_experiment(client, experiment, location)
        found = _find_run(client, experiment_id, {SWEEP_TAG: sweep_name})
        previous = None
        if found is not None:
            run_id, previous = found.info.run_id, found.info.status
            _reopen(client, run_id)
            log.info("continuing MLflow run %s of sweep %s", run_id, sweep_name)
        else:
            run_tags = {**tags, SWEEP_TAG: sweep_name, STATUS_TAG: "RUNNING"}
            run_id = client.create_run(
                experiment_id, tags=run_tags, run_name=sweep_name
            ).info.run_id
        _log_code_version(client, run_id, tags)
        _log_params(client, run_id, {"searcher": searcher, **params})
        if space_text is not None:
            client.log_text(run_id, space_text, "search_space.yaml")
        run = cls(client, TrackingTarget(uri, experiment, experiment_id, run_id, searcher))
        run.previous_status = previous
        return run

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def undo_reopen(self) -> None:
        """Put back the status the run had before :meth:`start` continued it (a resume that
        failed before any trial ran leaves the sweep's history as it was)."""
        if self.previous_status in END_STATUSES:
            _finish(self.client, self.run_id, self.previous_status)

    def finish(self, status: str = "FINISHED") -> None:
        _finish(self.client, self.run_id, status)


def _transient(err: MlflowException) -> bool:
    """A connection failure or a server error (worth retrying), not a rejected request."""
    return err.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")


def _refused(client: MlflowClient, what: str, err: MlflowException) -> TrackingError | None:
    """A :class:`TrackingError` naming the user when the server refused the credentials (401)
    or the permission (403): no retry cures that, so the trial fails now, not after its
    outage patience."""
    if err.error_code not in AUTH_ERRORS:
        return None
    return TrackingError(auth_refused(client.tracking_uri, what, err.error_code))


def _retrying(what: str, call, patience: float, client: MlflowClient | None = None):
    """``call()``, retried with backoff through transient MLflow errors for ``patience`` s;
    refused credentials raise at once (:func:`_refused`)."""
    deadline = time.monotonic() + patience
    delay = 1.0
    while True:
        try:
            return call()
        except MlflowException as err:
            if client is not None and (refused := _refused(client, what, err)):
                raise refused from None
            if not _transient(err):
                raise
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"MLflow unreachable for {patience:.0f} s while {what}: {str(err)[:200]}"
                ) from None
        time.sleep(delay)
        delay = min(2 * delay, 30.0)


class TrialTracker:
    """The nested MLflow run of one trial, written by rank 0 of the trial's workers only.

    An MLflow outage does not stop training: metrics that cannot be sent are kept in order and
    sent (with their original step and timestamp) once the server answers again. ``finish``
    retries for ``patience`` seconds; after that the unsent points are written to ``spool`` and
    :class:`TrackingError` says how many and where, so the trial fails clearly instead of
    finishing with holes in its history.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, spool: Path | None = None, patience: float = 300
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.spool = spool
        self.patience = patience
        self._skipped: set[str] = set()
        self._pending: list[Metric] = []
        self._down_since: float | None = None
        self._monitor = None  # MLflow's system-metrics monitor, when started

    @classmethod
    def open(
        cls,
        client: MlflowClient,
        target: TrackingTarget,
        trial_id: str,
        params: dict[str, Any],
        spool: Path | None = None,
        patience: float = 300,
        tags: Mapping[str, str] | None = None,
    ) -> TrialTracker:
        """Continue the child run of ``trial_id`` under the target's parent run, or create it
        with ``tags``; log the flattened trainer config (dotted paths) as params."""
        experiment_id = target.experiment_id
        extra = dict(tags or {})

        def attempt() -> str:
            tags = {PARENT_TAG: target.parent_run_id, TRIAL_TAG: trial_id}
            found = _find_run(client, experiment_id, tags)
            if found is not None:
                run_id = found.info.run_id
                _reopen(client, run_id)
            else:
                tags |= {STATUS_TAG: "RUNNING", CODE_TAG: code_version(), **(extra or {})}
                run_id = client.create_run(experiment_id, tags=tags, run_name=trial_id).info.run_id
            _log_params(client, run_id, params)
            return run_id

        run_id = _retrying(f"opening the run of trial {trial_id}", attempt, patience, client)
        return cls(client, run_id, spool, patience)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``stage/split/name`` metrics at ``step``; non-finite values are skipped with a
        warning (once per key). While MLflow is unreachable they are buffered."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if math.isfinite(value):
                self._pending.append(Metric(key, float(value), now, step))
            elif key not in self._skipped:
                self._skipped.add(key)
                log.warning("metric %s is %s at step %d; not logged to MLflow", key, value, step)
        try:
            self._flush()
        except TrackingError:  # refused credentials: the points go to the spool, as on an outage
            self._retry("logging metrics", lambda: None)

    def _flush(self) -> bool:
        """Send the buffered metrics in order; False (keeping the rest) on a transient error."""
        while self._pending:
            chunk = self._pending[:_METRICS_PER_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            except MlflowException as err:
                if refused := _refused(self.client, "logging metrics", err):
                    raise refused from None
                if not _transient(err):
                    raise
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("MLflow unreachable (%s); buffering metrics", str(err)[:200])
                return False
            del self._pending[: len(chunk)]
        if self._down_since is not None:
            log.warning(
                "MLflow reachable again after %.0f s; buffered metrics sent",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return True

    def _retry(self, what: str, call) -> None:
        """Send the backlog, then ``call()``; on an outage outlasting ``patience`` spool the
        backlog and raise :class:`TrackingError`."""

        def attempt() -> None:
            if not self._flush():
                raise MlflowException("MLflow unreachable", error_code="TEMPORARILY_UNAVAILABLE")
            call()

        try:
            _retrying(what, attempt, self.patience, self.client)
        except TrackingError as err:
            kept = self._spool()
            raise TrackingError(
                f"{err}; {len(self._pending)} metric points not logged"
                + (f", kept in {kept}" if kept else "")
            ) from None

    def _spool(self) -> Path | None:
        if self.spool is None or not self._pending:
            return None
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with self.spool.open("a", encoding="utf-8") as out:
            for m in self._pending:
                row = {
                    "run_id": self.run_id,
                    "key": m.key,
                    "value": m.value,
                    "timestamp": m.timestamp,
                    "step": m.step,
                }
                out.write(json.dumps(row) + "\n")
        return self.spool

    def log_artifacts(self, paths: Sequence[Path], artifact_path: str | None = None) -> None:
        """Upload files (and folders, under their own name) to ``artifact_path`` of the run."""
        for path in map(Path, paths):
            if path.is_dir():
                dest = f"{artifact_path}/{path.name}" if artifact_path else path.name
                upload = functools.partial(self.client.log_artifacts, self.run_id, str(path), dest)
            elif path.is_file():
                upload = functools.partial(
                    self.client.log_artifact, self.run_id, str(path), artifact_path
                )
            else:
                log.warning("artifact %s does not exist; not logged", path)
                continue
            self._retry(f"uploading {path.name}", upload)

    def steps_of(self, key: str) -> set[int]:
        """The steps at which the run already has ``key``."""
        history = _retrying(
            f"reading {key}",
            lambda: self.client.get_metric_history(self.run_id, key),
            60,
            self.client,
        )
        return {m.step for m in history}

    def set_tag(self, key: str, value: str) -> None:
        self._retry(f"tagging {key}", lambda: self.client.set_tag(self.run_id, key, value))

    def log_datasets(self, inputs: Sequence[Any]) -> None:
        """Record the run's dataset inputs (:mod:`orchestrator.tracking.datasets`)."""
        self._retry("logging the datasets", lambda: self.client.log_inputs(self.run_id, inputs))

    def start_system_metrics(self) -> None:
        """MLflow's system-metrics monitor for this run, in a thread of this process, until
        :meth:`finish` (steps continue after a resumed trial's)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id, resume_logging=True, tracking_uri=self.client.tracking_uri
        )
        self._monitor.start()

    def stop_system_metrics(self) -> None:
        """Stop the monitor and log what it sampled since it last logged: MLflow's monitor
        logs once per interval (10 s) and drops the samples of an unfinished one, which for a
        short trial is all of them."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor.finish()
        try:
            pending = monitor.aggregate_metrics()
            if pending:
                monitor.publish_metrics(pending)
                monitor.mlflow_logger.flush()
        except Exception as err:  # system metrics never fail a trial
            log.warning("the last system metrics of run %s were not logged: %s", self.run_id, err)

    def flush(self) -> None:
        """Send what is buffered (with the outage handling of :meth:`finish`)."""
        self._retry("sending buffered metrics", lambda: None)

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is buffered, then end the run with ``status``, unless the sweep's driver
        already ended it (a trial Tune stopped or failed: its status is the driver's)."""

        def end() -> None:
            if self.client.get_run(self.run_id).info.status not in END_STATUSES:
                _finish(self.client, self.run_id, status)

        self.stop_system_metrics()
        self._retry("ending the run", end)
