"""The team's MLflow server: PostgreSQL behind it, MLflow's ``basic-auth`` app in front.

:func:`serve` is ``supcon-sweep cluster server``: it runs in the foreground and supervises
what it starts, so one process tree is the whole service (``cluster local up`` records it, the
cluster head runs it under ``nohup``, a Kubernetes Deployment runs it as its command):

1. a PostgreSQL server of its own (``initdb`` on first use, data in ``FOLDER/postgres``,
   listening on 127.0.0.1 only, every login by password), or an external database
   (``--database-url`` without a password; ``PGPASSWORD`` from a Secret);
2. the role ``mlflow`` owning two databases, ``mlflow`` (runs, metrics, the model registry) and
   ``mlflow_auth`` (users and permissions);
3. MLflow's users: the admin (its password generated once, in ``FOLDER/secrets/auth.ini``) and
   the sweep user whose ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` file trials,
   drivers and researchers read (``--users``; generated when missing);
4. ``mlflow server --app-name basic-auth`` on that database, with the pool sizes and workers of
   :data:`WORKERS` and :func:`pool_env`.

Every secret lives in a file of mode 600 in ``FOLDER/secrets`` (mode 700) and reaches a process
through its environment or a file, never its command line (which ``ps`` shows to everyone).
When one of the two servers exits, or the supervisor is asked to stop, it stops the other.

SQLite (``--backend sqlite``, one worker) stays for comparison and for single-machine use.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib.util
import io
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

ROLE = "mlflow"
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"
ADMIN = "admin"
SWEEP_USER = "sweep"
USER_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"
POSTGRES_BIN_VAR = "SUPCON_POSTGRES_BIN"
DATABASE_URL_VAR = "SUPCON_MLFLOW_DATABASE_URL"
# Server workers for PostgreSQL: each is a process with its own connection pool, so they use
# the head's cores for the PBKDF2 password checks and JSON work that one worker serialises.
WORKERS = 4
# Each MLflow worker serves up to 40 requests at once (the thread pool of its WSGI bridge), and
# a `log_batch` can hold two pooled connections at a time. SQLAlchemy's default pool (5 + 10
# overflow) then runs dry and every thread waits for a second connection that never frees: the
# deadlock measured on the SQLite server. 40 + 40 lets every thread hold two; the PostgreSQL
# server allows WORKERS x 80 of them plus the supervisor's own and a margin.
POOL_SIZE = 40
POOL_OVERFLOW = 40
MAX_CONNECTIONS = WORKERS * (POOL_SIZE + POOL_OVERFLOW) + 20
# Credential checks are PBKDF2 hashes (~0.1 s of CPU each); MLflow caches a good one per worker
# for this long, so a password change reaches every worker within it.
AUTH_CACHE_S = 60


class ServerError(RuntimeError):
    """The tracking server could not be prepared or started; the message says which part."""


# -- Files that hold secrets ------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 600, atomically: a reader sees the old file or the
    whole new one, and the secret never sits in a file anyone else can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _secret(path: Path) -> str:
    """The secret in ``path``, generated (256 bits) on first use."""
    if not path.is_file():
        write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` allowed, ``#`` comments) of a credentials file."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def user_credentials(path: Path, user: str = SWEEP_USER) -> tuple[str, str]:
    """The (username, password) in the credentials file ``path``, created for ``user`` with a
    new password when missing. Its form is what ``set -a; . FILE; set +a`` exports."""
    path = Path(path).expanduser()
    if not path.is_file():
        password = secrets.token_urlsafe(24)
        write_private(path, f"{USER_VAR}={user}\n{PASSWORD_VAR}={password}\n")
    values = read_env_file(path)
    missing = [k for k in (USER_VAR, PASSWORD_VAR) if not values.get(k)]
    if missing:
        raise ServerError(f"{path}: no {' or '.join(missing)} in it")
    if path.stat().st_mode & 0o077:
        raise ServerError(f"{path} is readable by others; chmod 600 it (it holds a password)")
    return values[USER_VAR], values[PASSWORD_VAR]


# -- PostgreSQL -------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: ``SUPCON_POSTGRES_BIN``, else the server the
    ``pgserver`` wheel ships (the dev extra), else Debian's newest ``/usr/lib/postgresql/N``."""
    candidates = []
    if os.environ.get(POSTGRES_BIN_VAR):
        candidates.append(Path(os.environ[POSTGRES_BIN_VAR]))
    wheel = importlib.util.find_spec("pgserver")  # located, not imported: its import has effects
    if wheel is not None and wheel.origin:
        candidates.append(Path(wheel.origin).parent / "pginstall" / "bin")
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    candidates += reversed(debian)
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    raise ServerError(
        "no PostgreSQL server found: install the project's dev extra (pip install -e '.[dev]', "
        "which brings the pgserver wheel), or Debian's postgresql package, or set "
        f"{POSTGRES_BIN_VAR} to the folder holding `postgres` and `initdb`"
    )


def _unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` as PostgreSQL accepts it: the server refuses to run as root, so under root it
    runs in a user namespace where it is ``nobody`` while its files stay this user's."""
    if os.geteuid() != 0:
        return cmd
    return ["unshare", "--user", "--map-user=65534", "--map-group=65534", *cmd]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, password: str, database: str = "postgres", user: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        dbname=database,
        connect_timeout=3,
    )


@dataclass
class Postgres:
    """A PostgreSQL server of this folder: data in ``data``, on 127.0.0.1:``port``."""

    data: Path
    port: int
    secrets: Path

    @property
    def superuser_password(self) -> str:
        return _secret(self.secrets / "postgres.pw")

    @property
    def role_password(self) -> str:
        return _secret(self.secrets / "mlflow-db.pw")

    def init(self) -> None:
        """``initdb`` once: superuser ``postgres`` with a generated password, password
        (SCRAM) logins only, UTF-8."""
        if (self.data / "PG_VERSION").is_file():
            return
        self.superuser_password  # noqa: B018 - generate it before initdb reads it
        partial = self.data.with_name(self.data.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [str(postgres_bin() / "initdb"), "-D", str(partial), "-U", "postgres"]
        cmd += ["--pwfile", str(self.secrets / "postgres.pw"), "-A", "scram-sha-256"]
        cmd += ["-E", "UTF8", "--no-instructions"]
        done = subprocess.run(
            _unprivileged(cmd), capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise ServerError(f"initdb failed for {self.data}:\n{done.stderr[-2000:]}")
        partial.rename(self.data)  # a half-initialised folder never looks like a database

    def command(self) -> list[str]:
        """The server in the foreground: TCP on 127.0.0.1 only, no Unix socket."""
        cmd = [str(postgres_bin() / "postgres"), "-D", str(self.data), "-h", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-c", "unix_socket_directories="]
        cmd += ["-c", f"max_connections={MAX_CONNECTIONS}"]
        return _unprivileged(cmd)

    def ready(self) -> bool:
        try:
            _connect(self.port, self.superuser_password).close()
            return True
        except Exception:
            return False

    def provision(self) -> str:
        """The role ``mlflow`` (its password set from the secrets) owning the two databases;
        returns the tracking database's URI (no password: libpq reads it from PGPASSFILE)."""
        conn = _connect(self.port, self.superuser_password)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(f"{verb} ROLE {ROLE} LOGIN PASSWORD %s", (self.role_password,))
                for db in (TRACKING_DB, AUTH_DB):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if not cur.fetchone():
                        cur.execute(f"CREATE DATABASE {db} OWNER {ROLE}")
        finally:
            conn.close()
        pgpass = self.secrets / "pgpass"
        write_private(pgpass, f"127.0.0.1:{self.port}:*:{ROLE}:{self.role_password}\n")
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}/{TRACKING_DB}"


def auth_database(tracking_uri: str) -> str:
    """The users' database beside the tracking database: same server, ``mlflow_auth``."""
    parts = urlsplit(tracking_uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{AUTH_DB}", parts.query, ""))


# -- MLflow -----------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    """What ``cluster server`` runs. ``folder`` holds the secrets, the PostgreSQL data (or the
    SQLite files) and, unless ``artifacts`` names a bucket, the artifacts."""

    folder: Path
    host: str = "127.0.0.1"
    port: int = 5000
    backend: str = "postgresql"  # or "sqlite"
    database_url: str | None = None  # an external PostgreSQL (no password in it)
    pg_port: int = 5432
    workers: int | None = None  # default: WORKERS on PostgreSQL, 1 on SQLite
    artifacts: str | None = None
    allowed_hosts: str | None = None
    users: Path | None = None  # the sweep user's credentials file
    users_from_env: bool = False  # ...or MLFLOW_TRACKING_USERNAME/PASSWORD (a Kubernetes Secret)
    auth: bool = True

    @property
    def secrets(self) -> Path:
        return Path(self.folder) / "secrets"

    @property
    def users_file(self) -> Path:
        return Path(self.users).expanduser() if self.users else self.secrets / "sweep.env"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def pool_env(backend: str) -> dict[str, str]:
    """The SQLAlchemy pool of each MLflow worker (see :data:`POOL_SIZE`)."""
    if backend != "postgresql":
        return {}
    return {
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(POOL_SIZE),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(POOL_OVERFLOW),
        "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "3600",
    }


def write_auth_config(spec: ServerSpec, auth_uri: str) -> Path:
    """MLflow's ``basic-auth`` configuration: the admin (password generated once), users'
    database, READ for users on what they did not create, the credentials cache."""
    cfg = configparser.ConfigParser()
    cfg["mlflow"] = {
        "default_permission": "READ",
        "database_uri": auth_uri,
        "admin_username": ADMIN,
        "admin_password": _secret(spec.secrets / "admin.pw"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": str(AUTH_CACHE_S),
    }
    path = spec.secrets / "auth.ini"
    text = io.StringIO()
    cfg.write(text)
    write_private(path, text.getvalue())
    return path


@contextlib.contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` set in this process's environment inside the block, the old values back after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_user(auth_uri: str, username: str, password: str, env: dict[str, str]) -> None:
    """Create MLflow user ``username`` in the users' database, or set its password to
    ``password`` (so a rotated credentials file takes effect at the next start)."""
    with environ(env):  # PGPASSFILE for the database connection
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore()
        store.init_db(auth_uri)
        if store.has_user(username):
            store.update_user(username, password=password)
        else:
            store.create_user(username, password)
        store.engine.dispose()


def mlflow_command(spec: ServerSpec, store_uri: str) -> list[str]:
    workers = spec.workers or (WORKERS if spec.backend == "postgresql" else 1)
    artifacts = spec.artifacts or str(Path(spec.folder).resolve() / "mlartifacts")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server"]
    if spec.auth:
        cmd += ["--app-name", "basic-auth"]
    cmd += ["--host", spec.host, "--port", str(spec.port), "--workers", str(workers)]
    cmd += ["--backend-store-uri", store_uri, "--artifacts-destination", artifacts]
    cmd += ["--serve-artifacts"]
    if spec.allowed_hosts:
        cmd += ["--allowed-hosts", spec.allowed_hosts]
    return cmd


def http_ok(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (an error status is an answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


# -- The supervisor ---------------------------------------------------------------------------


def _server_env(extra: dict[str, str]) -> dict[str, str]:
    """The MLflow server's environment: no client login (a server needs none), and MLflow's
    server-side job runner off (a runner and 7 consumers per start, which the project never
    uses, each start leaving a folder in /dev/shm)."""
    env = {k: v for k, v in os.environ.items() if k not in (USER_VAR, PASSWORD_VAR)}
    return {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.is_file() else ""
            raise ServerError(f"{what} exited while starting (log {logfile}):\n{tail}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} not ready after {timeout:.0f} s (log {logfile})")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen, sig: int, grace: float = 30) -> None:
    """``sig`` to a child, then, if it has not exited after ``grace`` s, SIGKILL to its whole
    process group (each child leads its own: MLflow's uvicorn workers and job runners, the
    PostgreSQL backends)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(spec: ServerSpec) -> int:
    """Prepare and run the tracking server until it or its database exits, or SIGTERM/SIGINT
    arrives; then stop both. Returns the exit status."""
    folder = Path(spec.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    spec.secrets.mkdir(mode=0o700, exist_ok=True)
    spec.secrets.chmod(0o700)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    children: list[tuple[subprocess.Popen, int]] = []
    stopping = []

    def on_signal(signum, _frame) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        env: dict[str, str] = {}
        if spec.backend == "sqlite":
            store_uri = f"sqlite:///{folder / 'mlflow.db'}"
            auth_uri = f"sqlite:///{folder / 'auth.db'}"
        elif spec.database_url:
            store_uri = spec.database_url
            auth_uri = auth_database(store_uri)
        else:
            pg = Postgres(folder / "postgres", spec.pg_port, spec.secrets)
            pg.init()
            pg_log = logs / "postgres.log"
            with pg_log.open("ab") as out:
                proc = subprocess.Popen(
                    pg.command(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    process_group=0,
                )
            children.append((proc, signal.SIGINT))  # SIGINT: PostgreSQL's fast shutdown
            _wait(proc, pg.ready, "PostgreSQL", 120, pg_log)
            store_uri = pg.provision()
            auth_uri = auth_database(store_uri)
            env["PGPASSFILE"] = str(spec.secrets / "pgpass")
        env.update(pool_env(spec.backend))
        if spec.auth:
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(spec, auth_uri))
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _secret(spec.secrets / "flask.key")
            if spec.users_from_env:
                user, password = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
                if not (user and password):
                    raise ServerError(f"--users-from-env: {USER_VAR} or {PASSWORD_VAR} is not set")
            else:
                user, password = user_credentials(spec.users_file)
            ensure_user(auth_uri, user, password, env)
        ml_log = logs / "mlflow.log"
        with ml_log.open("ab") as out:
            proc = subprocess.Popen(
                mlflow_command(spec, store_uri),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_server_env(env),
                process_group=0,
            )
        children.append((proc, signal.SIGTERM))
        _wait(proc, lambda: http_ok(f"{spec.url}/health"), "the MLflow server", 180, ml_log)
        message = f"MLflow ready at {spec.url} ({spec.backend})"
        if spec.auth and not spec.users_from_env:
            message += f"; sweep user's credentials in {spec.users_file}"
        print(message, flush=True)
        while all(p.poll() is None for p, _ in children):
            time.sleep(1)
        gone = [p.args[0] for p, _ in children if p.poll() is not None]
        print(f"{Path(gone[0]).name} exited; stopping the rest", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0 if stopping else 130
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in previous:  # a second SIGTERM or Ctrl-C must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        for proc, sig in reversed(children):
            _stop(proc, sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
