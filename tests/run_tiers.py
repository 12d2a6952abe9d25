"""``make test``: the whole suite as three pytest processes, two at a time, then its slowest tests.

- The Ray tier (markers ``ray`` or ``cluster``) is split in two by file. Its first part runs from
  the start, its output streamed to the terminal.
- The Ray-free tier (everything else) runs beside it, its output kept and printed at the end;
  much of the Ray tier's time is spent waiting on processes, which this fills.
- When the Ray-free tier ends, the Ray tier's second part (``RAY_LATE``: the two longest files,
  whose tests start their own sweeps) takes its place, with a Ray instance of its own. Two local
  Ray instances on one machine are safe since each one's processes find its own State API
  (``API_SERVER_VAR`` in ``orchestrator/engine/session.py``); ``test_concurrent.py`` tests
  exactly that. Never more than two pytest processes run, on a 2-core machine.

Both read one synthetic corpus (``SUPCON_TEST_CORPUS``, see ``tests/conftest.py``). The exit
status is the worse of the two; the slowest tests of both are listed together at the end.
Arguments are passed to both pytest processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"ray": "ray or cluster", "ray-free": "not ray and not cluster"}
# the Ray tier's second part: ~13 of its ~38 minutes on 2 cores (2026-12-07)
RAY_LATE = ["tests/orchestrator/test_prefix_sweep.py", "tests/orchestrator/test_concurrent.py"]
SLOWEST = 25


def _pytest(
    name: str, marks: str, work: Path, extra: list[str], paths: list[str] = (), **kw
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", "-m", marks, "-p", "no:cacheprovider"]
    cmd += ["--basetemp", str(work / name), "--junitxml", str(work / f"{name}.xml")]
    return subprocess.Popen([*cmd, *paths, *extra], cwd=ROOT, **kw)


def _split(extra: list[str]) -> tuple[list[str], list[str]]:
    """The Ray tier's two parts as pytest paths and options; when the arguments name test
    paths themselves, one part runs them all."""
    if any(not a.startswith("-") and Path(ROOT, a.split("::")[0]).exists() for a in extra):
        return [], []
    early = [opt for late in RAY_LATE for opt in ("--ignore", late)]
    return early, RAY_LATE


def slowest(reports: list[Path], count: int = SLOWEST) -> list[tuple[float, str]]:
    """The ``count`` slowest test cases of the JUnit reports: (seconds, test id)."""
    cases = []
    for report in reports:
        if not report.is_file():
            continue
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            cases.append((float(case.get("time", 0.0)), name))
    return sorted(cases, reverse=True)[:count]


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="supcon-tests-") as tmp:
        work = Path(tmp)
        os.environ["SUPCON_TEST_CORPUS"] = str(work / "corpus")
        started = time.monotonic()
        early, late = _split(extra)
        logs = {name: (work / f"{name}.log").open("w") for name in ("ray-free", "ray-late")}
        with logs["ray-free"] as quiet_log, logs["ray-late"] as late_log:
            out = {"stdout": quiet_log, "stderr": quiet_log}
            quiet = _pytest("ray-free", TIERS["ray-free"], work, extra, **out)
            loud = _pytest("ray", TIERS["ray"], work, extra, early)
            codes = {"ray-free": quiet.wait()}
            if late:
                out = {"stdout": late_log, "stderr": late_log}
                second = _pytest("ray-late", TIERS["ray"], work, extra, late, **out)
                codes["ray-late"] = second.wait()
            codes["ray"] = loud.wait()
        for name, title in (
            ("ray-late", "the Ray tier's second part"),
            ("ray-free", "the Ray-free tier"),
        ):
            if name in codes:
                print(f"\n{'=' * 30} {title} {'=' * 30}", flush=True)
                print((work / f"{name}.log").read_text(), flush=True)
        wall = time.monotonic() - started
        print(f"{'=' * 20} the {SLOWEST} slowest tests of all parts {'=' * 20}")
        for seconds, name in slowest([work / f"{name}.xml" for name in codes]):
            print(f"{seconds:8.1f} s  {name}")
        states = ", ".join(f"{k}: exit {v}" for k, v in codes.items())
        print(f"all parts in {wall:.0f} s wall ({states})")
    # pytest's 5 (nothing collected) is not a failure of a tier that a filter emptied
    failed = [c for c in codes.values() if c not in (0, 5)]
    return max(failed, default=0)


if __name__ == "__main__":
    raise SystemExit(main())
