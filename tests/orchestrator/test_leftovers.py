"""Cleaning up after a killed local sweep stops what that sweep's Ray left running, and nothing
else: not another sweep's instance (its driver is alive), not a process of the user's that never
touched a recorded session. Real processes, real signals; the Ray case is in
``test_local_ray.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.cli import main
from orchestrator.engine import leftovers

HOLD = "import sys, time; f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(120)"


def _holding(path: Path) -> subprocess.Popen:
    """A process that keeps ``path`` open, as a Ray agent keeps its session's log files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _record(folder: Path, pid: int, started: float, session: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"driver_pid": pid, "driver_started": started, "session_dir": str(session)}
    (folder / f"{pid}.json").write_text(json.dumps(entry))


@pytest.fixture
def scene(tmp_path: Path):
    """A dead driver's instance, a live driver's instance, and an unrelated process."""
    registry = tmp_path / "registry"
    dead_session = tmp_path / "ray" / "session_dead_1"
    live_session = tmp_path / "ray" / "session_live_2"
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    started = psutil.Process(driver.pid).create_time()
    driver.kill()
    driver.wait()
    _record(registry, driver.pid, started, dead_session)
    me = psutil.Process()
    _record(registry, me.pid, me.create_time(), live_session)
    procs = {
        "orphan": _holding(dead_session / "logs" / "dashboard_agent.err"),
        "other sweep": _holding(live_session / "logs" / "dashboard_agent.err"),
        "unrelated": _holding(tmp_path / "notes" / "session_dead_1.txt"),
    }
    yield registry, procs
    for proc in procs.values():
        proc.kill()
        proc.wait()


def test_clean_stops_only_a_dead_drivers_processes(scene) -> None:
    registry, procs = scene
    found = leftovers.leftovers(registry)
    assert [[p.pid for p in v] for v in found.values()] == [[procs["orphan"].pid]]
    stopped = leftovers.clean(registry)
    assert len(stopped) == 1 and f"({procs['orphan'].pid})" in stopped[0]
    assert procs["orphan"].wait(timeout=10) is not None
    time.sleep(0.2)
    assert procs["other sweep"].poll() is None, "another sweep's live instance was stopped"
    assert procs["unrelated"].poll() is None, "a process the project did not start was stopped"
    # the dead instance's record is gone, the live one's stays; a second clean stops nothing
    assert sorted(p.name for p in registry.glob("*.json")) == [f"{psutil.Process().pid}.json"]
    assert leftovers.clean(registry) == []


def test_cluster_local_clean_names_what_it_stopped(
    scene, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    registry, procs = scene
    monkeypatch.setenv(leftovers.REGISTRY_VAR, str(registry))
    assert main(["cluster", "local", "clean"]) == 0
    out = capsys.readouterr().out
    assert f"({procs['orphan'].pid})" in out
    assert str(procs["other sweep"].pid) not in out
    assert main(["cluster", "local", "clean"]) == 0
    assert "nothing was left behind" in capsys.readouterr().out


def test_an_unreadable_record_is_dropped_and_stops_nothing(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "123.json").write_text("{not json")
    assert leftovers.clean(registry) == []
    assert not list(registry.glob("*.json"))
