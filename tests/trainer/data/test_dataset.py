"""Random draws per item: distinct across ranks, workers and epochs; reproducible from the seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data.config import CropConfig, DatasetConfig, RawBoostConfig, SamplerConfig
from trainer.data.corpora import read_corpus
from trainer.data.dataset import AudioDataset, make_loader
from trainer.data.rawboost import RawBoost
from trainer.data.sampler import BalancedBatchSampler


def add_noise(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return wave + rng.standard_normal(wave.shape[0]).astype(np.float32)


def _epoch(root: Path, *, rank: int, workers: int, seed: int = 7, epoch: int = 0):
    corpus = read_corpus(DatasetConfig(kind="asvspoof2019", root=root / "LA", split="train"))
    dataset = AudioDataset(
        corpus.utterances, CropConfig(policy="random", samples=4000), augment=add_noise, seed=seed
    )
    sampler = BalancedBatchSampler(
        [u.is_bonafide for u in corpus.utterances],
        SamplerConfig(batch_size=4, batches_per_epoch=4),
        world_size=2,
        world_rank=rank,
        seed=seed,
    )
    sampler.set_epoch(epoch)
    loader = make_loader(
        dataset, batch_sampler=sampler, num_workers=workers, seed=seed, world_rank=rank
    )
    return [batch for batch in loader]


@pytest.fixture(scope="module")
def rank0_two_workers(synth_root: Path):
    return _epoch(synth_root, rank=0, workers=2)


def _noise(batches) -> torch.Tensor:
    return torch.cat([b["waveform"] for b in batches])


def test_reproducible_whatever_the_number_of_workers(synth_root: Path, rank0_two_workers) -> None:
    again = _epoch(synth_root, rank=0, workers=0)
    assert torch.equal(_noise(rank0_two_workers), _noise(again))
    assert [b["index"].tolist() for b in rank0_two_workers] == [b["index"].tolist() for b in again]


def test_workers_ranks_and_epochs_draw_differently(synth_root: Path, rank0_two_workers) -> None:
    waves = _noise(rank0_two_workers)
    # Batches 0 and 1 come from different workers; no two clips share a draw.
    flat = waves.reshape(waves.shape[0], -1)
    assert torch.unique(flat[:, :50], dim=0).shape[0] == flat.shape[0]
    other_rank = _noise(_epoch(synth_root, rank=1, workers=2))
    assert not torch.equal(waves, other_rank)
    next_epoch = _noise(_epoch(synth_root, rank=0, workers=2, epoch=1))
    assert not torch.equal(waves, next_epoch)


def test_each_batch_is_class_balanced(rank0_two_workers) -> None:
    assert all(b["label"].sum().item() == 2 for b in rank0_two_workers)


def test_rawboost_in_the_loader_is_reproducible(synth_root: Path) -> None:
    corpus = read_corpus(DatasetConfig(kind="asvspoof2019", root=synth_root / "LA", split="dev"))
    rawboost = RawBoost(RawBoostConfig(algo=5, p=1.0))
    dataset = AudioDataset(corpus.utterances, CropConfig(samples=8000), augment=rawboost, seed=3)
    clean = AudioDataset(corpus.utterances, CropConfig(samples=8000), seed=3)
    flags = [u.is_bonafide for u in corpus.utterances]

    def run(rank: int) -> torch.Tensor:
        sampler = BalancedBatchSampler(
            flags,
            SamplerConfig(batch_size=4, batches_per_epoch=2),
            world_size=2,
            world_rank=rank,
            seed=3,
        )
        loader = make_loader(dataset, batch_sampler=sampler, num_workers=2, seed=3, world_rank=rank)
        return torch.cat([b["waveform"] for b in loader])

    first = run(0)
    assert torch.equal(first, run(0))
    keys = next(
        iter(
            BalancedBatchSampler(
                flags,
                SamplerConfig(batch_size=4, batches_per_epoch=2),
                world_size=2,
                world_rank=0,
                seed=3,
            )
        )
    )
    assert not torch.allclose(first[0], clean[keys[0]]["waveform"])
    assert torch.isfinite(first).all()
