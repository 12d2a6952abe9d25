"""Stage 1: supervised contrastive fine-tuning of encoder + head, with the delayed global queue.

Per epoch it reports the train loss, the dev SupCon loss (no queue) and a dev EER that needs no
stage 2: the cosine similarity of each dev embedding to the bona fide centroid of the epoch's
training embeddings. Early stopping watches ``stage1.monitor``; the best weights feed stage 2.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from trainer import checkpoint, distributed
from trainer.config import ConfigError, TrainerConfig, upgrade_stored
from trainer.contrastive import LossSpec
from trainer.data.corpora import CorpusSplit
from trainer.data.dataset import AudioDataset, make_loader
from trainer.data.rawboost import RawBoost
from trainer.data.records import Utterance
from trainer.data.sampler import BalancedBatchSampler, balanced_subset
from trainer.embed import embed
from trainer.memory import resolve_checkpointing, resolve_eval_batch
from trainer.metrics import compute_eer
from trainer.model import SupConModel
from trainer.prefix import check_fork
from trainer.queue import CrossBatchQueue
from trainer.reporting import Reporter
from trainer.runtime import Runtime, loader_workers
from trainer.step import LossWatch, NonFiniteLossError, Stepper, build_optimizer, build_schedule

log = logging.getLogger(__name__)


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
    elapsed_s: float = 0.0  # stage 1's seconds by this checkpoint, over every run of the trial


@dataclass(frozen=True)
class EpochResult:
    """One training epoch: its ``encoder/train/*`` metrics, the centroid (D,) of its bona fide
    training embeddings over every rank (the dev EER scores against it), and when its first step
    finished (``time.monotonic``; None for an epoch without batches)."""

    metrics: dict[str, float]
    centroid: torch.Tensor
    first_step_at: float | None


@dataclass(frozen=True)
class Stage1Result:
    """What stage 1 hands on: the best weights (by ``stage1.monitor``), the progress (history, best
    epoch, epochs run), when this process's first step finished (None if it ran none), and
    whether the reporter stopped it."""

    best_state: dict[str, Any]
    progress: Progress
    first_step_at: float | None
    stopped: bool = False  # the orchestrator stopped the trial after the last epoch
    earlier_s: float = 0.0  # stage 1's seconds in earlier runs of a resumed trial


def dev_supcon_loss(z: torch.Tensor, labels: torch.Tensor, cfg: TrainerConfig) -> float:
    """Mean in-batch SupCon loss (no queue) over fixed, class-balanced batches of the dev set.

    ``z`` (N, D) are the dev embeddings and ``labels`` (N,) their classes (1 = bona fide), the
    same on every rank. Each batch has the per-rank training composition of
    ``cfg.data.sampler``: ``bonafide_per_batch`` bona fide and ``batch_size - bonafide_per_batch``
    spoof clips (a class with fewer clips than its share gives all it has). Each class is drawn
    without replacement in a permutation seeded by ``cfg.seed`` alone, and there are as many
    batches as the scarcer class, relative to its share, fills once:
    ``min(n_bona // bona_per_batch, n_spoof // spoof_per_batch)``; the other class's remaining
    clips are left out (like the authors' epoch, one pass over the bona fide). So the value
    depends on neither the epoch nor the world size, and both classes are in every batch.

    Reduction: the plain mean of the per-batch SupCon losses (:func:`trainer.loss.supcon_loss`
    with the config's similarity and temperature, through :class:`LossSpec`; Khosla et al. 2020,
    arXiv:2004.11362).
    """
    is_bona = labels.cpu() == 1  # (N,)
    pools = torch.nonzero(is_bona).flatten(), torch.nonzero(~is_bona).flatten()
    if min(len(pool) for pool in pools) == 0:
        raise ValueError("the dev SupCon monitor needs bona fide and spoof clips")
    sampler = cfg.data.sampler
    wanted = (sampler.bonafide_per_batch, sampler.batch_size - sampler.bonafide_per_batch)
    shares = [min(n, len(pool)) for n, pool in zip(wanted, pools, strict=True)]
    n_batches = min(len(pool) // share for share, pool in zip(shares, pools, strict=True))
    generator = torch.Generator().manual_seed(cfg.seed)
    columns = []
    for share, pool in zip(shares, pools, strict=True):
        drawn = pool[torch.randperm(len(pool), generator=generator)]  # one seeded pass
        columns.append(drawn[: n_batches * share].view(n_batches, share))
    batches = torch.cat(columns, dim=1).to(z.device)  # (n_batches, bona + spoof per batch)
    self_index = torch.arange(batches.shape[1], device=z.device)
    spec = LossSpec.from_config(cfg)
    losses = [
        spec.supcon(z[batch], labels[batch], z[batch], labels[batch], self_index)
        for batch in batches
    ]  # n_batches scalars
    return float(torch.stack(losses).mean())


def _monitor_clips(dev: CorpusSplit, cfg: TrainerConfig) -> list[Utterance]:
    """The dev clips of the per-epoch monitor: ``stage1.monitor_subset`` of them, or all."""
    size = cfg.stage1.monitor_subset
    if size is None:
        return list(dev.utterances)
    chosen = balanced_subset([u.is_bonafide for u in dev.utterances], size, cfg.seed)
    log.info("stage-1 dev monitor on %d of %d dev clips", len(chosen), len(dev.utterances))
    return [dev.utterances[i] for i in chosen]


class Stage1:
    """Stage-1 training of ``model`` on the ``train`` split, validated on ``dev`` every epoch.

    Holds what the epochs share (sampler, loader, optimiser, schedule, queue, step); the run's
    progress and best weights travel as values through :meth:`run`.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        model: SupConModel,
        rt: Runtime,
        *,
        train: CorpusSplit,
        dev: CorpusSplit,
        out_dir: Path,
        reporter: Reporter,
    ) -> None:
        self.cfg, self.model, self.rt = cfg, model, rt
        self.monitor = _monitor_clips(dev, cfg)
        self.ckpt_dir = out_dir / "checkpoints" / "last"
        self.reporter = reporter
        self.sampler = self._build_sampler(train)
        self.workers = loader_workers(cfg.data.num_workers, cfg.runtime, rt.device)
        self.loader = self._build_loader(train)
        self.eval_batch = self._prepare_model()
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_schedule(cfg, self.optimizer, cfg.stage1.epochs * len(self.sampler))
        self.queue = CrossBatchQueue(cfg.queue.size, cfg.model.embedding_dim, device=rt.device)
        self.stepper = Stepper(cfg, rt, model, self.optimizer, self.scheduler, self.queue)

    # --- setup -------------------------------------------------------------------------------

    def _build_sampler(self, train: CorpusSplit) -> BalancedBatchSampler:
        """This rank's class-balanced batches of ``train``; the epoch's shape is logged once."""
        cfg = self.cfg
        sampler = BalancedBatchSampler(
            [u.is_bonafide for u in train.utterances],
            cfg.data.sampler,
            world_size=distributed.world_size(),
            world_rank=distributed.world_rank(),
            seed=cfg.seed,
        )
        if distributed.is_main():  # the same on every rank: said once
            log.info(
                "stage-1 epoch (data.sampler.epoch=%s%s): %d batch(es) of %d per rank x %d "
                "rank(s); the epoch's length depends on the world size",
                cfg.data.sampler.epoch,
                ", overridden by batches_per_epoch" if cfg.data.sampler.batches_per_epoch else "",
                len(sampler),
                cfg.data.sampler.batch_size,
                distributed.world_size(),
            )
        return sampler

    def _build_loader(self, train: CorpusSplit) -> DataLoader:
        """The training loader over :attr:`sampler`'s batches: training crop, RawBoost if on."""
        cfg = self.cfg
        augment = RawBoost(cfg.data.rawboost) if cfg.data.rawboost.algo else None
        dataset = AudioDataset(
            train.utterances,
            cfg.data.train_crop,
            augment=augment,
            seed=cfg.seed,
            mask=cfg.data.attention_mask,
        )
        return make_loader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=self.workers,
            seed=cfg.seed,
            world_rank=distributed.world_rank(),
            pin_memory=self.rt.device.type == "cuda",
            pad_multiple=cfg.data.pad_multiple,
        )

    def _prepare_model(self) -> int:
        """Resolve gradient checkpointing and the evaluation batch (each may probe the GPU with
        the model alone, so before DDP wraps it), then compile if asked; returns the batch."""
        cfg, model = self.cfg, self.model
        resolve_checkpointing(cfg, model, self.rt)
        eval_batch = resolve_eval_batch(cfg, model, self.rt)
        if cfg.runtime.compile:
            # In place: the state dict keeps its keys, so checkpoints do not depend on it.
            model.encoder.compile()
        return eval_batch

    # --- checkpoints -------------------------------------------------------------------------

    def _restore(self, folder: Path, fork: bool = False) -> tuple[Progress, dict[str, Any]]:
        """Load the weights, optimiser, schedule, queue and this rank's RNG state saved in
        ``folder`` in place; returns the saved progress and best weights.

        ``fork``: ``folder`` is another run's checkpoint within the prefix this run shares with
        it (:mod:`trainer.prefix`): its config may differ in the late keys only, and its queue,
        never switched on, is not loaded (this run's queue may have another size)."""
        ckpt = checkpoint.load(folder, map_location=self.rt.device)
        state = ckpt["state"]
        self._check_world_size(folder, len(state["rng"]))
        progress = Progress(**state["progress"])
        if fork:
            check_fork(upgrade_stored(state["config"]), self.cfg, progress.epoch, str(folder))
            if int(state["queue"]["fill"]) != 0:
                raise ConfigError(f"{folder}: its queue holds entries, so it is past its prefix")
        else:
            self.queue.load_state_dict(state["queue"])
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        checkpoint.set_rng_state(rng[min(distributed.world_rank(), len(rng) - 1)])
        how = "forked from the shared prefix in" if fork else "resumed from"
        log.info("%s %s at epoch %d", how, folder, progress.epoch)
        return progress, ckpt["best_model"]

    def _check_world_size(self, folder: Path, saved: int) -> None:
        """A checkpoint resumes on the world size that wrote it (one RNG state per rank): the
        epoch's length, the sampler's plan and the global batch all depend on it."""
        now = distributed.world_size()
        if saved != now and self.cfg.runtime.resume_world_size == "same":
            raise ConfigError(
                f"{folder} was written by {saved} rank(s) and this run has {now}: the epoch "
                "length, batch plan and global batch would change mid-run. Resume with "
                f"{saved} worker(s), or set runtime.resume_world_size=any to accept the change"
            )

    def _save(self, progress: Progress, best_state: dict[str, Any]) -> Path | None:
        rng = distributed.all_gather_object(checkpoint.rng_state())
        if not distributed.is_main():
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "queue": self.queue.state_dict(),
            "progress": asdict(progress),
            "rng": rng,
            "config": self.cfg.model_dump(mode="json"),
        }
        return checkpoint.save(
            self.ckpt_dir, state=state, model=self.model.state_dict(), best_model=best_state
        )

    # --- training ----------------------------------------------------------------------------

    def _queue_on(self, epoch: int, step: int) -> bool:
        q = self.cfg.queue
        return q.size > 0 and epoch >= q.start_epoch and step >= q.start_step

    def _train_epoch(self, epoch: int, progress: Progress) -> EpochResult:
        """One pass over this epoch's batches; advances ``progress.step`` once per batch. The
        losses are checked (a host sync) after the first step, every ``runtime.sync_every``
        steps and at the end of the epoch."""
        rt = self.rt
        self.sampler.set_epoch(epoch)
        self.stepper.ddp.train()
        watch = LossWatch(self.cfg.runtime.sync_every)
        losses: list[float] = []
        first_step_at = None
        bona_sum = torch.zeros(self.cfg.model.embedding_dim, device=rt.device)  # (D,)
        n_bona = torch.zeros((), device=rt.device)
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=not rt.show_progress,
        )
        try:
            for batch in bar:
                bona = batch["label"].to(rt.device, non_blocking=True) == 1  # (B,)
                loss, z = self.stepper(batch, use_queue=self._queue_on(epoch, progress.step))
                bona_sum += (z.float() * bona[:, None]).sum(0)  # no boolean indexing: no sync
                n_bona += bona.sum()
                checked = watch.add(loss, progress.step)
                progress.step += 1
                if first_step_at is None:
                    checked += watch.check()
                    first_step_at = time.monotonic()
                if checked:
                    losses += checked
                    bar.set_postfix(loss=f"{checked[-1]:.4f}")
            losses += watch.check()
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err} at epoch {epoch}, step {err.step}: stopping the trial (lower the "
                "learning rates or raise loss.temperature)",
                err.step,
            ) from None
        mean_loss = torch.tensor(sum(losses) / max(1, len(losses)), device=rt.device)
        metrics = {
            "encoder/train/loss": float(distributed.all_reduce_mean(mean_loss)),
            "encoder/train/lr_encoder": self.optimizer.param_groups[0]["lr"],
            "encoder/train/lr_head": self.optimizer.param_groups[1]["lr"],
            "encoder/train/queue_fill": float(len(self.queue)),
        }
        n_bona_all = distributed.all_reduce_sum(n_bona).clamp_min(1)
        centroid = distributed.all_reduce_sum(bona_sum) / n_bona_all  # (D,)
        return EpochResult(metrics, centroid, first_step_at)

    def _dev_metrics(self, centroid: torch.Tensor) -> dict[str, float]:
        """Dev SupCon loss (no queue) and the EER of the cosine to the train ``centroid`` (D,)."""
        cfg, dev = self.cfg, self.monitor
        z = embed(
            self.model,
            dev,
            cfg.data.eval_crop,
            device=self.rt.device,
            precision=self.rt.autocast(),
            batch_size=self.eval_batch,
            num_workers=self.workers,
            seed=cfg.seed,
            desc="dev",
            static_batches=cfg.runtime.compile,
            pad_multiple=cfg.data.pad_multiple,
            mask=cfg.data.attention_mask,
        )  # (N, D)
        labels = torch.tensor([u.target for u in dev])
        direction = torch.nn.functional.normalize(centroid.float().cpu(), dim=0)
        scores = (z @ direction).numpy()
        is_bona = labels.numpy() == 1
        eer = compute_eer(scores[is_bona], scores[~is_bona])[0]
        return {"encoder/dev/loss": dev_supcon_loss(z, labels, cfg), "encoder/dev/eer": eer}

    def _improved(self, metrics: dict[str, float], progress: Progress) -> bool:
        """Update the early-stopping state of ``progress``; whether this epoch is the best yet."""
        key = "encoder/dev/loss" if self.cfg.stage1.monitor == "dev_loss" else "encoder/dev/eer"
        value = metrics[key]
        if value < progress.best:
            progress.best, progress.best_epoch, progress.bad_epochs = value, progress.epoch, 0
            return True
        progress.bad_epochs += 1
        return False

    def _patience_spent(self, progress: Progress) -> bool:
        patience = self.cfg.stage1.patience
        return patience is not None and progress.bad_epochs >= patience

    def run(self, resume: Path | None = None, fork: bool = False) -> Stage1Result:
        """Train, from scratch or from the checkpoint folder ``resume`` (``fork``: another
        run's, at the end of the prefix both share), until the epoch budget, early stopping, or
        the reporter saying stop; saves a checkpoint and reports once per epoch on every rank."""
        if resume is None:
            progress, best_state = Progress(), copy.deepcopy(self.model.state_dict())
        else:
            progress, best_state = self._restore(resume, fork)
        first_step_at = None
        earlier_s, run_started = progress.elapsed_s, time.monotonic()
        epochs = tqdm(
            range(progress.epoch, self.cfg.stage1.epochs),
            desc="stage 1",
            unit="epoch",
            initial=progress.epoch,
            total=self.cfg.stage1.epochs,
            disable=not self.rt.show_progress,
        )
        for epoch in epochs:
            if progress.done:
                break
            trained = self._train_epoch(epoch, progress)
            first_step_at = first_step_at if first_step_at is not None else trained.first_step_at
            metrics = trained.metrics | self._dev_metrics(trained.centroid)
            if self._improved(metrics, progress):
                best_state = copy.deepcopy(self.model.state_dict())
            progress.epoch = epoch + 1
            stop = self._patience_spent(progress)
            progress.done = stop or progress.epoch >= self.cfg.stage1.epochs
            metrics["epoch"] = float(epoch)
            progress.history.append(metrics)
            progress.elapsed_s = earlier_s + time.monotonic() - run_started
            folder = self._save(progress, best_state)
            go_on = self.reporter.report(
                metrics,
                epoch=epoch,
                step=progress.step,
                checkpoint=folder,
                history=progress.history,
            )
            epochs.set_postfix(
                dev_eer=f"{metrics['encoder/dev/eer']:.3f}",
                dev_loss=f"{metrics['encoder/dev/loss']:.3f}",
            )
            if not go_on:
                log.info("stage 1 stopped after epoch %d by the orchestrator", epoch)
                return Stage1Result(best_state, progress, first_step_at, True, earlier_s)
        return Stage1Result(best_state, progress, first_step_at, earlier_s=earlier_s)
