"""Sweep overhead on local Ray: wall time of a sweep of N trials over the trainer's own time.

Runs ``supcon-sweep sweep`` (one trial at a time, 2 DDP workers each) on the synthetic corpus and
reads each trial's timings from MLflow: ``time/trial_s`` (the trainer's own wall time inside the
trial), ``time/launch_s`` (trial driver start -> worker function start) and ``time/setup_s``
(trainer start -> first training step). Prints the ratio sweep wall / sum(trial_s) and the time
from trial start to the first training step. Aim: ratio under 1.25 for 2-minute trials.

    python bench/sweep_overhead.py                 # 3 trials of about 2 minutes
    python bench/sweep_overhead.py --quick         # 2 short trials
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.cli import main as cli
from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking import Tracking
from trainer.data.synth import generate

ROOT = Path(__file__).resolve().parents[1]


def _sweep(out: Path, trials: int, epochs: int) -> tuple[int, float]:
    """Run the benchmark sweep into ``out`` on a fresh synthetic corpus: (exit status, wall s)."""
    la = generate(out / "data", seed=0, size="tiny", progress=False) / "LA"
    overrides = [
        f"data.train.root={la}",
        f"data.dev.root={la}",
        f"data.eval={{asv19: {{kind: asvspoof2019, root: {la}, split: eval}}}}",
        f"stage1.epochs={epochs}",
        "stage1.patience=null",
    ]
    argv = ["sweep", "--space", str(ROOT / "search_spaces" / "default.yaml")]
    argv += ["--num-samples", str(trials), "--max-concurrent", "1", "--scheduler", "none"]
    argv += ["--out", str(out), "--name", "bench", *overrides]
    start = time.monotonic()
    code = cli(argv)
    return code, time.monotonic() - start


def _report(rows: list[dict], wall: float) -> None:
    trial_s = [r["metrics"]["time/trial_s"] for r in rows]
    launch = [r["metrics"]["time/launch_s"] for r in rows]
    setup = [r["metrics"]["time/setup_s"] for r in rows]
    print(
        f"\n{len(rows)} trials, trainer time per trial {statistics.mean(trial_s):.1f} s "
        f"(sum {sum(trial_s):.1f} s), sweep wall {wall:.1f} s"
    )
    print(
        f"overhead ratio (sweep wall / sum of trainer time) = {wall / sum(trial_s):.2f}  "
        "(aim < 1.25 for 2-minute trials)"
    )
    print(
        f"trial start -> first training step: median "
        f"{statistics.median(a + b for a, b in zip(launch, setup, strict=True)):.1f} s "
        f"(Ray launch {statistics.median(launch):.1f} s "
        f"+ trainer setup {statistics.median(setup):.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="stage-1 epochs per trial")
    parser.add_argument("--quick", action="store_true", help="2 trials of 3 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.epochs = 2, 3
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        out = Path(tmp)
        code, wall = _sweep(out, args.trials, args.epochs)
        if code:
            return code
        uri = f"sqlite:///{out / 'mlflow.db'}"
        rows = Tracking.at(uri, DEFAULT_EXPERIMENT).best(metric="time/trial_s", top=args.trials)
    _report(rows, wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
