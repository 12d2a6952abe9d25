"""``make test``: the whole suite as two pytest processes side by side, then its slowest tests.

- The Ray tier (markers ``ray`` or ``cluster``) runs in one process, in order, one Ray instance
  at a time, as a single pytest run would: two Ray instances on one machine confuse Ray Train's
  placement-group cleaner. Its output streams to the terminal.
- The Ray-free tier (everything else) runs beside it, its output kept and printed once it ends;
  much of the Ray tier's time is spent waiting on processes, which this fills.

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
SLOWEST = 25


def _pytest(name: str, marks: str, work: Path, extra: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", "-m", marks, "-p", "no:cacheprovider"]
    cmd += ["--basetemp", str(work / name), "--junitxml", str(work / f"{name}.xml"), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, **kw)


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
        with (work / "ray-free.log").open("w") as log:
            quiet = _pytest("ray-free", TIERS["ray-free"], work, extra, stdout=log, stderr=log)
            loud = _pytest("ray", TIERS["ray"], work, extra)
            codes = {"ray": loud.wait(), "ray-free": quiet.wait()}
        print(f"\n{'=' * 30} the Ray-free tier {'=' * 30}", flush=True)
        print((work / "ray-free.log").read_text(), flush=True)
        wall = time.monotonic() - started
        print(f"{'=' * 20} the {SLOWEST} slowest tests of both tiers {'=' * 20}")
        for seconds, name in slowest([work / "ray.xml", work / "ray-free.xml"]):
            print(f"{seconds:8.1f} s  {name}")
        states = ", ".join(f"{k}: exit {v}" for k, v in codes.items())
        print(f"both tiers in {wall:.0f} s wall ({states})")
    # pytest's 5 (nothing collected) is not a failure of a tier that a filter emptied
    failed = [c for c in codes.values() if c not in (0, 5)]
    return max(failed, default=0)


if __name__ == "__main__":
    raise SystemExit(main())
