"""Device, precision, threads and seeding of one trainer process."""

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
        set_tf32(cfg.precision != "fp32")
    else:
        device = torch.device("cpu")
    if cfg.precision == "bf16" and not use_cuda:
        raise ConfigError("runtime.precision=bf16 needs CUDA; use fp32 (or auto) on CPU")
    if cfg.precision == "tf32" and not use_cuda:
        raise ConfigError("runtime.precision=tf32 needs CUDA; use fp32 (or auto) on CPU")
    threads = cfg.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or None
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed + distributed.world_rank())
    bf16 = use_cuda and cfg.precision in ("auto", "bf16")
    return Runtime(device=device, bf16=bf16, show_progress=cfg.progress and distributed.is_main())


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions. Off is IEEE fp32 (``runtime.precision:
    fp32``, what the authors' runs used: torch leaves matmul TF32 off by default); on trades
    ~3 decimal digits of the mantissa for tensor-core speed (``tf32``, ``bf16``, ``auto``)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (CUDA's too, through torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
