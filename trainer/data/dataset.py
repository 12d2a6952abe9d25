"""The torch Dataset, collation and DataLoader construction of the audio pipeline."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data.audio import ClipReader
from trainer.data.config import CropConfig
from trainer.data.records import Utterance
from trainer.data.sampler import SampleKey

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
MaskSource = Literal["length", "nonzero", "nonzero_augmented"]


class AudioDataset(Dataset):
    """Clips of a corpus split as ``{"waveform", "label", "index"}`` items.

    Indexed by a plain int (evaluation: deterministic per clip) or by a :class:`SampleKey` from
    :class:`~trainer.data.sampler.BalancedBatchSampler` (training). Every random draw of an item
    (random crop, augmentation) comes from a generator seeded by (seed, epoch, world_rank,
    position), so draws differ across ranks, DataLoader workers and epochs, and a rerun with the
    same seed reproduces them whatever the number of workers. (Seeding from global numpy state, as
    the reference implementation does, repeats the same draws in every forked worker.)

    ``mask`` says which samples the batch's attention mask marks valid (``data.attention_mask``):
    ``length``, every sample of the clip (the mask is built from the lengths when batched);
    ``nonzero``, the clip's non-zero samples before augmentation, the augmented clip zeroed
    where the clip was zero (the authors' code at the runs they logged); ``nonzero_augmented``,
    the non-zero samples after augmentation (the authors' earlier and later code). Only the
    count of valid samples reaches wav2vec2 (it reads a mask as a length), so a clip's exact
    zeros (digital silence) shorten what the encoder attends to.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        crop: CropConfig,
        *,
        augment: Augment | None = None,
        seed: int = 0,
        mask: MaskSource = "length",
    ) -> None:
        self.utterances = tuple(utterances)
        self.reader = ClipReader(crop)
        self.augment = augment
        self.seed = seed
        self.mask = mask

    def __len__(self) -> int:
        return len(self.utterances)

    def rng_for(self, item: int | SampleKey) -> np.random.Generator:
        if isinstance(item, SampleKey):
            return np.random.default_rng([self.seed, item.epoch, item.world_rank, item.position])
        return np.random.default_rng([self.seed, 1 << 32, int(item)])

    def __getitem__(self, item: int | SampleKey) -> dict[str, Any]:
        index = item.index if isinstance(item, SampleKey) else int(item)
        utt = self.utterances[index]
        rng = self.rng_for(item)
        wave = self.reader(utt.path, rng)
        nonzero = wave != 0 if self.mask == "nonzero" else None
        if self.augment is not None:
            wave = self.augment(wave, rng)
        if nonzero is not None:
            wave = wave * nonzero
        item = {
            "waveform": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
            "label": utt.target,
            "index": index,
        }
        if self.mask != "length":
            valid = nonzero if nonzero is not None else wave != 0
            item["valid"] = torch.from_numpy(np.ascontiguousarray(valid))
        return item


def collate(
    items: Sequence[dict[str, Any]], pad_multiple: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack clips, zero-padding to the longest (rounded up to a multiple of ``pad_multiple``
    samples when set: fewer distinct shapes for a compiled model); ``attention_mask`` is 1 on
    the clips' samples, or on those each item marks ``valid`` (see :class:`AudioDataset`)."""
    lengths = torch.tensor([it["waveform"].shape[0] for it in items])
    longest = int(lengths.max())
    if pad_multiple:
        longest = -(-longest // pad_multiple) * pad_multiple
    waveform = torch.zeros(len(items), longest)  # (B, T)
    for row, it in enumerate(items):
        waveform[row, : it["waveform"].shape[0]] = it["waveform"]
    attention_mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()  # (B, T)
    if "valid" in items[0]:
        for row, it in enumerate(items):
            attention_mask[row, : it["valid"].shape[0]] = it["valid"].long()
    return {
        "waveform": waveform,
        "attention_mask": attention_mask,
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),  # (B,)
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),  # (B,)
    }


def _seed_worker_globals(worker_id: int) -> None:
    # Third-party code that draws from global RNGs gets a distinct, reproducible stream per
    # worker: torch seeds each worker with base_seed + worker_id from the loader's generator.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: AudioDataset,
    *,
    batch_sampler: Any = None,
    batch_size: int = 1,
    num_workers: int = 0,
    seed: int = 0,
    world_rank: int = 0,
    pin_memory: bool = False,
    pad_multiple: int | None = None,
) -> DataLoader:
    """A DataLoader whose worker seeding is a function of (seed, world_rank)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + world_rank)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "collate_fn": functools.partial(collate, pad_multiple=pad_multiple),
        "worker_init_fn": _seed_worker_globals,
        "generator": generator,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)
