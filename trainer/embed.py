"""Sharded embedding extraction: each rank embeds its slice, every rank gets the whole set."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from trainer import distributed
from trainer.data.config import CropConfig
from trainer.data.dataset import AudioDataset, MaskSource, make_loader
from trainer.data.records import Utterance
from trainer.model import padding_mask


def embed(
    model: torch.nn.Module,
    utterances: Sequence[Utterance],
    crop: CropConfig,
    *,
    device: torch.device,
    precision: AbstractContextManager | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    desc: str = "embed",
    progress: bool = False,
    static_batches: bool = False,
    pad_multiple: int | None = None,
    mask: MaskSource = "length",
) -> torch.Tensor:
    """(N, D) float32 embeddings of ``utterances`` in their order, in eval mode, on CPU.

    Rank r embeds utterances r, r + W, ...; the slices are gathered and put back in order. The
    forward runs in inference mode; the result is an ordinary tensor (stage 2 trains on it).
    ``static_batches``: the last, partial batch is padded with silent rows (dropped after) to
    ``batch_size``, so a compiled encoder sees one batch shape. ``pad_multiple``: see
    :func:`trainer.data.dataset.collate`; ``mask``: see :class:`~trainer.data.dataset.AudioDataset`.
    """
    was_training = model.training
    model.eval()
    dataset = AudioDataset(utterances, crop, seed=seed, mask=mask)
    rank, world = distributed.world_rank(), distributed.world_size()
    mine = list(range(rank, len(dataset), world))
    loader = make_loader(
        Subset(dataset, mine),
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        world_rank=rank,
        pin_memory=device.type == "cuda",
        pad_multiple=pad_multiple,
    )
    chunks = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
            rows = batch["waveform"].shape[0]
            wave, mask = batch["waveform"], batch["attention_mask"]  # (b, T) each
            if static_batches and rows < batch_size:
                wave = F.pad(wave, (0, 0, 0, batch_size - rows))
                mask = F.pad(mask, (0, 0, 0, batch_size - rows), value=1)
            wave = wave.to(device, non_blocking=True)
            with precision if precision is not None else torch.autocast("cpu", enabled=False):
                z = model(wave, padding_mask(mask, device))  # (b, D)
            chunks.append(z[:rows].float())
        local = torch.cat(chunks) if chunks else torch.zeros(0, _dim(model), device=device)
        # Rank-major: all of rank 0's rows, then rank 1's...; ``order`` puts them back.
        gathered = distributed.all_gather_variable(local)  # (N, D)
        order = torch.tensor([i for r in range(world) for i in range(r, len(dataset), world)])
        out = torch.empty_like(gathered)
        out[order.to(gathered.device)] = gathered
        out = out.cpu()
    model.train(was_training)
    return out.clone()  # outside inference mode: an ordinary tensor


def _dim(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)
    return inner.cfg.embedding_dim
