"""Device, precision, threads, memory share and seeding of one trainer process, and the
implementation choices that follow from them (AdamW's kernel, loader workers)."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from trainer import distributed
from trainer.config import ConfigError, RuntimeConfig


@dataclass
class Runtime:
    device: torch.device
    bf16: bool
    show_progress: bool

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA when enabled; plain fp32 otherwise."""
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()


def setup(cfg: RuntimeConfig, seed: int) -> Runtime:
    """Resolve the device (one GPU per local rank), precision and threads; seed every RNG with
    ``seed + world_rank``. A device or precision this machine lacks raises :class:`ConfigError`."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but no CUDA device is visible")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", distributed.local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
        set_tf32(*tf32_flags(cfg.precision))
    else:
        device = torch.device("cpu")
    if cfg.precision == "bf16" and not use_cuda:
        raise ConfigError("runtime.precision=bf16 needs CUDA; use fp32 (or auto) on CPU")
    if cfg.precision == "tf32" and not use_cuda:
        raise ConfigError("runtime.precision=tf32 needs CUDA; use fp32 (or auto) on CPU")
    threads = cfg.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or None
    if threads:
        torch.set_num_threads(threads)
    if use_cuda and cfg.gpu_memory_fraction is not None:
        # Several trials packed on one GPU: the caching allocator raises OutOfMemoryError past
        # this share instead of taking memory a neighbour needs.
        torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction, device)
    seed_everything(seed + distributed.world_rank())
    bf16 = use_cuda and cfg.precision in ("auto", "bf16")
    return Runtime(device=device, bf16=bf16, show_progress=cfg.progress and distributed.is_main())


def tf32_flags(precision: str) -> tuple[bool, bool]:
    """(TF32 matmuls, TF32 cuDNN convolutions) on CUDA for ``runtime.precision``: ``fp32`` is
    IEEE fp32 everywhere; ``torch-defaults`` is what PyTorch does untold, fp32 matmuls but TF32
    convolutions (``torch.backends.cudnn.allow_tf32`` defaults to True), which the authors' runs
    had, since their code sets neither flag: in XLS-R that is the 7 feature-encoder
    convolutions and the positional convolution; ``tf32``, ``bf16`` and ``auto`` allow both."""
    if precision == "fp32":
        return False, False
    if precision == "torch-defaults":
        return False, True
    return True, True


def set_tf32(matmul: bool, cudnn: bool) -> None:
    """TF32 for CUDA matmuls and for cuDNN convolutions (see :func:`tf32_flags`). Off is IEEE
    fp32; on trades ~3 decimal digits of the mantissa for tensor-core speed."""
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (CUDA's too, through torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def adamw_options(choice: str, device: torch.device) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments for ``runtime.adamw``: ``auto`` is the fused
    kernel on CUDA (one launch for every parameter) and ``foreach`` elsewhere."""
    if choice == "auto":
        choice = "fused" if device.type == "cuda" else "foreach"
    if choice == "fused":
        return {"fused": True}
    return {"foreach": choice == "foreach"}


def cpus_of_this_process(cfg: RuntimeConfig) -> int:
    """The CPUs this rank may use: ``runtime.threads`` when set (a Ray worker gets its reserved
    CPUs there), else this process's CPU affinity shared among the node's ranks."""
    if cfg.threads:
        return cfg.threads
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_ranks))


def loader_workers(setting: int | str, cfg: RuntimeConfig, device: torch.device) -> int:
    """``data.num_workers``: as set, or (``auto``) none on CPU, where the trainer's threads use the
    cores, and on CUDA one per CPU of this rank less one for the rank itself, at most 8."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return min(8, cpus_of_this_process(cfg) - 1)
