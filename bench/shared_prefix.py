"""Shared training prefixes: the same grid swept with and without them, and what they save on
the paper's grids.

Measured (``make bench-prefix``, about 12 minutes on 2 cores): a 6-trial grid of the local
default (temperature 0.1 / 0.3 x queue 0 / 64 / 256 from epoch 4, 12 epochs, 2 gloo workers
per trial, one trial at a time) run as two real sweeps, one after the other, on the embedded
local Ray, MLflow and the tiny synthetic corpus: the stage-1 trial-epochs each trained (Tune's
results: a fork reports only the epochs it trained), the sweeps' wall times and their ratio,
and every trial's objective side by side (they must be equal, not close).

Computed: the trial-epochs and GPU-hours the tree saves on ``paper_grid.yaml`` (the authors' 16
runs) and ``paper_factorial.yaml`` (40 points), at ``--epochs`` per trial and the README's
XLS-R throughput (``--train-samples-s``, the H100 figure of the paper's recipe; the dev monitor
at ``--infer-clips-s``), with the paper config's epoch (a pass over the 2,580 bona fide clips
at 8 + 8 per batch: 5,160 training samples) and its 5,000-clip dev monitor.

    python bench/shared_prefix.py [--skip-sweeps] [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = """\
loss.temperature: {grid: [0.1, 0.3]}
queue.size: {grid: [0, 64, 256]}
queue.start_epoch: 4
"""
BONAFIDE_TRAIN = 2_580  # ASVspoof 2019 LA train bona fide clips
MONITOR = 5_000  # the paper config's stage1.monitor_subset


def sweep(out: Path, space: Path, *extra: str) -> float:
    """Run one sweep of ``space`` into ``out``; its wall seconds."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", "--space", str(space)]
    cmd += ["--out", str(out), "--name", "bench", "--scheduler", "none", "--max-concurrent", "1"]
    cmd += ["--workers-per-trial", "2", "--eval-top-k", "0", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"sweep into {out} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def trained_epochs(out: Path) -> int:
    """Distinct (trial, epoch) each trial trained and reported itself."""
    seen = set()
    for results in (out / "tune" / "bench").glob("*/result.json"):
        for line in results.read_text().splitlines():
            row = json.loads(line)
            if "classifier/dev/eer" not in row:
                seen.add((results.parent.name, int(row["epoch"])))
    return len(seen)


def objectives(out: Path) -> dict[tuple[str, str], tuple[float, float, str | None]]:
    """(temperature, queue size) -> (objective, classifier dev EER, forked from)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("supcon-sweep")
    runs = client.search_runs([exp.experiment_id], "tags.`supcon.trial_id` IS NOT NULL")
    return {
        (r.data.params["loss.temperature"], r.data.params["queue.size"]): (
            r.data.metrics["sweep/objective"],
            r.data.metrics["classifier/dev/eer"],
            r.data.tags.get("supcon.forked_from"),
        )
        for r in runs
    }


def measured() -> None:
    from trainer.defaults import DEFAULT_DATA

    print("== measured: a 6-trial grid of the local default, with and without shared prefixes")
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as tmp:
        space = Path(tmp) / "grid.yaml"
        space.write_text(GRID)
        subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "data", "synth", "--out", str(DEFAULT_DATA)],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        # the reference first: a cold start (imports, the corpus in the page cache) counts
        # against the run without sharing, not for it
        wall_off = sweep(Path(tmp) / "off", space, "--no-share-prefix")
        wall_on = sweep(Path(tmp) / "on", space)
        off, on = objectives(Path(tmp) / "off"), objectives(Path(tmp) / "on")
        epochs_off, epochs_on = trained_epochs(Path(tmp) / "off"), trained_epochs(Path(tmp) / "on")
    print(
        f"{'temperature':>11} {'queue':>6} {'objective off':>14} {'objective on':>13} "
        f"{'stage-2 EER off':>16} {'on':>8}  equal  forked from"
    )
    equal = True
    for key in sorted(off):
        a, b = off[key], on[key]
        same = a[:2] == b[:2]
        equal &= same
        print(
            f"{key[0]:>11} {key[1]:>6} {a[0]:14.6f} {b[0]:13.6f} {a[1]:16.6f} {b[1]:8.6f}  "
            f"{'yes' if same else 'NO':5}  {b[2] or '-'}"
        )
    print(
        f"stage-1 trial-epochs trained: {epochs_off} without sharing, {epochs_on} with "
        f"({epochs_off - epochs_on} shared)"
    )
    print(
        f"sweep wall time: {wall_off:.0f} s without sharing, {wall_on:.0f} s with "
        f"(ratio {wall_on / wall_off:.3f})"
    )
    print(f"every trial's objective and stage-2 EER equal: {'yes' if equal else 'NO'}")


def computed(epochs: int, samples_s: float, infer_s: float, gpus: int) -> None:
    from orchestrator.tune.prefix_tree import build_tree
    from orchestrator.tune.scheduling import asha_rungs
    from search_spaces import load_space
    from trainer.config import load_config

    base = load_config(ROOT / "trainer" / "configs" / "paper.yaml", [f"stage1.epochs={epochs}"])
    samples = 2 * BONAFIDE_TRAIN  # a bona fide pass, 8 bona fide + 8 spoof per batch
    epoch_gpu_s = samples / samples_s + MONITOR / infer_s  # GPU-seconds, whatever the GPUs
    print(
        f"\n== computed: {epochs} stage-1 epochs a trial, an epoch = {samples:,} training samples "
        f"at {samples_s:g}/s per GPU + a {MONITOR:,}-clip dev monitor at {infer_s:g} clips/s = "
        f"{epoch_gpu_s / 60:.1f} GPU-minutes ({gpus} GPUs per trial)"
    )
    for name in ("paper_grid.yaml", "paper_factorial.yaml"):
        space = load_space(ROOT / "search_spaces" / name, base)
        tree = build_tree(space.grid_points(), base, gpus)
        rung = asha_rungs(space, base).grace + 1  # epochs trained by ASHA's first rung
        before_rung = len(tree.nodes) * rung
        saved, total = tree.trial_epochs_saved, tree.trial_epochs
        print(
            f"{name:>21}: {len(tree.nodes)} trials, {total} trial-epochs, {saved} shared "
            f"({100 * saved / total:.1f}%; {100 * saved / before_rung:.1f}% of the "
            f"{before_rung} before ASHA's first rung), {saved * epoch_gpu_s / 3600:.1f} "
            f"GPU-hours saved of {total * epoch_gpu_s / 3600:.1f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-sweeps", action="store_true", help="only the computed figures")
    p.add_argument("--epochs", type=int, default=25, help="stage-1 epochs per trial")
    p.add_argument("--train-samples-s", type=float, default=105.0, help="per GPU (H100, TF32)")
    p.add_argument("--infer-clips-s", type=float, default=150.0)
    p.add_argument("--gpus-per-trial", type=int, default=2)
    a = p.parse_args()
    if not a.skip_sweeps:
        measured()
    computed(a.epochs, a.train_samples_s, a.infer_clips_s, a.gpus_per_trial)


if __name__ == "__main__":
    main()
