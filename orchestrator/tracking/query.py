"""Best-trial queries and exporting a trial's config."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from orchestrator.tracking.store import (
    CONFIG_ID_TAG,
    CONFIRM_TAG,
    PARENT_TAG,
    RESOURCES_TAG,
    REVISION_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TrackingError,
    _quoted,
    decode_param,
    safe_uri,
)
from trainer.config import (
    TrainerConfig,
    apply_overrides,
    config_from_params,
    to_yaml,
)
from trainer.identity import config_id


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
    client: MlflowClient,
    uri: str,
    experiment: str,
    metric: str = "eval/pooled_mean/eer",
    mode: str = "min",
    top: int = 5,
    parent_run_id: str | None = None,
    *,
    confirmations: bool = True,
) -> list[dict[str, Any]]:
    """The ``top`` finished trial runs (optionally of one sweep) with a finite ``metric``, best
    first: ``{"run_id", "trial_id", "params": {path: value}, "metrics": {key: value}, "tags":
    {supcon.*: value}}``. ``confirmations=False`` leaves out the reruns of ``confirm`` (whose
    seeds are not a search's single draw).

    Runs are ordered by the metric's last logged value (MLflow's ``latest`` metric).
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max, got {mode!r}")
    experiment_id = find_experiment(client, uri, experiment)
    where = f"attributes.status = 'FINISHED' and tags.`{TRIAL_TAG}` IS NOT NULL"
    if parent_run_id:
        where += f" and tags.`{PARENT_TAG}` = {_quoted(parent_run_id)}"
    if not confirmations:
        where += f" and tags.`{CONFIRM_TAG}` IS NULL"
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


def configured_runs(client: MlflowClient, uri: str, experiment: str) -> list[dict[str, Any]]:
    """Every finished run tagged with a configuration id (a confirmation's reruns and the
    sweep trials it confirmed), as :func:`query_best` rows."""
    experiment_id = find_experiment(client, uri, experiment)
    where = f"attributes.status = 'FINISHED' and tags.`{CONFIG_ID_TAG}` IS NOT NULL"
    rows, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], where, ViewType.ACTIVE_ONLY, 1000, page_token=token
        )
        rows += [_row(r) for r in page if TRIAL_TAG in r.data.tags]
        token = page.token
        if not token:
            return rows


DEFAULT_OBJECTIVE = ("encoder/dev/eer", "min")


def sweep_objective(client: MlflowClient, experiment: str) -> tuple[str, str]:
    """The (metric, mode) the experiment's sweeps selected on, from their parent runs' params;
    ``encoder/dev/eer``, ``min`` when there is none or they differ."""
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
        "tags": {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("supcon.")},
    }


def reproducible_config(row: dict[str, Any]) -> TrainerConfig:
    """The trainer config of a :func:`query_best` row (its params are the full flattened config)
    pinned to what the run had: ``runtime.world_size`` = its workers (the global batch and the
    epoch's length depend on it) and ``model.revision`` = the hub commit it loaded."""
    pins: dict[str, Any] = {}
    resources = row["tags"].get(RESOURCES_TAG)
    if resources:
        pins["runtime.world_size"] = int(json.loads(resources)["workers"])
    revision = row["tags"].get(REVISION_TAG)
    if revision:
        pins["model.revision"] = revision
    return apply_overrides(config_from_params(row["params"]), pins)


def row_config_id(row: dict[str, Any]) -> str:
    """The :func:`~trainer.identity.config_id` of a :func:`query_best` row: its method (from its
    params) on its world size (its workers). Recomputed, so runs tagged by an older version,
    whose id hashed other keys, group with today's; a row without its resources keeps the
    ``supcon.config_id`` tag it has (or, without one, a config pinned to one rank)."""
    resources = row["tags"].get(RESOURCES_TAG)
    if resources is None and CONFIG_ID_TAG in row["tags"]:
        return row["tags"][CONFIG_ID_TAG]
    workers = int(json.loads(resources)["workers"]) if resources else 1
    return config_id(config_from_params(row["params"]), workers)


def rerun_command(cfg: TrainerConfig, path: Path) -> str:
    """The command that reruns ``cfg`` (written to ``path``) with its world size."""
    workers = cfg.runtime.world_size or 1
    return f"supcon-sweep trial --ray --workers-per-trial {workers} --config {path}"


def export_config(best: dict[str, Any], path: Path) -> Path:
    """Write :func:`reproducible_config` of a :func:`query_best` row to ``path`` atomically;
    :func:`rerun_command` reruns it."""
    cfg = reproducible_config(best)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# trial {best['trial_id']} (MLflow run {best['run_id']}), by supcon-sweep best\n"
        f"# rerun with the same global batch: {rerun_command(cfg, path)}\n"
        f"#   or: torchrun --nproc_per_node {cfg.runtime.world_size or 1} -m trainer "
        f"--config {path}\n"
    )
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
