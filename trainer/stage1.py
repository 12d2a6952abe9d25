"""Stage 1: supervised contrastive fine-tuning of encoder + head, with the delayed global queue.

Per epoch it reports the train loss, the dev SupCon loss (no queue) and a dev EER that needs no
stage 2: the cosine similarity of each dev embedding to the bona fide centroid of the epoch's
training embeddings. Early stopping watches ``stage1.monitor``; the best weights feed stage 2.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer import checkpoint
from trainer import distributed as dist
from trainer.config import TrainerConfig
from trainer.contrastive import contrastive_step
from trainer.data.dataset import AudioDataset, make_loader
from trainer.data.rawboost import RawBoost
from trainer.data.sampler import BalancedBatchSampler
from trainer.embed import embed
from trainer.loss import supcon_loss
from trainer.metrics import compute_eer
from trainer.queue import CrossBatchQueue
from trainer.reporting import Reporter
from trainer.runtime import Runtime


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the trial must fail visibly, not continue silently."""


@dataclass
class Progress:
    """Stage-1 progress saved in checkpoints: the next epoch to run and early-stopping state."""

    epoch: int = 0
    step: int = 0
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    done: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def _optimizer(cfg: TrainerConfig, model) -> torch.optim.Optimizer:
    s1 = cfg.stage1
    groups = [
        {"params": list(model.encoder_parameters()), "lr": s1.lr_encoder},
        {"params": list(model.head_parameters()), "lr": s1.lr_head},
    ]
    return torch.optim.AdamW(groups, weight_decay=s1.weight_decay)


def _schedule(cfg: TrainerConfig, optimizer, total_steps: int):
    warmup, kind = cfg.stage1.warmup_steps, cfg.stage1.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            span = max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def dev_supcon_loss(z: torch.Tensor, labels: torch.Tensor, cfg: TrainerConfig) -> float:
    """Mean in-batch SupCon loss (no queue) over fixed, seeded chunks of the dev embeddings."""
    chunk = cfg.data.sampler.batch_size * dist.world_size()
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(cfg.seed))
    losses = []
    for part in order.split(chunk):
        if len(part) > 1:
            idx = torch.arange(len(part))
            losses.append(
                supcon_loss(
                    z[part],
                    labels[part],
                    z[part],
                    labels[part],
                    idx,
                    similarity=cfg.loss.similarity,
                    temperature=cfg.loss.temperature,
                ).item()
            )
    return float(sum(losses) / max(1, len(losses)))


class Stepper:
    """One stage-1 optimisation step: forward, gathered SupCon (+ queue), backward, clip, AdamW,
    then enqueue the gathered batch. The benchmark times exactly this."""

    def __init__(
        self, cfg: TrainerConfig, rt: Runtime, model, optimizer, scheduler, queue: CrossBatchQueue
    ) -> None:
        self.cfg, self.rt, self.model = cfg, rt, model
        self.optimizer, self.scheduler, self.queue = optimizer, scheduler, queue
        self.ddp = model
        if dist.world_size() > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)
        self.clip_params = list(model.head_parameters())
        if cfg.stage1.grad_clip_scope == "all":
            self.clip_params += list(model.encoder_parameters())

    def __call__(
        self, batch: dict[str, torch.Tensor], *, use_queue: bool
    ) -> tuple[float, torch.Tensor]:
        """Returns (this rank's loss, its detached embeddings (B, D))."""
        cfg, device = self.cfg, self.rt.device
        wave = batch["waveform"].to(device, non_blocking=True)
        mask = batch["attention_mask"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with self.rt.autocast():
            z = self.ddp(wave, mask)  # (B, D)
        loss, gathered_z, gathered_labels = contrastive_step(
            z,
            labels,
            self.queue,
            similarity=cfg.loss.similarity,
            temperature=cfg.loss.temperature,
            use_queue=use_queue,
            queue_positives=cfg.queue.positives,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.all_reduce_sum((~torch.isfinite(loss.detach())).float()).item() > 0:
            raise NonFiniteLossError(f"stage 1 loss is {loss.item()}")
        if cfg.stage1.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.clip_params, cfg.stage1.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if use_queue:
            self.queue.enqueue(gathered_z, gathered_labels)
        return loss.item(), z.detach()


class Stage1:
    def __init__(
        self, cfg: TrainerConfig, model, data, rt: Runtime, out_dir: Path, reporter: Reporter
    ) -> None:
        self.cfg, self.model, self.data, self.rt = cfg, model, data, rt
        self.ckpt_dir = out_dir / "checkpoints" / "last"
        self.reporter = reporter
        train = data.train.utterances
        self.sampler = BalancedBatchSampler(
            [u.is_bonafide for u in train],
            cfg.data.sampler,
            world_size=dist.world_size(),
            world_rank=dist.world_rank(),
            seed=cfg.seed,
        )
        augment = RawBoost(cfg.data.rawboost) if cfg.data.rawboost.algo else None
        dataset = AudioDataset(train, cfg.data.train_crop, augment=augment, seed=cfg.seed)
        self.loader = make_loader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            world_rank=dist.world_rank(),
            pin_memory=rt.device.type == "cuda",
        )
        self.optimizer = _optimizer(cfg, model)
        self.scheduler = _schedule(cfg, self.optimizer, cfg.stage1.epochs * len(self.sampler))
        self.queue = CrossBatchQueue(cfg.queue.size, cfg.model.embedding_dim, device=rt.device)
        self.stepper = Stepper(cfg, rt, model, self.optimizer, self.scheduler, self.queue)
        self.progress = Progress()
        self.first_step_at: float | None = None
        self.best_state = copy.deepcopy(model.state_dict())

    # --- checkpoints -------------------------------------------------------------------------

    def resume(self, folder: Path) -> None:
        ckpt = checkpoint.load(folder, map_location=self.rt.device)
        state = ckpt["state"]
        self.model.load_state_dict(ckpt["model"])
        self.best_state = ckpt["best_model"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.queue.load_state_dict(state["queue"])
        self.progress = Progress(**state["progress"])
        checkpoint.set_rng_state(state["rng"][min(dist.world_rank(), len(state["rng"]) - 1)])

    def _save(self) -> Path | None:
        rng = dist.all_gather_object(checkpoint.rng_state())
        if not dist.is_main():
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "queue": self.queue.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng,
            "config": self.cfg.model_dump(mode="json"),
        }
        return checkpoint.save(
            self.ckpt_dir, state=state, model=self.model.state_dict(), best_model=self.best_state
        )

    # --- training ----------------------------------------------------------------------------

    def _queue_on(self, epoch: int, step: int) -> bool:
        q = self.cfg.queue
        return q.size > 0 and epoch >= q.start_epoch and step >= q.start_step

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, rt = self.cfg, self.rt
        self.sampler.set_epoch(epoch)
        self.stepper.ddp.train()
        total, batches = 0.0, 0
        centroid = torch.zeros(cfg.model.embedding_dim, device=rt.device)
        n_bona = torch.zeros((), device=rt.device)
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=not rt.show_progress,
        )
        for batch in bar:
            labels = batch["label"].to(rt.device, non_blocking=True)
            use_queue = self._queue_on(epoch, self.progress.step)
            try:
                loss, z = self.stepper(batch, use_queue=use_queue)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(
                    f"{err} at epoch {epoch}, step {self.progress.step}: "
                    "stopping the trial (lower the learning rates or raise "
                    "loss.temperature)"
                ) from None
            bona = labels == 1
            centroid += z.float()[bona].sum(0)
            n_bona += bona.sum()
            total += loss
            batches += 1
            self.progress.step += 1
            if self.first_step_at is None:
                self.first_step_at = time.monotonic()
            bar.set_postfix(loss=f"{loss:.4f}")
        self.centroid = dist.all_reduce_sum(centroid) / dist.all_reduce_sum(n_bona).clamp_min(1)
        return {
            "encoder/train/loss": float(
                dist.all_reduce_mean(torch.tensor(total / max(1, batches), device=rt.device))
            ),
            "encoder/train/lr_encoder": self.optimizer.param_groups[0]["lr"],
            "encoder/train/lr_head": self.optimizer.param_groups[1]["lr"],
            "encoder/train/queue_fill": float(len(self.queue)),
        }

    def _dev_metrics(self) -> dict[str, float]:
        cfg, dev = self.cfg, self.data.dev.utterances
        z = embed(
            self.model,
            dev,
            cfg.data.eval_crop,
            device=self.rt.device,
            precision=self.rt.autocast(),
            batch_size=cfg.data.eval_batch_size,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            desc="dev",
        )
        labels = torch.tensor([u.target for u in dev])
        centroid = torch.nn.functional.normalize(self.centroid.float().cpu(), dim=0)
        scores = (z @ centroid).numpy()
        is_bona = labels.numpy() == 1
        eer = compute_eer(scores[is_bona], scores[~is_bona])[0]
        return {"encoder/dev/loss": dev_supcon_loss(z, labels, cfg), "encoder/dev/eer": eer}

    def _early_stop(self, metrics: dict[str, float]) -> bool:
        key = "encoder/dev/loss" if self.cfg.stage1.monitor == "dev_loss" else "encoder/dev/eer"
        p = self.progress
        if metrics[key] < p.best:
            p.best, p.best_epoch, p.bad_epochs = metrics[key], p.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            p.bad_epochs += 1
        patience = self.cfg.stage1.patience
        return patience is not None and p.bad_epochs >= patience

    def run(self) -> dict[str, Any]:
        """Train until the epoch budget or early stopping; returns the best weights."""
        p = self.progress
        epochs = tqdm(
            range(p.epoch, self.cfg.stage1.epochs),
            desc="stage 1",
            unit="epoch",
            initial=p.epoch,
            total=self.cfg.stage1.epochs,
            disable=not self.rt.show_progress,
        )
        for epoch in epochs:
            if p.done:
                break
            metrics = self._train_epoch(epoch)
            metrics.update(self._dev_metrics())
            stop = self._early_stop(metrics)
            p.epoch = epoch + 1
            p.done = stop or p.epoch >= self.cfg.stage1.epochs
            metrics["epoch"] = float(epoch)
            p.history.append(metrics)
            folder = self._save()
            self.reporter.report(metrics, epoch=epoch, step=p.step, checkpoint=folder)
            epochs.set_postfix(
                dev_eer=f"{metrics['encoder/dev/eer']:.3f}",
                dev_loss=f"{metrics['encoder/dev/loss']:.3f}",
            )
        return self.best_state
