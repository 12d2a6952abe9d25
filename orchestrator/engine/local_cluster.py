"""A multi-node Ray cluster and an MLflow server on this machine: the cloud flow, rehearsed.

``up`` starts a Ray head (``ray start --head``, its own ports and temp folder, the dashboard and
job server on 127.0.0.1), ``nodes`` more Ray nodes joined to it with their own CPUs, and the
cluster's MLflow server on 127.0.0.1 (``supcon-sweep cluster server``: a PostgreSQL server of
its own, MLflow's basic-auth, the sweep user's credentials in ``FOLDER/mlflow/secrets/sweep.env``,
exported into every Ray node as ``ray start`` does on a cluster; or, with ``backend="sqlite"``,
one SQLite worker without authentication). Ray's own GCS and
raylet ports listen on the machine's address, as ``ray start`` requires for nodes to join (it
turns 127.0.0.1 into that address); token authentication guards them. Every process is
started in a new session and recorded (pid and start time) in ``FOLDER/cluster.json``; ``down``
stops exactly those process trees, nothing else. ``up`` on a running cluster restarts only what
has died, so it also brings back a stopped node or MLflow server.

Token authentication stays on (``RAY_AUTH_MODE=token``); the token is Ray's default one,
``~/.ray/auth_token``, created by the head when missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from orchestrator import mlflow_server as srv
from orchestrator.train.resources import DRIVER_RESOURCE

STATE = "cluster.json"


class ClusterError(RuntimeError):
    """The local cluster is not there, or a request names a process it does not have."""


class StartError(ClusterError):
    """A process of the local cluster could not be started."""


@dataclass
class Spec:
    """What ``up`` starts. Worker nodes get ``worker_cpus`` each; the head holds the trial
    drivers' ``TRAIN_DRIVER`` slots and ``head_cpus``."""

    nodes: int = 1
    head_cpus: int = 1
    worker_cpus: int = 1
    drivers: int = 2
    backend: str = "postgresql"  # the MLflow server's store; "sqlite": no authentication


@dataclass
class Proc:
    name: str
    pid: int
    started: float  # psutil create_time, so a reused pid is never mistaken for ours
    log: str


@dataclass
class Cluster:
    folder: str
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    mlflow_port: int
    spec: dict[str, Any]
    procs: list[Proc] = field(default_factory=list)
    pg_port: int = 0

    @property
    def credentials(self) -> Path | None:
        """The sweep user's MLflow credentials file (None without authentication)."""
        if self.spec.get("backend", "sqlite") == "sqlite":
            return None
        return Path(self.folder) / "mlflow" / "secrets" / "sweep.env"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def save(self) -> None:
        path = Path(self.folder) / STATE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: Path) -> Cluster:
        path = Path(folder) / STATE
        if not path.is_file():
            raise ClusterError(f"no local cluster in {folder} (no {STATE}); run `up` first")
        raw = json.loads(path.read_text())
        raw["procs"] = [Proc(**p) for p in raw["procs"]]
        return cls(**raw)

    def proc(self, name: str) -> Proc | None:
        return next((p for p in self.procs if p.name == name), None)


def _env(c: Cluster) -> dict[str, str]:
    """The children's environment: token auth on, this interpreter's bin folder first on
    PATH (Ray Jobs run their entrypoint with the raylet's PATH), and the MLflow sweep user's
    credentials, which Ray's jobs and workers inherit from the node as on a cluster."""
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE") or "token"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    for key in (srv.USER_VAR, srv.PASSWORD_VAR):
        env.pop(key, None)
    if c.credentials is not None:
        user, password = srv.user_credentials(c.credentials)
        env.update({srv.USER_VAR: user, srv.PASSWORD_VAR: password})
    return env


def _handle(proc: Proc) -> psutil.Process | None:
    """The live process ``proc`` names, or None (exited, or its pid now belongs to another)."""
    try:
        p = psutil.Process(proc.pid)
        if abs(p.create_time() - proc.started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def _spawn(c: Cluster, name: str, cmd: list[str]) -> Proc:
    log = Path(c.folder) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(c),
            cwd=c.folder,
            start_new_session=True,
        )
    proc = Proc(name, popen.pid, psutil.Process(popen.pid).create_time(), str(log))
    c.procs = [p for p in c.procs if p.name != name] + [proc]
    c.save()
    return proc


def _wait(proc: Proc, ready, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if _handle(proc) is None:
            tail = Path(proc.log).read_text(errors="replace")[-2000:]
            raise StartError(f"{what} exited while starting (log {proc.log}):\n{tail}")
        if time.monotonic() > deadline:
            raise StartError(f"{what} not ready after {timeout:.0f} s (log {proc.log})")
        time.sleep(0.5)


def _ray() -> str:
    return str(Path(sys.executable).parent / "ray")


def _start_head(c: Cluster, spec: Spec) -> None:
    cmd = [
        _ray(),
        "start",
        "--head",
        "--block",
        "--port",
        str(c.gcs_port),
        "--temp-dir",
        f"{c.temp_dir}/head",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(c.dashboard_port),
        "--ray-client-server-port",
        str(srv.free_port()),
        "--dashboard-agent-listen-port",
        str(srv.free_port()),
        "--num-cpus",
        str(spec.head_cpus),
        "--num-gpus",
        "0",
        "--resources",
        json.dumps({DRIVER_RESOURCE: spec.drivers}),
        "--disable-usage-stats",
    ]
    proc = _spawn(c, "head", cmd)
    _wait(proc, lambda: srv.http_ok(f"{c.dashboard}/api/version"), "the Ray head", 120)


def _start_node(c: Cluster, name: str, spec: Spec) -> None:
    # Each node its own temp folder, as on separate machines: nodes sharing one would delete
    # each other's unpacked job working directories.
    cmd = [
        _ray(),
        "start",
        "--block",
        "--address",
        c.address,
        "--temp-dir",
        f"{c.temp_dir}/{name}",
        "--dashboard-agent-listen-port",
        str(srv.free_port()),
        "--num-cpus",
        str(spec.worker_cpus),
        "--num-gpus",
        "0",
        "--disable-usage-stats",
    ]
    proc = _spawn(c, name, cmd)
    _wait(proc, lambda: _raylets(proc) >= 1, f"Ray node {name}", 120)


def _raylets(proc: Proc) -> int:
    """Live raylets among ``proc``'s descendants (a joined node has one)."""
    p = _handle(proc)
    if p is None:
        return 0
    return sum("raylet" in child.name() for child in p.children(recursive=True))


def _start_mlflow(c: Cluster) -> None:
    folder = Path(c.folder)
    if c.credentials is not None:
        cmd = [str(Path(sys.executable).parent / "supcon-sweep"), "cluster", "server"]
        cmd += ["--folder", str(folder / "mlflow"), "--port", str(c.mlflow_port)]
        cmd += ["--pg-port", str(c.pg_port), "--users", str(c.credentials)]
        proc = _spawn(c, "mlflow", cmd)
        _wait(proc, lambda: srv.http_ok(f"{c.tracking_uri}/health"), "the MLflow server", 240)
        return
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(c.mlflow_port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "mlartifacts"),
    ]
    proc = _spawn(c, "mlflow", cmd)
    _wait(proc, lambda: srv.http_ok(f"{c.tracking_uri}/health"), "the MLflow server", 120)


def up(folder: Path, spec: Spec | None = None) -> Cluster:
    """Start the cluster in ``folder``, or restart the parts of a running one that died."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE).is_file():
        c = Cluster.load(folder)
        spec = Spec(**c.spec)
    else:
        spec = spec or Spec()
        temp = tempfile.mkdtemp(prefix="sray-")  # short: Ray's socket paths must stay < 108
        ports = [srv.free_port() for _ in range(4)]
        c = Cluster(str(folder), temp, *ports[:3], asdict(spec), pg_port=ports[3])
        c.save()
    if c.credentials is not None:  # before any Ray node starts: they export them
        srv.user_credentials(c.credentials)
    try:
        if _live(c, "head") is None:
            if c.procs:  # the head died: its nodes cannot rejoin a new GCS
                down(folder, keep_state=True)
                c = Cluster.load(folder)
            _start_head(c, spec)
        for i in range(spec.nodes):
            if _live(c, f"node{i + 1}") is None:
                _start_node(c, f"node{i + 1}", spec)
        if _live(c, "mlflow") is None:
            _start_mlflow(c)
    except BaseException:
        down(folder)
        raise
    return c


def _live(c: Cluster, name: str) -> psutil.Process | None:
    proc = c.proc(name)
    return _handle(proc) if proc else None


def stop(folder: Path, name: str, grace: float = 10.0) -> bool:
    """Stop one recorded process tree (``head``, ``node1``, ..., ``mlflow``). Returns whether it
    was running."""
    c = Cluster.load(folder)
    proc = c.proc(name)
    if proc is None:
        raise ClusterError(f"no process {name!r} in {folder}; known: {[p.name for p in c.procs]}")
    root = _handle(proc)
    if root is None:
        return False
    tree = [root, *root.children(recursive=True)]
    if name == "mlflow" and c.credentials is not None:
        # The server's supervisor stops MLflow, then PostgreSQL with its fast shutdown.
        with contextlib.suppress(psutil.Error):
            root.send_signal(signal.SIGTERM)
        _, tree = psutil.wait_procs(tree, timeout=4 * grace)
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    return True


def down(folder: Path, keep_state: bool = False) -> list[str]:
    """Stop every process ``up`` started (nodes first, then the head and MLflow); returns the
    names of those that were running."""
    c = Cluster.load(folder)
    order = sorted(c.procs, key=lambda p: (p.name == "mlflow", p.name == "head"))
    stopped = [p.name for p in order if stop(folder, p.name)]
    if not keep_state:
        shutil.rmtree(c.temp_dir, ignore_errors=True)
        (Path(c.folder) / STATE).unlink()
    else:
        c.procs = []
        c.save()
    return stopped


def status(folder: Path) -> dict[str, Any]:
    """Addresses and, per recorded process, whether it is alive."""
    c = Cluster.load(folder)
    return {
        "address": c.address,
        "dashboard": c.dashboard,
        "tracking_uri": c.tracking_uri,
        "credentials": str(c.credentials) if c.credentials else None,
        "processes": {p.name: {"pid": p.pid, "alive": _handle(p) is not None} for p in c.procs},
    }
