"""The distributed helpers: identity in one process; with 2 gloo processes the gathered SupCon
step (plus queue) under DDP reproduces one process on the full batch, and a gather that keeps
only the local slice's gradient does not. The local-contrast step reproduces each shard's own
SupCon (plus the same global queue) with the per-shard gradients averaged, which the global step
does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import free_port, gloo_rank
from trainer import distributed
from trainer.contrastive import LossSpec, contrastive_step
from trainer.loss import supcon_loss
from trainer.queue import CrossBatchQueue

WORLD_SIZE = 2
GLOBAL_BATCH = 8  # 4 per rank, 2 of each class
QUEUE_SIZE = 12  # wraps on the second enqueue
STEPS = 3
# name -> (similarity, temperature, queue.same_label, contrast)
VARIANTS = {
    "cosine": ("cosine", 0.3, "positive", "global"),
    "angular": ("angular", 0.1, "negative", "global"),
    "exclude": ("cosine", 0.3, "exclude", "global"),
    "cosine_local": ("cosine", 0.3, "positive", "local"),
    "angular_local": ("angular", 0.1, "negative", "local"),
    "exclude_local": ("angular", 0.1, "exclude", "local"),
}
GLOBAL_VARIANTS = [name for name, v in VARIANTS.items() if v[3] == "global"]
LOCAL_VARIANTS = [name for name, v in VARIANTS.items() if v[3] == "local"]


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(GLOBAL_BATCH, 16, generator=torch.Generator().manual_seed(100 + step))
    return x, torch.tensor([0, 1] * (GLOBAL_BATCH // 2))  # (8, 16), (8,)


def _train(variant: str, world_rank: int, world_size: int) -> dict[str, Any]:
    """SGD steps of Linear(16, 8) + normalise on this rank's share of each global batch; the
    queue is filled every step and read from step 1 on. Returns this rank's per-step losses and
    gradients, and the queue."""
    similarity, temperature, same_label, contrast = VARIANTS[variant]
    spec = LossSpec(similarity, temperature, contrast=contrast, same_label=same_label)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    net = distributed.wrap_ddp(model, torch.device("cpu"))
    assert isinstance(net, DistributedDataParallel) == (world_size > 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    queue = CrossBatchQueue(QUEUE_SIZE, 8)
    per_rank = GLOBAL_BATCH // world_size
    rows = slice(world_rank * per_rank, (world_rank + 1) * per_rank)
    losses, grads = [], []
    for step in range(STEPS):
        x, labels = _global_batch(step)
        z = F.normalize(net(x[rows]), dim=1)  # (B, 8)
        loss, gathered_z, gathered_labels = contrastive_step(
            z, labels[rows], queue, spec, use_queue=step >= 1
        )
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        optimizer.step()
        queue.enqueue(gathered_z, gathered_labels)
    embeddings, labels = queue.contents()
    return {
        "losses": torch.stack(losses),  # (STEPS,)
        "grads": torch.stack(grads),  # (STEPS, P)
        "queue_z": embeddings,
        "queue_labels": labels,
    }


def _shard_loss(
    z: torch.Tensor, labels: torch.Tensor, queue_z: torch.Tensor, queue_labels: torch.Tensor, **kw
) -> torch.Tensor:
    """One shard's SupCon against itself plus the queue, from plain ``supcon_loss``. Under
    ``exclude`` each anchor gets its own contrast set (the shard and the opposite-label queue
    entries), one call per anchor; every anchor has an in-shard positive, so the shard's loss
    is the mean of the anchors'."""
    same_label = kw.pop("same_label")
    if same_label == "negative":
        queue_labels = -1 - queue_labels
    if same_label != "exclude":
        contrast, contrast_labels = torch.cat([z, queue_z]), torch.cat([labels, queue_labels])
        return supcon_loss(z, labels, contrast, contrast_labels, torch.arange(len(z)), **kw)
    per_anchor = []
    for i in range(len(z)):
        other = queue_labels != labels[i]
        contrast = torch.cat([z, queue_z[other]])  # (B + K_other, D)
        contrast_labels = torch.cat([labels, queue_labels[other]])
        per_anchor.append(
            supcon_loss(
                z[i : i + 1], labels[i : i + 1], contrast, contrast_labels, torch.tensor([i]), **kw
            )
        )
    return torch.stack(per_anchor).mean()


def _train_per_shard(variant: str) -> dict[str, Any]:
    """The local-contrast reference in one process, from plain ``supcon_loss``: at each step every
    shard's anchors contrast with that shard alone plus the queue; the backward runs on the mean
    of the shard losses (DDP's gradient average) and the whole batch is enqueued. Returns the
    per-step, per-shard losses (STEPS, W), the gradients and the queue."""
    similarity, temperature, same_label, _ = VARIANTS[variant]
    kw = {"similarity": similarity, "temperature": temperature, "same_label": same_label}
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    queue = CrossBatchQueue(QUEUE_SIZE, 8)
    per_rank = GLOBAL_BATCH // WORLD_SIZE
    losses, grads = [], []
    for step in range(STEPS):
        x, labels = _global_batch(step)
        z = F.normalize(model(x), dim=1)  # (W*B, 8)
        queue_z, queue_labels = queue.contents()  # empty at step 0
        shard_losses = [
            _shard_loss(z_shard, labels_shard, queue_z, queue_labels, **kw)
            for z_shard, labels_shard in zip(z.split(per_rank), labels.split(per_rank), strict=True)
        ]
        step_losses = torch.stack(shard_losses)  # (W,)
        optimizer.zero_grad()
        step_losses.mean().backward()
        losses.append(step_losses.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        optimizer.step()
        queue.enqueue(z.detach(), labels)
    embeddings, labels = queue.contents()
    return {
        "losses": torch.stack(losses),  # (STEPS, W)
        "grads": torch.stack(grads),  # (STEPS, P)
        "queue_z": embeddings,
        "queue_labels": labels,
    }


def _local_grad_only_gather(x: torch.Tensor) -> torch.Tensor:
    """The mistake: a plain all_gather, with only the local slice put back with its gradient."""
    parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, x.detach().contiguous())
    parts[torch_dist.get_rank()] = x
    return torch.cat(parts)


def _collectives(world_rank: int) -> dict[str, Any]:
    return {
        "ranks": (distributed.world_rank(), distributed.world_size(), distributed.is_main()),
        "variable": distributed.all_gather_variable(torch.full((world_rank + 2, 3), world_rank)),
        "sum": distributed.all_reduce_sum(torch.tensor([world_rank + 1.0])),
        "mean": distributed.all_reduce_mean(torch.tensor([world_rank + 1])),
        "broadcast": distributed.broadcast_object(f"from rank {world_rank}", src=1),
        "objects": distributed.all_gather_object(world_rank * 10),
    }


def _worker(world_rank: int, port: int, out_dir: str) -> None:
    with gloo_rank(world_rank, WORLD_SIZE, port):
        result = {name: _train(name, world_rank, WORLD_SIZE) for name in VARIANTS}
        with mock.patch.object(distributed, "gather_with_grad", _local_grad_only_gather):
            result["local_grad_only"] = _train("cosine", world_rank, WORLD_SIZE)
        for name in VARIANTS:  # each rank's queue, as seen from every rank
            result[name]["all_queue_z"] = distributed.all_gather_nograd(
                result[name]["queue_z"][None]
            )
        result.update(_collectives(world_rank))
        torch.save(result, Path(out_dir) / f"rank{world_rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.dist
@pytest.mark.parametrize("variant", GLOBAL_VARIANTS)
def test_ddp_gradients_match_one_process_on_the_full_batch(two_ranks, variant: str):
    single = _train(variant, world_rank=0, world_size=1)
    for rank in two_ranks:
        torch.testing.assert_close(rank[variant]["grads"], single["grads"], atol=1e-5, rtol=0)
    # Every rank has as many anchors with a positive, so the mean of the rank losses is the
    # full-batch loss.
    rank_mean = torch.stack([rank[variant]["losses"] for rank in two_ranks]).mean(0)  # (STEPS,)
    torch.testing.assert_close(rank_mean, single["losses"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        two_ranks[0][variant]["queue_z"], single["queue_z"], atol=1e-5, rtol=0
    )
    assert torch.equal(two_ranks[0][variant]["queue_labels"], single["queue_labels"])


@pytest.mark.dist
@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_local_contrast_is_each_shards_supcon_with_averaged_gradients(two_ranks, variant: str):
    reference = _train_per_shard(variant)
    for world_rank, rank in enumerate(two_ranks):
        own = reference["losses"][:, world_rank]  # (STEPS,)
        torch.testing.assert_close(rank[variant]["losses"], own, atol=1e-5, rtol=0)
        torch.testing.assert_close(rank[variant]["grads"], reference["grads"], atol=1e-5, rtol=0)
        # The queue stays global: it holds both shards, as in the reference.
        torch.testing.assert_close(
            rank[variant]["queue_z"], reference["queue_z"], atol=1e-5, rtol=0
        )
        assert torch.equal(rank[variant]["queue_labels"], reference["queue_labels"])


@pytest.mark.dist
def test_global_contrast_is_not_the_per_shard_loss(two_ranks):
    reference = _train_per_shard("cosine_local")
    # Step 0: same weights, empty queue; only the in-batch contrast set differs.
    for world_rank, rank in enumerate(two_ranks):
        local_loss = rank["cosine_local"]["losses"][0]
        torch.testing.assert_close(
            local_loss, reference["losses"][0, world_rank], atol=1e-5, rtol=0
        )
        assert (rank["cosine"]["losses"][0] - local_loss).abs() > 0.05
    local_grad = two_ranks[0]["cosine_local"]["grads"][0]
    global_grad = two_ranks[0]["cosine"]["grads"][0]
    assert (global_grad - local_grad).norm() > 0.25 * local_grad.norm()


@pytest.mark.dist
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_queues_are_identical_on_every_rank(two_ranks, variant: str):
    for rank in two_ranks:
        queues = rank[variant]["all_queue_z"]  # (W, K, D)
        assert queues.shape == (WORLD_SIZE, QUEUE_SIZE, 8)
        assert torch.equal(queues[0], queues[1])


@pytest.mark.dist
def test_gather_keeping_only_the_local_gradient_does_not_match(two_ranks):
    single = _train("cosine", world_rank=0, world_size=1)["grads"][0]
    wrong = two_ranks[0]["local_grad_only"]["grads"][0]
    # Same forward, so only the backward differs: by about the missing cross-rank half.
    assert (wrong - single).norm() > 0.2 * single.norm()


@pytest.mark.dist
def test_collectives_across_two_ranks(two_ranks):
    for world_rank, rank in enumerate(two_ranks):
        assert rank["ranks"] == (world_rank, WORLD_SIZE, world_rank == 0)
        expected = torch.cat([torch.full((2, 3), 0), torch.full((3, 3), 1)])
        assert torch.equal(rank["variable"], expected)
        assert rank["sum"].item() == 3.0
        assert rank["mean"].item() == 1.5
        assert rank["broadcast"] == "from rank 1"
        assert rank["objects"] == [0, 10]


def test_helpers_are_the_identity_without_a_process_group(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert not distributed.is_distributed() and not distributed.init_from_env()
    assert (distributed.world_size(), distributed.world_rank()) == (1, 0)
    assert distributed.is_main() and distributed.local_rank() == 3
    distributed.barrier()
    model = torch.nn.Linear(3, 2)
    assert distributed.wrap_ddp(model, torch.device("cpu")) is model
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    for gathered in (distributed.all_gather_nograd(x), distributed.all_gather_variable(x)):
        assert torch.equal(gathered, x) and not gathered.requires_grad
    total = distributed.all_reduce_sum(x)
    assert torch.equal(total, x) and total is not x
    assert distributed.all_reduce_mean(torch.tensor([3])).item() == 3.0
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object("x") == ["x"]
    distributed.destroy()


@pytest.mark.parametrize("mode", ["global", "local"])
def test_one_process_step_is_supcon_on_batch_plus_queue(mode: str):
    # In one process the gathered batch is the local batch: both modes are the same loss.
    z = F.normalize(torch.randn(6, 4), dim=1)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    queue = CrossBatchQueue(5, 4)
    queue.enqueue(F.normalize(torch.randn(5, 4), dim=1), torch.tensor([0, 0, 1, 1, 0]))
    queue_z, queue_labels = queue.contents()
    kw = {"similarity": "cosine", "temperature": 0.2}
    for same_label in ("positive", "negative", "exclude"):
        spec = LossSpec(**kw, contrast=mode, same_label=same_label)
        loss, gathered_z, gathered_labels = contrastive_step(z, labels, queue, spec, use_queue=True)
        expected = _shard_loss(z, labels, queue_z, queue_labels, same_label=same_label, **kw)
        torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
        assert torch.equal(gathered_z, z) and torch.equal(gathered_labels, labels)
    assert len(queue) == 5  # read, not filled
    spec = LossSpec(**kw, contrast=mode, same_label="positive")
    off, _, _ = contrastive_step(z, labels, queue, spec, use_queue=False)
    torch.testing.assert_close(off, supcon_loss(z, labels, z, labels, torch.arange(6), **kw))


def test_local_contrast_skips_the_gather_with_gradient(monkeypatch: pytest.MonkeyPatch):
    def no_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("local contrast must not gather with gradient")

    monkeypatch.setattr(distributed, "gather_with_grad", no_gather_with_grad)
    z = F.normalize(torch.randn(4, 3, requires_grad=True), dim=1)
    labels = torch.tensor([0, 1, 0, 1])
    kw = {"similarity": "cosine", "temperature": 0.2, "same_label": "exclude"}
    local = LossSpec(**kw, contrast="local")
    loss, gathered_z, _ = contrastive_step(z, labels, CrossBatchQueue(0, 3), local, use_queue=False)
    loss.backward()
    assert not gathered_z.requires_grad
    with pytest.raises(AssertionError, match="must not gather"):
        spec = LossSpec(**kw, contrast="global")
        contrastive_step(z, labels, CrossBatchQueue(0, 3), spec, use_queue=False)
    with pytest.raises(ValueError, match="contrast must be 'local' or 'global'"):
        spec = LossSpec(**kw, contrast="both")
        contrastive_step(z, labels, CrossBatchQueue(0, 3), spec, use_queue=False)
