"""The private local Ray instance a command starts: it listens on loopback only, and when its
driver is killed with SIGKILL, what Ray leaves running (the dashboard and runtime-env agents) is
stopped by ``supcon-sweep cluster local clean`` (and by the next local start), while the test
session's own Ray instance, started beside it, keeps running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from orchestrator.engine import leftovers
from tests.helpers import listeners, off_loopback, wait_for

pytestmark = [pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[2]
DRIVER = (
    "from orchestrator.engine.session import start_ray; start_ray(None, 1); "
    "print('up', flush=True); import time; time.sleep(600)"
)


def _agents(names: set[str]) -> bool:
    """Both agents are among ``names`` (psutil gives the full process title when it can)."""
    return all(any(n.startswith(a) for n in names) for a in ("ray::DashboardA", "ray::RuntimeEnv"))


def test_killed_local_driver_leaves_nothing_after_clean(ray_session, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[leftovers.REGISTRY_VAR] = str(registry)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "up"
        wait_for(
            lambda: _agents({e[0] for e in listeners(driver.pid)}),
            60,
            "the instance's agents to listen",
        )
        heard = listeners(driver.pid)
        assert {"gcs_server", "raylet"} <= {e[0] for e in heard}
        assert not off_loopback(heard), sorted(off_loopback(heard))
        [record] = registry.glob("*.json")
        driver.send_signal(signal.SIGKILL)
        driver.wait()

        # Ray's agents outlive a SIGKILLed driver: this is what the cleanup is for.
        left = leftovers.leftovers(registry)
        names = {p.name() for procs in left.values() for p in procs}
        assert _agents(names), names
        pids = [p.pid for procs in left.values() for p in procs]

        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "cluster", "local", "clean"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "DashboardAgent" in done.stdout and "RuntimeEnvAgent" in done.stdout, done.stdout
        still = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert not still, still
        assert not record.exists()
    finally:  # whatever failed above, nothing of this test stays running
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        leftovers.clean(registry)
    # the test session's own instance (no record: never the cleanup's) still answers
    assert ray_session.get(ray_session.remote(lambda: 1).remote()) == 1
