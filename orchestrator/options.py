"""What several ``supcon-sweep`` commands share: the tracking and Ray options (one help text
each), the exit-status policy (stated once, for every ``--help``) and the quick checks that
answer "bad input" before anything heavy is imported."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.settings import DEFAULT_EXPERIMENT

# One exit policy for every command: the trainer's, re-exported.
from trainer.cli import EXIT_BAD_INPUT as EXIT_BAD_INPUT
from trainer.cli import EXIT_FAILED as EXIT_FAILED
from trainer.config import ConfigError, TrainerConfig, apply_overrides

DEFAULT_OUT = Path("runs")
DEFAULT_JOB_SERVER = "http://127.0.0.1:8265"

EXIT_STATUS = (
    "Exit status: 0 done; 1 the work ran and failed (a trial, a sweep in which every trial "
    "failed, a followed job); 2 bad input or a service that cannot be reached (arguments, "
    "config, search space, an unknown experiment or run, a missing store, MLflow or Ray not "
    "reachable)."
)


def add_tracking_args(parser: argparse._ActionsContainer, *, out: bool = True) -> None:
    """``--tracking-uri`` and ``--experiment``; with ``out``, also ``--out``, the folder that
    holds the embedded store. Without, the store is the default ``--out``'s."""
    store = "OUT" if out else str(DEFAULT_OUT)
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///{store}/mlflow.db)",
    )
    parser.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})",
    )
    if out:
        parser.add_argument(
            "--out",
            type=Path,
            default=DEFAULT_OUT,
            help=f"the sweep's local outputs: mlflow.db (the embedded MLflow store), "
            f"mlartifacts/, tune/, train/, trials/ (default {DEFAULT_OUT})",
        )


def add_ray_args(parser: argparse._ActionsContainer, *, job_server: bool = False) -> None:
    """``--address``: the Ray cluster to join, or (``job_server``) the cluster's job server."""
    if job_server:
        parser.add_argument(
            "--address",
            help=f"the Ray cluster's job server, its dashboard address (default "
            f"{DEFAULT_JOB_SERVER}, e.g. through `ray dashboard cluster.yaml`)",
        )
        return
    parser.add_argument(
        "--address",
        help="Ray cluster to join: HOST:PORT, ray://HOST:PORT or auto (default: the cluster "
        "in RAY_ADDRESS when set, as inside a Ray Job; else start a local Ray instance)",
    )


def bad_input(err: BaseException) -> int:
    """Print ``err`` as the one-line error of bad input; returns its exit status."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """ConnectionError naming ``address`` when nothing answers there: in seconds, where
    ``ray.init`` would retry for minutes. None (a local instance) and ``auto`` pass."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as err:
        raise ConnectionError(f"no Ray cluster reachable at {address}: {err}") from None


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


def storage_path(storage: str | None) -> str:
    """``--storage``: a shared path made absolute (Ray changes trials' working directories);
    URIs as given; "" for none."""
    if not storage or "://" in storage:
        return storage or ""
    return str(Path(storage).resolve())
