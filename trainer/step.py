"""One stage-1 optimisation step and what it is built from: the AdamW groups, the LR schedule,
the step itself (:class:`Stepper`) and the watch that turns a NaN or inf loss into an error
(:class:`LossWatch`). :class:`trainer.stage1.Stage1` runs its epochs on these, and
``bench/train_step.py`` times exactly this step.
"""

from __future__ import annotations

import math

import torch
from torch.profiler import record_function

from trainer import distributed
from trainer.config import TrainerConfig
from trainer.contrastive import LossSpec, contrastive_step
from trainer.errors import PicklableError
from trainer.model import SupConModel, padding_mask
from trainer.queue import CrossBatchQueue
from trainer.runtime import Runtime, adamw_options


class NonFiniteLossError(PicklableError, RuntimeError):
    """The loss became NaN or inf at global step ``step``; the trial must fail visibly, not
    continue silently."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def build_optimizer(cfg: TrainerConfig, model: SupConModel) -> torch.optim.AdamW:
    """AdamW over two groups: encoder at ``stage1.lr_encoder``, head at ``stage1.lr_head``; the
    implementation (fused, foreach, for-loop) from ``runtime.adamw`` for the model's device."""
    s1 = cfg.stage1
    groups = [
        {"params": list(model.encoder_parameters()), "lr": s1.lr_encoder},
        {"params": list(model.head_parameters()), "lr": s1.lr_head},
    ]
    device = next(model.parameters()).device
    options = adamw_options(cfg.runtime.adamw, device)
    return torch.optim.AdamW(groups, weight_decay=s1.weight_decay, **options)


def build_schedule(
    cfg: TrainerConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: linear warm-up over ``stage1.warmup_steps``, then constant or a cosine
    decay to 0 at ``total_steps``."""
    warmup, kind = cfg.stage1.warmup_steps, cfg.stage1.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            span = max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LossWatch:
    """This rank's step losses, kept on the device and checked every ``every`` steps.

    A check is one host sync and one all-reduce: it raises :class:`NonFiniteLossError` naming
    the first step at which any rank's loss was NaN or inf, and otherwise returns the checked
    losses as floats. Between checks nothing waits for the device, so the host keeps queueing
    work; the steps after a non-finite loss (at most ``every - 1``) are wasted, not hidden.
    Every rank must add and check at the same steps (the all-reduce is a collective).
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.losses: list[torch.Tensor] = []  # 0-d device tensors
        self.first_step = 0

    def add(self, loss: torch.Tensor, step: int) -> list[float]:
        """Record ``loss`` (0-d, detached) of global step ``step``; check when ``every`` are
        pending. Returns the losses checked now ([] when none)."""
        if not self.losses:
            self.first_step = step
        self.losses.append(loss)
        return self.check() if len(self.losses) >= self.every else []

    def check(self) -> list[float]:
        if not self.losses:
            return []
        losses = torch.stack(self.losses).float()  # (n,)
        n = len(self.losses)
        bad = ~torch.isfinite(losses)
        first = torch.where(bad.any(), bad.float().argmax(), torch.tensor(n, device=bad.device))
        first = int(distributed.all_reduce_min(first))
        values = losses.tolist()
        self.losses = []
        if first < n:
            step = self.first_step + first
            value = values[first] if not math.isfinite(values[first]) else "not finite on a rank"
            raise NonFiniteLossError(f"stage 1 loss is {value}", step)
        return values


class Stepper:
    """One stage-1 optimisation step: forward, SupCon (local or gathered batch, + queue),
    backward, clip, AdamW, then enqueue the gathered batch. The benchmark times exactly this.

    Nothing in a step waits for the device (:class:`LossWatch` checks the losses); the
    ``stage1/*`` profiler ranges name its parts in a ``torch.profiler`` trace.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        rt: Runtime,
        model: SupConModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        queue: CrossBatchQueue,
    ) -> None:
        self.cfg, self.rt, self.model = cfg, rt, model
        self.optimizer, self.scheduler, self.queue = optimizer, scheduler, queue
        self.ddp = distributed.wrap_ddp(model, rt.device)
        self.loss = LossSpec.from_config(cfg)
        self.clip_params = list(model.head_parameters())
        if cfg.stage1.grad_clip_scope == "all":
            self.clip_params += list(model.encoder_parameters())

    def __call__(
        self, batch: dict[str, torch.Tensor], *, use_queue: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this rank's loss, detached, 0-d on the device; its embeddings (B, D))."""
        cfg, device = self.cfg, self.rt.device
        wave = batch["waveform"].to(device, non_blocking=True)  # (B, T)
        mask = padding_mask(batch["attention_mask"], device)  # (B, T) or None
        labels = batch["label"].to(device, non_blocking=True)  # (B,)
        with record_function("stage1/forward"), self.rt.autocast():
            z = self.ddp(wave, mask)  # (B, D)
        with record_function("stage1/loss"):
            loss, gathered_z, gathered_labels = contrastive_step(
                z, labels, self.queue, self.loss, use_queue=use_queue
            )
        with record_function("stage1/backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("stage1/optimizer"):
            if cfg.stage1.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.clip_params, cfg.stage1.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        if use_queue:
            with record_function("stage1/enqueue"):
                self.queue.enqueue(gathered_z, gathered_labels)
        return loss.detach(), z.detach()
