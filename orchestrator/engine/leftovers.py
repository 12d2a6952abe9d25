"""Ray processes a killed local sweep left behind, and only those.

A private local Ray instance lives as long as its driver (the ``supcon-sweep`` process): GCS,
raylet, dashboard and workers share its fate. Two do not: after a SIGKILLed driver, Ray 2.60's
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` keep running and listening until the next
Ray start on the machine. So every local instance this project starts is recorded here
(:func:`record`: the driver's pid, its start time and the instance's session directory), and
the next local start (or ``supcon-sweep cluster local down``) stops the processes of the
instances whose driver is gone (:func:`clean`).

What counts as the instance's: a process of this user that has a file open in the recorded
session directory, or names it on its command line. Ray's session directories are unique
(``session_<time>_<driver pid>``), its agents write their logs there, and Ray rewrites the
agents' command lines and environments (``ray::DashboardAgent``), so this is what identifies
them. A process the project did not start has no file there; an instance whose driver still
runs (another sweep beside this one) is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

REGISTRY_VAR = "SUPCON_SWEEP_RAY_REGISTRY"
_SESSION_FLAG = "--session-dir="


def registry() -> Path:
    """Where local instances are recorded: ``$SUPCON_SWEEP_RAY_REGISTRY``, else a folder of
    this user's under the temporary directory (Ray's sessions live there too)."""
    if os.environ.get(REGISTRY_VAR):
        return Path(os.environ[REGISTRY_VAR])
    return Path(tempfile.gettempdir()) / f"supcon-sweep-{os.getuid()}" / "local-ray"


@dataclass(frozen=True)
class Instance:
    driver_pid: int
    driver_started: float  # psutil create_time: a reused pid is never taken for the driver
    session_dir: str

    @property
    def driver_alive(self) -> bool:
        try:
            proc = psutil.Process(self.driver_pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(proc.create_time() - self.driver_started) < 1e-3
        except psutil.Error:
            return False


def session_dir_of(pid: int) -> str | None:
    """The session directory of the local instance ``pid`` started (its GCS names it)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        with contextlib.suppress(psutil.Error):
            for arg in child.cmdline():
                if arg.startswith(_SESSION_FLAG):
                    return arg[len(_SESSION_FLAG) :]
    return None


def record(folder: Path | None = None) -> Path | None:
    """Record the local instance this process just started; None when its session directory
    cannot be found (nothing is recorded, nothing will be cleaned)."""
    session = session_dir_of(os.getpid())
    if session is None:
        log.warning("could not find this Ray instance's session directory: not recorded")
        return None
    folder = folder or registry()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    me = psutil.Process()
    entry = Instance(me.pid, me.create_time(), session)
    path = folder / f"{me.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry.__dict__))
    tmp.replace(path)
    return path


def forget(path: Path | None) -> None:
    """Drop a record at a clean exit (the instance's processes have ended with it)."""
    if path is not None:
        path.unlink(missing_ok=True)


def _load(path: Path) -> Instance | None:
    try:
        raw = json.loads(path.read_text())
        return Instance(int(raw["driver_pid"]), float(raw["driver_started"]), raw["session_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _belongs(proc: psutil.Process, session_dir: str) -> bool:
    inside = session_dir.rstrip("/") + "/"
    with contextlib.suppress(psutil.Error):
        if proc.status() == psutil.STATUS_ZOMBIE:  # nothing to stop; its parent reaps it
            return False
        if any(arg.endswith(session_dir) or inside in arg for arg in proc.cmdline()):
            return True
        return any(f.path.startswith(inside) for f in proc.open_files())
    return False


def leftovers(folder: Path | None = None) -> dict[Path, list[psutil.Process]]:
    """For each recorded instance whose driver is gone: its processes still running."""
    folder = folder or registry()
    dead: dict[Path, Instance] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        entry = _load(path)
        if entry is None or not entry.driver_alive:
            dead[path] = entry
    if not dead:
        return {}
    uid = os.getuid()
    mine = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.uids().real == uid and proc.pid != os.getpid():
                mine.append(proc)
    return {
        path: [p for p in mine if _belongs(p, entry.session_dir)] if entry else []
        for path, entry in dead.items()
    }


def clean(folder: Path | None = None, grace: float = 5.0) -> list[str]:
    """Stop the processes of recorded instances whose driver is gone (SIGTERM, then SIGKILL
    after ``grace`` seconds) and drop their records. Returns ``name (pid)`` of each stopped."""
    stopped: list[str] = []
    for path, procs in leftovers(folder).items():
        names = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                names.append(f"{proc.name()} ({proc.pid})")
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace)
        path.unlink(missing_ok=True)
        stopped += names
    if stopped:
        log.info(
            "stopped %d Ray process(es) a killed local sweep left: %s",
            len(stopped),
            ", ".join(stopped),
        )
    return stopped
