"""Settings that depend on the GPU's memory, decided once before they are needed.

- ``model.gradient_checkpointing: auto``: a probe forward + backward of the largest training
  batch without checkpointing; checkpointing goes on when that step's peak plus AdamW's state
  would pass :data:`STEP_SHARE` of this process's memory budget, or when the probe runs out of
  memory. Every rank takes the same decision (DDP needs the same graph on every rank).
- ``data.eval_batch_size: auto``: the largest power of two whose inference forward at the
  evaluation crop fits in :data:`EVAL_SHARE` of the budget, from the peak of a probe batch.

On CPU neither probes: checkpointing is off (host memory is rarely what limits the tiny CPU
runs, and recomputation costs a third more time) and the evaluation batch is
:data:`CPU_EVAL_BATCH`. The probes keep every RNG's state, so a run draws the same numbers with
``auto`` as with the setting it resolves to.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from trainer import distributed
from trainer.config import TrainerConfig
from trainer.data.config import CropConfig
from trainer.model import SupConModel
from trainer.runtime import Runtime

log = logging.getLogger(__name__)

STEP_SHARE = 0.9  # a training step may plan on this much of the budget (fragmentation, loader)
EVAL_SHARE = 0.7  # an evaluation batch, this much (the training state stays resident)
CPU_EVAL_BATCH = 32
MAX_EVAL_BATCH = 1024
PROBE_EVAL_BATCH = 8
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the size of the parameters


def budget_bytes(rt: Runtime, fraction: float | None) -> int:
    """What this process may allocate on its GPU: its share (``runtime.gpu_memory_fraction``)
    of the device, and no more than is free now plus what it already holds."""
    free, total = torch.cuda.mem_get_info(rt.device)
    held = torch.cuda.memory_reserved(rt.device)
    return int(min(total * (fraction or 1.0), free + held))


def checkpointing_needed(step_peak: int | None, optimizer_state: int, budget: int) -> bool:
    """Whether a step whose probe peaked at ``step_peak`` bytes (None: it ran out of memory)
    needs checkpointing once AdamW adds ``optimizer_state`` bytes, within ``budget``."""
    return step_peak is None or step_peak + optimizer_state > STEP_SHARE * budget


def eval_batch_for(per_clip: float, budget: int) -> int:
    """The largest power of two, 1 to :data:`MAX_EVAL_BATCH`, whose ``per_clip`` bytes each fit in
    :data:`EVAL_SHARE` of ``budget``."""
    fits = EVAL_SHARE * budget / max(per_clip, 1.0)
    if fits < 1:
        return 1
    return min(MAX_EVAL_BATCH, 2 ** int(math.log2(fits)))


class _KeepRng:
    """Restores torch's (CPU and this device's) and numpy's global RNG state on exit: HF's
    SpecAugment draws its spans from numpy, dropout from torch."""

    def __init__(self, device: torch.device) -> None:
        self.fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    def __enter__(self) -> None:
        self.numpy = np.random.get_state()
        self.fork.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.fork.__exit__(*exc)
        np.random.set_state(self.numpy)


def _probe_wave(batch: int, samples: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(0)
    return 0.1 * torch.randn(batch, samples, generator=generator, device=device)  # (B, T)


def probe_step_peak(model: SupConModel, rt: Runtime, batch: int, samples: int) -> int | None:
    """Peak bytes allocated by one training forward + backward of ``batch`` clips of
    ``samples`` samples, checkpointing off; None when it runs out of memory. Gradients are
    cleared afterwards."""
    was_on = model.checkpointing
    model.set_checkpointing(False)
    device = rt.device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        with _KeepRng(device):
            with rt.autocast():
                z = model.train()(_probe_wave(batch, samples, device))  # (B, D)
            z.float().square().sum().backward()
        return torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.set_checkpointing(was_on)
        torch.cuda.empty_cache()


def resolve_checkpointing(cfg: TrainerConfig, model: SupConModel, rt: Runtime) -> bool:
    """Set ``model``'s gradient checkpointing from ``model.gradient_checkpointing`` (``auto``:
    see the module docstring) and return it. Called on every rank before DDP wraps the model."""
    setting = cfg.model.gradient_checkpointing
    if setting != "auto" or rt.device.type != "cuda":
        on = setting is True
    else:
        samples = cfg.data.train_crop.num_samples
        if samples is None:  # a full crop without a length bound: no batch to probe
            on = True
        else:
            peak = probe_step_peak(model, rt, cfg.data.sampler.batch_size, samples)
            params = sum(p.numel() * p.element_size() for p in model.parameters())
            budget = budget_bytes(rt, cfg.runtime.gpu_memory_fraction)
            on = checkpointing_needed(peak, ADAMW_STATES * params, budget)
            log.info(
                "gradient checkpointing auto: probe step %s, AdamW state %.1f GiB, budget "
                "%.1f GiB -> %s",
                "out of memory" if peak is None else f"{peak / 2**30:.1f} GiB",
                ADAMW_STATES * params / 2**30,
                budget / 2**30,
                "on" if on else "off",
            )
        # Any rank that needs it turns it on for all.
        on = bool(distributed.all_reduce_sum(torch.tensor(float(on), device=rt.device)) > 0)
    model.set_checkpointing(on)
    return on


def resolve_eval_batch(
    cfg: TrainerConfig, model: SupConModel, rt: Runtime, crop: CropConfig | None = None
) -> int:
    """``data.eval_batch_size`` as a number for ``crop`` (default the evaluation crop): as set,
    :data:`CPU_EVAL_BATCH` on CPU, else from an inference probe of :data:`PROBE_EVAL_BATCH`
    clips at the crop's length (10 s for an unbounded ``full`` crop)."""
    setting = cfg.data.eval_batch_size
    if setting != "auto":
        return int(setting)
    if rt.device.type != "cuda":
        return CPU_EVAL_BATCH
    crop = crop or cfg.data.eval_crop
    samples = crop.num_samples or 160_000
    device = rt.device
    was_training = model.training
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), rt.autocast():
        model.eval()(_probe_wave(PROBE_EVAL_BATCH, samples, device))
    model.train(was_training)
    per_clip = (torch.cuda.max_memory_allocated(device) - base) / PROBE_EVAL_BATCH
    batch = eval_batch_for(per_clip, budget_bytes(rt, cfg.runtime.gpu_memory_fraction) - base)
    log.info("evaluation batch auto: %d clips of %d samples", batch, samples)
    return batch
