"""A trial's final model in MLflow's model registry: a version of a named model, pointing at
the model folder in the sweep's storage (no copy), linked to the trial's run, with an alias.

The folder is an MLflow model (:mod:`trainer.detector`), so once registered
``mlflow.pyfunc.load_model("models:/NAME@champion")`` loads it wherever the registry's user can
read the storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.tracking.store import (
    MODEL_TAG,
    PARENT_TAG,
    SWEEP_TAG,
    TrackingError,
    safe_uri,
)

RUN_TAG = "supcon.run_id"
FOLDER_TAG = "supcon.model_folder"  # where the weights are (the source may be a pointer model)
POINTER_PATH = "detector"  # a pointer model's artifact path in the trial's run


def _local(source: str) -> bool:
    return "://" not in source


def _pointer_source(client: MlflowClient, run_id: str, folder: Path) -> str:
    """Log a pointer model of ``folder`` (:func:`trainer.detector.write_pointer`) into the run
    and return its artifact URI: what an MLflow server accepts as a version's source."""
    import tempfile

    from orchestrator.tracking.pyfunc import write_pointer

    with tempfile.TemporaryDirectory() as tmp:
        pointer = write_pointer(folder, Path(tmp) / POINTER_PATH)
        client.log_artifacts(run_id, str(pointer), POINTER_PATH)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{POINTER_PATH}"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str
    source: str
    created: bool  # False: this trial's model was already a version of ``name``

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def sweep_of(uri: str, run_id: str) -> str:
    """The name of the sweep (or confirmation) whose parent run holds the trial run ``run_id``
    ("" when it has none): trial runs carry it only through their parent."""
    client = MlflowClient(uri)
    parent = client.get_run(run_id).data.tags.get(PARENT_TAG)
    return client.get_run(parent).data.tags.get(SWEEP_TAG, "") if parent else ""


def model_source(row: dict[str, Any]) -> str:
    """Where a :func:`~orchestrator.tracking.query.query_best` row's final model is, checked to
    be an MLflow model (a local folder must hold ``MLmodel``; a bucket is trusted)."""
    where = row["tags"].get(MODEL_TAG)
    if not where:
        raise TrackingError(
            f"trial {row['trial_id']} (run {row['run_id']}) records no final model "
            f"({MODEL_TAG}): it did not finish stage 2"
        )
    if "://" in where and not where.startswith("file://"):
        return where
    folder = Path(where.removeprefix("file://"))
    if not (folder / "MLmodel").is_file():
        raise TrackingError(
            f"trial {row['trial_id']}: {folder} is not an MLflow model (no MLmodel: a model "
            "folder written before models were MLflow models, or storage this machine cannot "
            "read); rerun the trial to get one"
        )
    return str(folder.resolve())


def register(
    uri: str, row: dict[str, Any], name: str, alias: str, tags: dict[str, str]
) -> Registered:
    """Register ``row``'s final model as a new version of ``name`` (created when missing), with
    ``tags`` and ``alias`` pointing at it. The version's source is the model folder itself; an
    MLflow server, which takes a local path only inside the run's artifacts, gets a pointer
    model logged there (weights not copied). Registering a trial already registered under
    ``name`` creates nothing: its version gets the alias (if it had another) and is returned
    with ``created=False``."""
    source = model_source(row)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        same = [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if v.run_id == row["run_id"] and v.tags.get(FOLDER_TAG) == source
        ]
        if same:
            version = max(same, key=lambda v: int(v.version))
            client.set_registered_model_alias(name, alias, version.version)
            return Registered(name, str(version.version), alias, source, created=False)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description="supcon-sweep detector: XLS-R + SupCon encoder, linear head"
            )
        if _local(source) and uri.startswith(("http://", "https://")):
            source = _pointer_source(client, row["run_id"], Path(source))
        version = client.create_model_version(
            name,
            source,
            run_id=row["run_id"],
            tags={**tags, RUN_TAG: row["run_id"], FOLDER_TAG: model_source(row)},
            description=f"trial {row['trial_id']} of sweep {tags.get(SWEEP_TAG) or '?'}",
        )
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as err:
        raise TrackingError(f"cannot register {name} in {safe_uri(uri)}: {err.message}") from None
    return Registered(name, str(version.version), alias, source, created=True)
