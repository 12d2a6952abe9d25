"""Finding a sweep's parent run, a confirmation's runs, and the score files runs logged."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.tracking.query import _row, find_experiment
from orchestrator.tracking.store import (
    CONFIRM_TAG,
    PARENT_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TUNE_DIR_TAG,
    TrackingError,
    _quoted,
    decode_param,
    safe_uri,
)

_PER_BATCH = 1000


@dataclass(frozen=True)
class SweepRef:
    """A sweep's MLflow parent run: its name, run id, status, Tune folder (None for sweeps
    tracked before the folder was tagged) and objective."""

    name: str
    run_id: str
    status: str
    tune_dir: str | None
    metric: str
    mode: str


def _sweep_parents(client: MlflowClient, experiment_id: str) -> list[Any]:
    """The sweeps' parent runs (not the confirmations', which carry a sweep tag too)."""
    where = f"tags.`{SWEEP_TAG}` IS NOT NULL and tags.`{CONFIRM_TAG}` IS NULL"
    return client.search_runs([experiment_id], where, ViewType.ACTIVE_ONLY, 1000)


def _ref(run: Any) -> SweepRef:
    params = run.data.params
    return SweepRef(
        name=run.data.tags[SWEEP_TAG],
        run_id=run.info.run_id,
        status=run.info.status,
        tune_dir=run.data.tags.get(TUNE_DIR_TAG),
        metric=decode_param(params.get("metric", "encoder/dev/eer")),
        mode=decode_param(params.get("mode", "min")),
    )


def find_sweep(
    client: MlflowClient,
    uri: str,
    experiment: str,
    *,
    name: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, SweepRef]:
    """(experiment id, the sweep) named ``name`` or with parent run ``parent_run_id``;
    TrackingError names what is missing and lists the sweeps there are."""
    experiment_id = find_experiment(client, uri, experiment)
    parents = _sweep_parents(client, experiment_id)
    found = [
        r
        for r in parents
        if (name is not None and r.data.tags[SWEEP_TAG] == name) or r.info.run_id == parent_run_id
    ]
    if not found:
        what = f"sweep named {name!r}" if name is not None else f"sweep parent run {parent_run_id}"
        known = sorted({r.data.tags[SWEEP_TAG] for r in parents})
        raise TrackingError(
            f"no {what} in experiment {experiment!r} of {safe_uri(uri)}; its sweeps: "
            f"{', '.join(known) or '(none)'}"
        )
    return experiment_id, _ref(min(found, key=lambda r: r.info.start_time))


def finished_trials(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> list[dict[str, Any]]:
    """Every finished trial run under ``parent_run_id``, as :func:`query_best` rows."""
    where = (
        f"attributes.status = 'FINISHED' and tags.`{TRIAL_TAG}` IS NOT NULL "
        f"and tags.`{PARENT_TAG}` = {_quoted(parent_run_id)}"
    )
    runs = client.search_runs([experiment_id], where, ViewType.ACTIVE_ONLY, 10_000)
    return [_row(r) for r in runs]


def tag_run(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every trial run under ``parent_run_id``, whatever its status (MLflow ``Run`` objects)."""
    where = f"tags.`{TRIAL_TAG}` IS NOT NULL and tags.`{PARENT_TAG}` = {_quoted(parent_run_id)}"
    return client.search_runs([experiment_id], where, ViewType.ACTIVE_ONLY, 10_000)


def log_summary(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    files: list[Path],
    artifact_path: str | None = None,
) -> None:
    """Log ``metrics`` (step 0) and upload ``files`` (under ``artifact_path``) to ``run_id``."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(batch), _PER_BATCH):
        client.log_batch(run_id, metrics=batch[i : i + _PER_BATCH], synchronous=True)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)


def download_scores(client: MlflowClient, run_id: str, set_name: str, folder: Path) -> Path:
    """The score file ``scores/<set>.tsv`` a run logged, downloaded into ``folder``;
    TrackingError when the run has none."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, f"scores/{set_name}.tsv", str(folder))
    except (MlflowException, OSError) as err:
        raise TrackingError(
            f"run {run_id} has no score file for set {set_name}: {str(err)[:200]}"
        ) from None
    return Path(local)
