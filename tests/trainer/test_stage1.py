"""Stage 1's dev SupCon monitor: fixed class-balanced batches with the per-rank training
composition, built from the seed alone, so one rank and two ranks report the same value; the
previous rule (random chunks of ``batch_size x world_size`` clips) does neither."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.helpers import free_port, gloo_rank
from trainer import contrastive, distributed, stage1
from trainer.config import TrainerConfig, load_config
from trainer.loss import supcon_loss

WORLD_SIZE = 2


def _config(seed: int = 0, batch_size: int = 8, temperature: float = 0.3) -> TrainerConfig:
    return load_config(
        None,
        [
            f"seed={seed}",
            f"data.sampler.batch_size={batch_size}",
            "data.sampler.bonafide_fraction=0.5",
            "loss.similarity=cosine",
            f"loss.temperature={temperature}",
        ],
    )


def _dev_set(n_bona: int, n_spoof: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit embeddings (N, 8) and labels (N,), 1 = bona fide, the classes interleaved."""
    generator = torch.Generator().manual_seed(7)
    z = F.normalize(torch.randn(n_bona + n_spoof, 8, generator=generator), dim=1)
    labels = torch.tensor([1] * n_bona + [0] * n_spoof)
    order = torch.randperm(len(z), generator=generator)
    return z[order], labels[order]


def _random_chunk_loss(z: torch.Tensor, labels: torch.Tensor, cfg: TrainerConfig, world: int):
    """The previous monitor: in-batch SupCon over seeded random chunks of batch_size x world."""
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(cfg.seed))
    kw = {"similarity": cfg.loss.similarity, "temperature": cfg.loss.temperature}
    losses = [
        supcon_loss(z[p], labels[p], z[p], labels[p], torch.arange(len(p)), **kw).item()
        for p in order.split(cfg.data.sampler.batch_size * world)
        if len(p) > 1
    ]
    return sum(losses) / len(losses)


def _batches_seen(
    monkeypatch: pytest.MonkeyPatch, z: torch.Tensor, labels: torch.Tensor, cfg: TrainerConfig
) -> tuple[float, list[torch.Tensor]]:
    """The monitor's value and, per SupCon call, the dev indices (B,) of its batch."""
    seen = []

    def spy(anchors, anchor_labels, contrast, contrast_labels, self_index, **kw):
        assert torch.equal(anchors, contrast) and torch.equal(anchor_labels, contrast_labels)
        assert torch.equal(self_index, torch.arange(len(anchors)))  # in-batch, no queue
        seen.append((anchors[:, None, :] == z[None]).all(-1).int().argmax(1))  # (B,)
        return supcon_loss(anchors, anchor_labels, contrast, contrast_labels, self_index, **kw)

    monkeypatch.setattr(contrastive, "supcon_loss", spy)
    return stage1.dev_supcon_loss(z, labels, cfg), seen


def test_dev_batches_are_class_balanced_and_use_each_clip_once(monkeypatch: pytest.MonkeyPatch):
    z, labels = _dev_set(n_bona=13, n_spoof=117)  # 10% bona fide, like the dev set
    cfg = _config(batch_size=8)
    value, seen = _batches_seen(monkeypatch, z, labels, cfg)
    assert len(seen) == 13 // 4  # one pass over the bona fide, 4 per batch
    for batch in seen:
        assert sorted(labels[batch].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    used = torch.cat(seen)
    assert len(used.unique()) == len(used) == 24
    kw = {"similarity": "cosine", "temperature": 0.3}
    expected = [
        supcon_loss(z[b], labels[b], z[b], labels[b], torch.arange(8), **kw).item() for b in seen
    ]
    assert value == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    assert stage1.dev_supcon_loss(z, labels, cfg) == value  # the seed alone fixes the batches
    _, other_seed = _batches_seen(monkeypatch, z, labels, _config(seed=1, batch_size=8))
    assert not torch.equal(torch.cat(other_seed), used)


def test_the_scarcer_class_sets_the_number_of_batches(monkeypatch: pytest.MonkeyPatch):
    z, labels = _dev_set(n_bona=20, n_spoof=5)
    _, seen = _batches_seen(monkeypatch, z, labels, _config(batch_size=4))
    assert [sorted(labels[b].tolist()) for b in seen] == [[0, 0, 1, 1]] * 2
    # A class with fewer clips than its share gives all it has.
    _, seen = _batches_seen(monkeypatch, z[:10], labels[:10], _config(batch_size=16))
    n_spoof = int((labels[:10] == 0).sum())
    assert [sorted(labels[b].tolist()) for b in seen] == [[0] * n_spoof + [1] * 8]


def test_dev_loss_by_hand_and_unlike_random_chunks():
    # Every bona fide clip embeds to u, every spoof clip to v, cos(u, v) = c. A balanced batch
    # {u, u, v, v}: each anchor has one positive (similarity 1) and two negatives (c), so
    # L = -(1/tau - log(e^(1/tau) + 2 e^(c/tau))) = log(1 + 2 exp((c - 1) / tau)).
    c, tau = 0.3, 0.3
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([c, math.sqrt(1 - c * c)])
    labels = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])  # 4 bona fide, 10 spoof
    z = torch.where(labels[:, None] == 1, u, v)  # (14, 2)
    cfg = _config(batch_size=4, temperature=tau)
    by_hand = math.log(1 + 2 * math.exp((c - 1) / tau))
    assert stage1.dev_supcon_loss(z, labels, cfg) == pytest.approx(by_hand, abs=1e-6)
    # Random chunks of 4 mostly hold 0 or 1 bona fide clips: other terms, another mean.
    assert abs(_random_chunk_loss(z, labels, cfg, world=1) - by_hand) > 0.2


def test_dev_loss_needs_both_classes():
    z, labels = _dev_set(n_bona=0, n_spoof=12)
    with pytest.raises(ValueError, match="needs bona fide and spoof"):
        stage1.dev_supcon_loss(z, labels, _config())


def _worker(world_rank: int, port: int, out_dir: str) -> None:
    with gloo_rank(world_rank, WORLD_SIZE, port):
        z, labels = _dev_set(n_bona=13, n_spoof=117)  # the gathered dev set, on every rank
        cfg = _config(batch_size=8)
        result = {
            "dev_loss": stage1.dev_supcon_loss(z, labels, cfg),
            "random_chunks": _random_chunk_loss(z, labels, cfg, distributed.world_size()),
        }
        torch.save(result, Path(out_dir) / f"rank{world_rank}.pt")


@pytest.mark.dist
def test_dev_loss_is_the_same_on_one_rank_and_two(tmp_path: Path):
    # Forked, not spawned: a spawned child re-imports trainer.stage1 (transformers), which costs
    # far more than the check itself.
    args = (free_port(), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD_SIZE, join=True, start_method="fork")
    two_ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    z, labels = _dev_set(n_bona=13, n_spoof=117)
    cfg = _config(batch_size=8)
    one_rank = stage1.dev_supcon_loss(z, labels, cfg)
    for rank in two_ranks:
        assert rank["dev_loss"] == one_rank
    # The previous rule's chunks grow with the world size, and so does its value.
    old_one_rank = _random_chunk_loss(z, labels, cfg, world=1)
    assert abs(two_ranks[0]["random_chunks"] - old_one_rank) > 0.3
