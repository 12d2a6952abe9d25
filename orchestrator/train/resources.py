"""What a trial holds on the cluster: the Ray resource names the orchestrator and the cluster
configs agree on, and the checks and config changes that follow from a trial's GPUs and CPUs.

Nothing here imports Ray: the commands check ``--gpus-per-trial`` with it before Ray starts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from trainer.config import ConfigError, TrainerConfig, apply_overrides

# A custom resource held by each trial's driver (the Tune function trainable, which only waits):
# the head node offers as many as trials may run at once, worker nodes offer none.
DRIVER_RESOURCE = "TRAIN_DRIVER"


def check_gpus(workers: int, gpus: float) -> None:
    """One GPU per DDP rank, a share of one GPU for a one-rank trial, or none.

    NCCL refuses two ranks of one process group on one GPU ("Duplicate GPU detected") and a
    rank given two GPUs uses one; so ``gpus`` >= 1 must equal ``workers``. Below 1 (Ray's
    fractional GPUs: 0.5 packs 2 trials on a GPU, 0.25 packs 4) the trial must have one rank,
    else Ray could place two of its ranks on the same GPU, and 1 / ``gpus`` must be a whole
    number, else part of every GPU stays unused."""
    if gpus < 0:
        raise ConfigError(f"--gpus-per-trial {gpus:g}: must be 0 (CPU), a share or a count")
    if 0 < gpus < 1:
        if workers != 1:
            raise ConfigError(
                f"--gpus-per-trial {gpus:g} with --workers-per-trial {workers}: a share of a GPU "
                "is for a one-rank trial; with more ranks Ray may put two ranks of the trial on "
                "one GPU, which NCCL refuses. Use --workers-per-trial 1 to pack trials, or "
                f"--gpus-per-trial {workers}"
            )
        per_gpu = 1 / gpus
        if abs(per_gpu - round(per_gpu)) > 1e-3:
            raise ConfigError(
                f"--gpus-per-trial {gpus:g}: {per_gpu:.2f} trials per GPU leaves part of each "
                "GPU unused; use 1/N (0.5, 0.25, 0.2, ...)"
            )
        return
    if gpus and gpus != workers:
        raise ConfigError(
            f"--gpus-per-trial {gpus:g} with --workers-per-trial {workers}: each DDP rank needs "
            f"a GPU of its own (NCCL fails when two ranks share one, and a rank uses only one); "
            f"use --gpus-per-trial {workers}, or --workers-per-trial {gpus:g}"
        )


def gpu_share(cfg: TrainerConfig, gpus: float) -> TrainerConfig:
    """The config of a trial given ``gpus`` < 1 of a GPU: ``runtime.gpu_memory_fraction`` that
    share (unless set), so a packed trial's allocator stops at its share instead of taking the
    memory of the trials beside it."""
    if _share_fraction(gpus) and cfg.runtime.gpu_memory_fraction is None:
        return apply_overrides(cfg, {"runtime.gpu_memory_fraction": gpus})
    return cfg


def _share_fraction(gpus: float) -> float | None:
    return gpus if 0 < gpus < 1 else None


def moved_share(params: Mapping[str, Any], was: float, now: float) -> dict[str, Any]:
    """A trial's flattened config, run at ``was`` GPUs per trial, rerun at ``now`` (``confirm
    --gpus-per-trial``): the memory fraction :func:`gpu_share` set for ``was`` becomes the one
    for ``now`` (none on whole GPUs). A fraction the user set (any other value) stays."""
    key = "runtime.gpu_memory_fraction"
    if params.get(key) != _share_fraction(was):
        return dict(params)
    return {**params, key: _share_fraction(now)}


def worker_threads(cfg: TrainerConfig, cpus_per_worker: float) -> TrainerConfig:
    """The config a Ray worker runs: ``runtime.threads`` unset becomes the worker's CPUs; set
    above them, a warning says that the node is oversubscribed (two 2-thread ranks on 2 cores
    ran a local trial 2.5x slower than two 1-thread ranks)."""
    cpus = max(1, int(cpus_per_worker))
    threads = cfg.runtime.threads
    if threads is None:
        return apply_overrides(cfg, {"runtime.threads": cpus})
    if threads > cpus:
        print(
            f"warning: runtime.threads={threads} with --cpus-per-worker {cpus_per_worker:g}: "
            f"each rank runs {threads} threads on {cpus} reserved CPU(s), which oversubscribes "
            f"the node; unset runtime.threads (or set it to {cpus}) unless that is intended",
            file=sys.stderr,
        )
    return cfg
