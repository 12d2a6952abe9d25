"""The CLI's front door, timed as whole processes: ``--help`` and config errors.

A user's first contact is ``supcon-sweep --help`` or a typo in an override; both must answer
before torch, transformers or Ray are imported. Each case is a fresh process (the way a user
runs it), timed ``--rounds`` times, interleaved; the median is reported next to two references
measured in the same run: a bare interpreter start (the floor) and importing torch,
transformers and Ray (what the front door used to pay first).

    python bench/front_door.py [--rounds 7]

Aims: ``--help`` under 1 s, a config error under 2 s (idle 2-core machine).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The checkout this file is in, whatever is installed: python -m from its root.
CLI = [sys.executable, "-m", "orchestrator.cli"]


def _cases(bad_space: Path) -> dict[str, tuple[list[str], int, float | None]]:
    """name -> (argv, expected exit status, aim in seconds)."""
    py = sys.executable
    return {
        "python -c pass (floor)": ([py, "-c", "pass"], 0, None),
        "import torch, transformers, ray (old cost)": (
            [py, "-c", "import torch, transformers, ray.tune"],
            0,
            None,
        ),
        "supcon-sweep --help": ([*CLI, "--help"], 0, 1.0),
        "supcon-sweep sweep --help": ([*CLI, "sweep", "--help"], 0, 1.0),
        "supcon-sweep trial loss.temprature=0.1": ([*CLI, "trial", "loss.temprature=0.1"], 2, 2.0),
        "supcon-sweep sweep --space bad.yaml": (
            [*CLI, "sweep", "--space", str(bad_space), "--out", str(bad_space.parent)],
            2,
            2.0,
        ),
    }


def _time(argv: list[str], expected: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(
            f"{' '.join(argv)} exited {done.returncode}, expected {expected}:\n{done.stderr}"
        )
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs per case (default 7)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bad_space = Path(tmp) / "bad.yaml"
        bad_space.write_text("loss.temprature: {loguniform: [0.03, 1.0]}\n", encoding="utf-8")
        cases = _cases(bad_space)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (case_argv, expected, _aim) in cases.items():
                times[name].append(_time(case_argv, expected))
    floor = statistics.median(times["python -c pass (floor)"])
    heavy = statistics.median(times["import torch, transformers, ray (old cost)"])
    print(f"{'case':<44} {'median s':>9} {'/ floor':>8} {'/ heavy':>8}  aim")
    for name, (_argv, _expected, aim) in cases.items():
        median = statistics.median(times[name])
        verdict = "" if aim is None else f"< {aim:g} s: {'met' if median < aim else 'MISSED'}"
        print(f"{name:<44} {median:>9.3f} {median / floor:>8.2f} {median / heavy:>8.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
