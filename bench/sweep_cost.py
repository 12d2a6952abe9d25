"""What a sweep stores and what its evaluation costs, before and after bounded checkpoints and
top-K test-set scoring.

Measured: the on-disk size of a resume checkpoint (model + best model + AdamW state + queue)
and of a final model folder, written by the project's own save functions for the ``xlsr-300m``
preset (the real XLS-R 300M architecture, random weights). Computed from those sizes: storage
per trial and per sweep. Computed from the set sizes and a throughput (``--train-clips-s``,
``--infer-clips-s``; defaults are the cluster guide's A100 assumption): GPU-hours of a sweep.

    python bench/sweep_cost.py [--preset xlsr-300m] [--trials 40] [--epochs 30] [--top-k 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.storage import folder_bytes
from trainer import checkpoint
from trainer.config import load_config
from trainer.evaluate import FinalModel
from trainer.model import SupConModel, count_parameters
from trainer.queue import CrossBatchQueue
from trainer.step import build_optimizer

TRAIN, DEV = 25_380, 24_844  # ASVspoof 2019 LA train and dev clips
TEST = {"asv19": 71_237, "itw": 31_779, "asv21la": 181_566, "asv21df": 611_829}  # all trials
GB = 1e9


def measure(preset: str, queue_size: int) -> tuple[int, int, int]:
    """(parameters, checkpoint bytes, final model bytes), written to a temporary folder."""
    cfg = load_config(overrides=[f"model.preset={preset}", "model.embedding_dim=256"])
    model = SupConModel(cfg.model)
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW's two moments now exist for every parameter, as after step 1
    queue = CrossBatchQueue(queue_size, cfg.model.embedding_dim, device=torch.device("cpu"))
    state = {
        "optimizer": optimizer.state_dict(),
        "queue": queue.state_dict(),
        "config": cfg.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        ckpt = checkpoint.save(
            Path(tmp) / "ckpt", state=state, model=model.state_dict(), best_model=model.state_dict()
        )
        final = FinalModel(cfg, model, torch.nn.Linear(cfg.model.embedding_dim, 1))
        folder = final.save(Path(tmp) / "model")
        return count_parameters(model), folder_bytes(ckpt), folder_bytes(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="xlsr-300m")
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--trials", type=int, default=40, help="the paper grid: 40 points")
    p.add_argument("--epochs", type=int, default=30, help="stage-1 epochs a trial runs")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--monitor", type=int, default=5_000, help="stage1.monitor_subset")
    p.add_argument("--train-clips-s", type=float, default=50.0)
    p.add_argument("--infer-clips-s", type=float, default=150.0)
    a = p.parse_args()

    start = time.perf_counter()
    params, ckpt, final = measure(a.preset, a.queue_size)
    took = time.perf_counter() - start
    print(f"{a.preset}: {params / 1e6:.0f} M parameters (measured in {took:.0f} s)")
    print(f"  resume checkpoint  {ckpt / GB:6.2f} GB (measured)")
    print(f"  final model folder {final / GB:6.2f} GB (measured)")

    before = a.epochs * ckpt + ckpt  # every epoch kept in storage + the trial's local copy
    after = ckpt + final  # one kept checkpoint + the final model; no local copy
    print(f"\nstorage per trial at {a.epochs} epochs (computed from the sizes above)")
    print(
        f"  before {before / GB:8.1f} GB   after {after / GB:6.1f} GB   ratio {after / before:.3f}"
    )
    total_before, total_after = a.trials * before / GB, a.trials * after / GB
    print(f"  x {a.trials} trials: before {total_before:,.0f} GB, after {total_after:,.0f} GB")

    test = sum(TEST.values())
    epoch_before = TRAIN / a.train_clips_s + DEV / a.infer_clips_s
    epoch_after = TRAIN / a.train_clips_s + min(a.monitor, DEV) / a.infer_clips_s
    stage2 = (TRAIN + DEV) / a.infer_clips_s  # embeddings for the linear classifier
    trial_before = a.epochs * epoch_before + stage2 + test / a.infer_clips_s
    trial_after = a.epochs * epoch_after + stage2
    sweep_before = a.trials * trial_before / 3600
    sweep_after = (a.trials * trial_after + min(a.top_k, a.trials) * test / a.infer_clips_s) / 3600
    print(
        f"\nGPU-hours of a {a.trials}-trial sweep, {a.epochs} epochs per trial (computed; "
        f"{a.train_clips_s:g} train / {a.infer_clips_s:g} inference clips/s per GPU, "
        f"{test:,} test clips)"
    )
    print(f"  before {sweep_before:7.1f} GPU-h (every trial scores the test sets, whole dev/epoch)")
    print(
        f"  after  {sweep_after:7.1f} GPU-h (top {a.top_k} scored, {a.monitor:,}-clip monitor)"
        f"   ratio {sweep_after / sweep_before:.3f}"
    )


if __name__ == "__main__":
    main()
