"""The class-balanced, distributed-aware batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.config import SamplerConfig
from trainer.data.sampler import BalancedBatchSampler, balanced_subset, epoch_batches

# 10% bona fide, as ASVspoof 2019 LA train.
FLAGS = [i % 10 == 0 for i in range(400)]


def _batches(world_size: int, rank: int, epoch: int = 0, seed: int = 1, **cfg):
    sampler = BalancedBatchSampler(
        FLAGS, SamplerConfig(**cfg), world_size=world_size, world_rank=rank, seed=seed
    )
    sampler.set_epoch(epoch)
    return [[k.index for k in batch] for batch in sampler]


def test_every_batch_has_the_configured_mix() -> None:
    for batch in _batches(1, 0, batch_size=8, bonafide_fraction=0.25):
        assert len(batch) == 8
        assert sum(FLAGS[i] for i in batch) == 2


def test_ranks_get_equal_counts_and_disjoint_batches() -> None:
    per_rank = [_batches(4, r, batch_size=4, batches_per_epoch=5) for r in range(4)]
    assert {len(b) for b in per_rank} == {5}
    seen = [i for rank in per_rank for batch in rank for i in batch]
    # 4 ranks x 5 batches x 2 bona fide = 40 = the whole bona fide pool: no clip twice.
    assert len(seen) == len(set(seen))
    assert sum(FLAGS[i] for i in seen) == 40


def test_default_epoch_covers_the_dataset() -> None:
    assert len(_batches(2, 0, batch_size=16)) == 400 // 32


def test_order_is_a_function_of_seed_and_epoch() -> None:
    assert _batches(2, 1, epoch=3) == _batches(2, 1, epoch=3)
    assert _batches(2, 1, epoch=3) != _batches(2, 1, epoch=4)
    assert _batches(2, 1, epoch=3, seed=1) != _batches(2, 1, epoch=3, seed=2)


def test_minority_class_is_oversampled_in_reshuffled_passes() -> None:
    indices = [i for b in _batches(1, 0, batch_size=16) for i in b]  # 25 batches x 8 bona fide
    bona = np.array([i for i in indices if FLAGS[i]])
    first_pass, second_pass = bona[:40], bona[40:80]
    assert len(set(first_pass)) == 40 and set(first_pass) == set(second_pass)
    assert not np.array_equal(first_pass, second_pass)


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="leaves a class with no clip"):
        SamplerConfig(batch_size=4, bonafide_fraction=0.1)
    with pytest.raises(ValueError, match="both bonafide and spoof"):
        BalancedBatchSampler([True, True], SamplerConfig(batch_size=2))
    with pytest.raises(ValueError, match="world_rank 2 outside world_size 2"):
        BalancedBatchSampler(FLAGS, SamplerConfig(), world_size=2, world_rank=2)


def test_monitor_subset_is_balanced_fixed_and_seeded() -> None:
    """ASVspoof 2019 LA dev's mix (about 10% bona fide): a 5,000-clip monitor takes every bona
    fide clip and as many spoofs, the same clips on every call with the seed."""
    flags = np.zeros(24_844, dtype=bool)
    flags[:2_548] = True
    chosen = balanced_subset(flags, 5_096, seed=0)
    assert len(chosen) == len(set(chosen)) == 5_096 and chosen == sorted(chosen)
    assert flags[chosen].sum() == 2_548  # all bona fide, as many spoof
    assert balanced_subset(flags, 5_096, seed=0) == chosen
    assert balanced_subset(flags, 5_096, seed=1) != chosen
    small = balanced_subset(flags, 1_000, seed=0)
    assert flags[small].sum() == 500 and len(small) == 1_000
    assert balanced_subset(flags, 30_000, seed=0) == list(range(24_844))  # the whole set


def test_a_bonafide_pass_epoch_is_one_pass_over_the_bona_fide_clips() -> None:
    # ASVspoof 2019 LA train with the authors' 8 + 8 per rank on 2 ranks: 161 steps per rank,
    # against 793 for a pass over the whole set.
    paper = SamplerConfig(batch_size=16, epoch="bonafide_pass")
    assert epoch_batches(paper, 2_580, 22_800, world_size=2) == 161
    assert epoch_batches(paper, 2_580, 22_800, world_size=4) == 80
    whole = SamplerConfig(batch_size=16, epoch="dataset_pass")
    assert epoch_batches(whole, 2_580, 22_800, world_size=2) == 793
    # On the sampler: every bona fide clip once per epoch (40 of them: 2 ranks x 5 x 4).
    cfg = SamplerConfig(batch_size=8, epoch="bonafide_pass")
    per_rank = [list(BalancedBatchSampler(FLAGS, cfg, world_size=2, world_rank=r)) for r in (0, 1)]
    assert {len(b) for b in per_rank} == {5}
    bona = [k.index for rank in per_rank for batch in rank for k in batch if FLAGS[k.index]]
    assert sorted(bona) == [i for i in range(400) if FLAGS[i]]
    # batches_per_epoch overrides both.
    fixed = cfg.model_copy(update={"batches_per_epoch": 3})
    assert len(BalancedBatchSampler(FLAGS, fixed, world_size=2, world_rank=0)) == 3
