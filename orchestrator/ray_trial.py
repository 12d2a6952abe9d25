"""The per-worker function of a trial's Ray Train run: a thin adapter around the trainer.

It rebuilds the typed trainer config from the trial's parameters, resumes from
``ray.train.get_checkpoint()``, and runs :func:`trainer.run.run_trial` with a reporter that calls
``ray.train.report`` on every rank at the same points (it is a barrier) and logs to MLflow from
rank 0 only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray.train

from orchestrator.tracking import TrialTracker
from search_spaces import apply_params
from trainer.config import flatten, validate_tree
from trainer.run import run_trial

log = logging.getLogger(__name__)


class RayReporter:
    """Forwards the trainer's reports to Ray Train (every rank) and MLflow (rank 0)."""

    def __init__(self, tracker: TrialTracker | None, launch_s: float) -> None:
        self.tracker = tracker
        self.launch_s = launch_s
        self.epoch = 0

    def report(
        self, metrics: Mapping[str, float], *, epoch: int, step: int, checkpoint: Path | None
    ) -> None:
        self.epoch = epoch
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=epoch)
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        # A monotonic epoch: after a restore Tune's training_iteration restarts, the epoch does not.
        ray.train.report({**metrics, "epoch": epoch, "step": step}, checkpoint=ckpt)

    def final(self, metrics: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        # From the trial driver's start to this worker's start: Ray's share of the latency.
        metrics = {**metrics, "time/launch_s": self.launch_s}
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=self.epoch + 1)
            self.tracker.log_artifacts([p for p in artifacts if p.suffix != ".tsv"])
            self.tracker.log_artifacts([p for p in artifacts if p.suffix == ".tsv"], "scores")
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        ray.train.report({**finite, "epoch": self.epoch, "done": 1.0})


def _open_tracker(config: dict[str, Any], cfg, out_dir: Path) -> TrialTracker:
    m = config["mlflow"]
    # Fail fast on an MLflow outage (MLflow's client retries for minutes by default, holding
    # every rank at the next report barrier); the tracker buffers and retries instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return TrialTracker.open(
        m["uri"],
        m["experiment_id"],
        m["parent_run_id"],
        config["trial_id"],
        flatten(cfg),
        spool=out_dir / "mlflow_unsent.jsonl",
    )


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``config`` comes from the trial driver."""
    launch_s = time.time() - config["driver_started"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    cfg = apply_params(validate_tree(config["base"]), config["params"])
    out_dir = Path(config["trials_dir"]) / config["trial_id"]
    resume = None
    # Only Ray's checkpoint (in the run's storage, reachable from any node) is resumed from:
    # a restarted worker group may land on another node than the one that wrote the last one.
    restored = ray.train.get_checkpoint()
    if restored is not None:
        resume = Path(restored.to_directory(str(out_dir / "checkpoints" / f"restored-r{rank}")))
        log.info("rank %d resumes from %s", rank, restored.path)
    tracker = _open_tracker(config, cfg, out_dir) if rank == 0 else None
    if tracker is not None and restored is not None:
        tracker.set_tag("supcon.resumed_from", Path(restored.path).name)
    try:
        run_trial(cfg, out_dir, RayReporter(tracker, launch_s), resume=resume, resume_local=False)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.finish("FINISHED")
