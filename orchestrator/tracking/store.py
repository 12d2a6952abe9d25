"""The tracking store: URIs, reachability, experiments, tags and param encoding."""

from __future__ import annotations

import base64
import functools
import math
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.mlflow_server import PASSWORD_VAR, USER_VAR

SWEEP_TAG = "supcon.sweep"
TRIAL_TAG = "supcon.trial_id"
STATUS_TAG = "supcon.status"
CODE_TAG = "supcon.code_version"
PARENT_TAG = "mlflow.parentRunId"
MODEL_TAG = "supcon.model_uri"  # where a finished trial's final model is (path or URI)
RESOURCES_TAG = "supcon.resources"  # the trial's Ray resources (TrialResources as JSON)
REVISION_TAG = "supcon.pretrained_revision"  # the hub commit of model.pretrained a trial loaded
CONFIG_ID_TAG = "supcon.config_id"  # a run's configuration without its seed (config_id())
SEED_TAG = "supcon.seed"
CONFIRM_TAG = "supcon.confirm"  # on a confirmation's runs: the sweep parent run it confirms
TUNE_DIR_TAG = "supcon.tune_dir"  # on a sweep's parent run: its Tune folder (settings beside)
END_REASON_TAG = "supcon.end_reason"  # why a run was closed from outside its workers
ERROR_TAG = "supcon.error"  # a FAILED run's cause: the exception's class and first line
STOPPED_EARLY = "stopped early by the scheduler"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
_ROOT = Path(__file__).resolve().parents[2]


class TrackingError(RuntimeError):
    """The tracking store is unreachable or does not hold what was asked for."""


def safe_uri(uri: str) -> str:
    """``uri`` without ``user:password@`` and query string, fit for messages and logs."""
    head, sep, rest = uri.partition("://")
    if not sep:
        return uri
    rest, query, _ = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{head}://{authority}{slash}{path}" + ("?..." if query else "")


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def error_text(err: BaseException, limit: int = 500) -> str:
    """``Class: first line`` of ``err``, fit for a tag and a console line: credentials in any
    URI it quotes (``user:password@``) are masked."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    text = _USERINFO.sub("***@", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ui_link(uri: str, experiment_id: str) -> str:
    """Where to look at an experiment's runs in the MLflow UI. MLflow 3.17's UI opens on its
    GenAI pages unless the URL asks for its model-training view (``workflowType``): a remembered
    toggle there outranks the experiment's ``mlflow.experimentKind`` tag."""
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{safe_uri(uri).rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {safe_uri(uri)} --host 127.0.0.1, then open http://127.0.0.1:5000/{page}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return None
    return Path(uri.removeprefix("sqlite:///"))


def existing_store(uri: str) -> MlflowClient:
    """A client of the store at ``uri``; TrackingError when it is an embedded (SQLite) store
    that does not exist, which a query must not create (MLflow would, empty)."""
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no MLflow store at {db} (run a sweep, or pass --tracking-uri/--out)")
    return MlflowClient(uri)


def resolve_tracking_uri(uri: str | None, out_dir: Path) -> str:
    """Explicit ``uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<out_dir>/mlflow.db``.

    SQLite paths are made absolute here, because Ray runs trials in other working directories.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not chosen:
        return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"
    db = _sqlite_path(chosen)
    if db is not None and not db.is_absolute():
        return f"sqlite:///{db.resolve()}"
    return chosen


def artifact_root(out_dir: Path) -> str:
    """Where new experiments of the embedded store keep artifacts: ``<out_dir>/mlartifacts``."""
    return (Path(out_dir).resolve() / "mlartifacts").as_uri()


def _check_scheme(uri: str) -> None:
    """TrackingError naming the URI when MLflow (with its installed plugins) has no tracking
    store for its scheme: found before Ray starts, not when the first trial logs."""
    try:  # MLflow's registry of stores, plugins included; not a public module
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores
    except ImportError:
        return
    try:
        stores.get_store_builder(uri)
    except Exception:  # MLflow raises its own "unsupported URI" exception
        known = ", ".join(sorted(k for k in getattr(stores, "_registry", {}) if k))
        raise TrackingError(
            f"--tracking-uri {safe_uri(uri)}: MLflow has no tracking store for the scheme "
            f"{urlsplit(uri).scheme!r} (it knows: {known}; a plain path is a local folder)"
        ) from None


AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def auth_refused(uri: str, what: str, status: str) -> str:
    """The message for a server that refused this process's credentials: it names the user
    (``MLFLOW_TRACKING_USERNAME``), never the password."""
    user = os.environ.get(USER_VAR)
    if status in ("UNAUTHENTICATED", "401"):
        if not user:
            return (
                f"MLflow at {safe_uri(uri)} asks for credentials ({what}: 401) and none are set: "
                f"export {USER_VAR} and {PASSWORD_VAR} (a cluster's are in the file of "
                "`supcon-sweep cluster credentials`, see cluster/README.md)"
            )
        return (
            f"MLflow at {safe_uri(uri)} refused user {user!r} ({what}: 401, wrong user or "
            f"password): check {USER_VAR} and {PASSWORD_VAR}"
        )
    return (
        f"MLflow at {safe_uri(uri)} denied user {user or '(none)'!r} ({what}: 403): the user "
        "may read but not write here; an admin can grant it EDIT on the experiment"
    )


def _check_credentials(base: str, uri: str, timeout: float) -> None:
    """One request that needs a login, with the environment's credentials, as MLflow's client
    would send them: a 401 here is a refused sweep, not minutes of retries later."""
    url = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url)
    user, password = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise TrackingError(auth_refused(uri, "a first request", str(err.code))) from None
    except (urllib.error.URLError, OSError):
        return  # reachability is /health's question


def check_reachable(uri: str, timeout: float = 5, *, create: bool = True) -> None:
    """Fail fast, naming the URI, when an http(s) server does not answer, refuses the
    environment's credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``: 401, named user), or
    the SQLite folder cannot be created. Plain requests without retries (MLflow's client retries
    for minutes); any other HTTP answer, even an error status or a TLS handshake, counts as
    reachable. Other schemes (databricks, postgresql, ...) are not checked; a scheme MLflow has
    no store for is refused."""
    _check_scheme(uri)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        netloc = parts.netloc.rpartition("@")[2]  # credentials are not needed for /health
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLError):  # it answered; TLS trust is MLflow's setting
                return
            raise TrackingError(
                f"MLflow tracking server {safe_uri(uri)} is not reachable ({reason}; waited at "
                f"most {timeout:g} s); start it or pass another --tracking-uri"
            ) from None
        _check_credentials(base, uri, timeout)
        return
    db = _sqlite_path(uri)
    if db is not None and not create:  # a read: nothing is created where there is no store
        if not db.is_file():
            raise TrackingError(
                f"no MLflow store at {db}: no sweep has written there; pass the sweep's --out "
                "or --tracking-uri"
            )
        return
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(
                f"cannot create the folder of the MLflow store {safe_uri(uri)}: {err}"
            ) from None


# MLflow's UI (3.x) opens an experiment on its GenAI traces page unless the experiment says it
# holds model training; this tag (one of the UI's experiment kinds) makes it open on the runs.
KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing, and
    marked as a model-training experiment unless someone chose its kind already."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags=dict([KIND_TAG])
            )
        except MlflowException:  # another process created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}) or choose another name"
        )
    if KIND_TAG[0] not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *KIND_TAG)
    return exp.experiment_id


@functools.cache
def code_version() -> str:
    """``git rev-parse HEAD`` of this checkout (``-dirty`` with local changes), else the
    installed package version."""
    if (_ROOT / ".git").exists():
        try:
            head = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "diff", "--quiet", "HEAD"], cwd=_ROOT, capture_output=True, timeout=10
            ).returncode
            return head + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return f"supcon-sweep=={metadata.version('supcon-sweep')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def encode_param(value: Any) -> str:
    """A config value as a one-line YAML scalar that ``yaml.safe_load`` turns back into it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    return text.strip().removesuffix("\n...").strip()


def decode_param(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _quoted(value: str) -> str:
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise TrackingError(f"{value!r} holds both kinds of quotes; MLflow cannot search for it")
