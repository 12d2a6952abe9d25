"""All MLflow access, through one :class:`Tracking` bound to a tracking target: the sweep's
parent run, each trial's nested run, evaluations' writes, best-run queries.

Only :class:`mlflow.tracking.MlflowClient` with explicit run ids is used, never the fluent
``mlflow.start_run`` state, so logging works (and leaves it alone) when an MLflow run is already
active in the process, as it is inside a Tune trial. Trials log from rank 0 only.

Params are written as YAML scalars (``null``, ``true``, ``1.0e-05``, quoted ambiguous strings), so
:func:`query_best` reads them back with ``yaml.safe_load`` as the values the config held.
Non-finite metric values are not logged (a warning names them): MLflow would keep a NaN as the
latest value, which then hides the run's real result from searches ordered by that metric.
"""

from orchestrator.tracking.client import Tracking
from orchestrator.tracking.query import export_config, rerun_command, row_config_id
from orchestrator.tracking.runs import SweepRun, TrialTracker
from orchestrator.tracking.store import (
    CONFIG_ID_TAG,
    CONFIRM_TAG,
    ERROR_TAG,
    MODEL_TAG,
    RESOURCES_TAG,
    REVISION_TAG,
    SEED_TAG,
    TUNE_DIR_TAG,
    TrackingError,
    artifact_root,
    check_reachable,
    decode_param,
    encode_param,
    error_text,
    resolve_tracking_uri,
    safe_uri,
)

__all__ = [
    "CONFIG_ID_TAG",
    "CONFIRM_TAG",
    "ERROR_TAG",
    "MODEL_TAG",
    "RESOURCES_TAG",
    "REVISION_TAG",
    "SEED_TAG",
    "TUNE_DIR_TAG",
    "SweepRun",
    "Tracking",
    "TrackingError",
    "TrialTracker",
    "artifact_root",
    "check_reachable",
    "decode_param",
    "encode_param",
    "error_text",
    "export_config",
    "rerun_command",
    "resolve_tracking_uri",
    "row_config_id",
    "safe_uri",
]
