"""Best-trial queries and exporting a trial's config."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from orchestrator.tracking.store import (
    PARENT_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TrackingError,
    _quoted,
    _sqlite_path,
    decode_param,
    safe_uri,
)
from trainer.config import apply_overrides, to_yaml


def find_experiment(client: MlflowClient, uri: str, experiment: str) -> str:
    """The id of the live experiment ``experiment``; TrackingError lists the existing ones."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise TrackingError(
            f"no MLflow experiment {experiment!r} in {safe_uri(uri)}; "
            f"existing: {', '.join(names) or '(none)'}"
        )
    return exp.experiment_id


def query_best(
    uri: str,
    experiment: str,
    metric: str = "eval/pooled_mean/eer",
    mode: str = "min",
    top: int = 5,
    parent_run_id: str | None = None,
) -> list[dict[str, Any]]:
    """The ``top`` finished trial runs (optionally of one sweep) with a finite ``metric``, best
    first: ``{"run_id", "trial_id", "params": {path: value}, "metrics": {key: value}}``.

    Runs are ordered by the metric's last logged value (MLflow's ``latest`` metric).
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max, got {mode!r}")
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no MLflow store at {db} (run a sweep, or pass --tracking-uri/--out)")
    client = MlflowClient(uri)
    experiment_id = find_experiment(client, uri, experiment)
    where = f"attributes.status = 'FINISHED' and tags.`{TRIAL_TAG}` IS NOT NULL"
    if parent_run_id:
        where += f" and tags.`{PARENT_TAG}` = {_quoted(parent_run_id)}"
    order = [
        f"metrics.`{metric}` {'ASC' if mode == 'min' else 'DESC'}",
        "attributes.start_time ASC",
    ]
    rows: list[dict[str, Any]] = []
    token = None
    while len(rows) < top:
        page = client.search_runs(
            [experiment_id],
            where,
            ViewType.ACTIVE_ONLY,
            max_results=min(max(top, 100), 1000),
            order_by=order,
            page_token=token,
        )
        for run in page:
            value = run.data.metrics.get(metric)
            if value is not None and math.isfinite(value) and len(rows) < top:
                rows.append(_row(run))
        token = page.token
        if not token:
            break
    return rows


DEFAULT_OBJECTIVE = ("encoder/dev/eer", "min")


def sweep_objective(uri: str, experiment: str) -> tuple[str, str]:
    """The (metric, mode) the experiment's sweeps selected on, from their parent runs' params;
    ``encoder/dev/eer``, ``min`` when there is none or they differ."""
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        return (
            DEFAULT_OBJECTIVE  # query_best says the store is missing; creating it would hide that
        )
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return DEFAULT_OBJECTIVE
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`{SWEEP_TAG}` IS NOT NULL", ViewType.ACTIVE_ONLY, 1000
    )
    found = {
        (decode_param(r.data.params["metric"]), decode_param(r.data.params.get("mode", "min")))
        for r in parents
        if "metric" in r.data.params
    }
    return found.pop() if len(found) == 1 else DEFAULT_OBJECTIVE


def _row(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "trial_id": run.data.tags[TRIAL_TAG],
        "params": {k: decode_param(v) for k, v in sorted(run.data.params.items())},
        "metrics": dict(sorted(run.data.metrics.items())),
    }


def export_config(best: dict[str, Any], path: Path) -> Path:
    """Write the trainer config of a :func:`query_best` row (its params are the full flattened
    config) to ``path`` atomically, validated; ``supcon-sweep trial --config path`` reruns it."""
    cfg = apply_overrides({}, best["params"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# trial {best['trial_id']} (MLflow run {best['run_id']}), by supcon-sweep best\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(header + to_yaml(cfg))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
