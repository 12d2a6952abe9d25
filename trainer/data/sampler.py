"""A class-balanced, distributed-aware batch sampler.

SupCon needs both classes in every batch; ASVspoof 2019 LA train is 10% bona fide, so random
batches of 14 hold at most one bona fide clip 58% of the time. This sampler builds a global plan of
``world_size`` x ``batches_per_epoch`` batches as a pure function of (seed, epoch), identical on
every rank, and hands rank r the global batches r, r + W, r + 2W, ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from trainer.data.config import SamplerConfig


class SampleKey(NamedTuple):
    """What the sampler yields per clip: the dataset index plus the coordinates that seed its
    augmentation, so draws differ across ranks, workers and epochs and are reproducible."""

    index: int
    epoch: int
    world_rank: int
    position: int


def _class_stream(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn as consecutive reshuffled passes over ``pool``."""
    passes = -(-count // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:count]


def epoch_batches(cfg: SamplerConfig, n_bonafide: int, n_spoof: int, world_size: int) -> int:
    """Batches per rank in one epoch: ``batches_per_epoch`` when set, else by ``cfg.epoch``.

    ``bonafide_pass`` (the authors'): one pass over the minority class, ``min(n_bonafide //
    (bona fide per batch x W), n_spoof // (spoof per batch x W))``; on ASVspoof 2019 LA train with
    8 + 8 clips per rank and W = 2, ``2580 // 16 = 161``. ``dataset_pass``: as many clips as the
    set, ``(n_bonafide + n_spoof) // (batch_size x W)``, 793 there. Both shrink as W grows.
    """
    if cfg.batches_per_epoch:
        return cfg.batches_per_epoch
    if cfg.epoch == "bonafide_pass":
        n_spoof_per_batch = cfg.batch_size - cfg.bonafide_per_batch
        per_class = (
            n_bonafide // (cfg.bonafide_per_batch * world_size),
            n_spoof // (n_spoof_per_batch * world_size),
        )
        return max(1, min(per_class))
    return max(1, (n_bonafide + n_spoof) // (cfg.batch_size * world_size))


class BalancedBatchSampler:
    """Yields lists of :class:`SampleKey` with a fixed bona fide / spoof mix per batch.

    Every rank gets the same number of batches; within an epoch the ranks' batches are disjoint
    except where a class has fewer clips than the epoch asks of it (then that class is drawn in
    several reshuffled passes, each pass without repeats). Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        is_bonafide: Sequence[bool],
        cfg: SamplerConfig,
        *,
        world_size: int = 1,
        world_rank: int = 0,
        seed: int = 0,
    ) -> None:
        if not 0 <= world_rank < world_size:
            raise ValueError(f"world_rank {world_rank} outside world_size {world_size}")
        flags = np.asarray(is_bonafide, dtype=bool)
        self.bonafide = np.flatnonzero(flags)
        self.spoof = np.flatnonzero(~flags)
        if len(self.bonafide) == 0 or len(self.spoof) == 0:
            raise ValueError("class-balanced sampling needs both bonafide and spoof clips")
        self.n_bonafide = cfg.bonafide_per_batch
        self.n_spoof = cfg.batch_size - cfg.bonafide_per_batch
        self.world_size = world_size
        self.world_rank = world_rank
        self.seed = seed
        self.epoch = 0
        self.num_batches = epoch_batches(cfg, len(self.bonafide), len(self.spoof), world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def global_plan(self) -> np.ndarray:
        """All ranks' batches of this epoch, (world_size * num_batches, batch_size) indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_global = self.num_batches * self.world_size
        bona = _class_stream(self.bonafide, n_global * self.n_bonafide, rng)
        spoof = _class_stream(self.spoof, n_global * self.n_spoof, rng)
        plan = np.concatenate(
            [bona.reshape(n_global, self.n_bonafide), spoof.reshape(n_global, self.n_spoof)],
            axis=1,
        )  # (W * num_batches, batch_size)
        return rng.permuted(plan, axis=1)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        mine = self.global_plan()[self.world_rank :: self.world_size]
        width = mine.shape[1]
        for b, batch in enumerate(mine):
            yield [
                SampleKey(int(i), self.epoch, self.world_rank, b * width + j)
                for j, i in enumerate(batch)
            ]


def balanced_subset(is_bonafide: Sequence[bool], size: int, seed: int) -> list[int]:
    """Sorted indices of a fixed, class-balanced subset of ``size`` clips: half bona fide, half
    spoof (a class with fewer clips than its half is taken whole and the other fills up), drawn
    without replacement by ``seed`` alone, so every epoch and every trial of a sweep sees the
    same clips. ``size`` at least the set's length returns every index."""
    flags = np.asarray(is_bonafide, dtype=bool)  # (N,)
    if size >= len(flags):
        return list(range(len(flags)))
    bona, spoof = np.flatnonzero(flags), np.flatnonzero(~flags)
    n_bona = min(len(bona), max(size // 2, size - len(spoof)))
    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [rng.choice(bona, n_bona, replace=False), rng.choice(spoof, size - n_bona, replace=False)]
    )
    return sorted(chosen.tolist())
