"""The stage-1 loss step's three readings of a queued entry with the anchor's own label, against a
per-anchor loop, and against the authors' logged loss level once their queue is on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.contrastive import LossSpec, contrastive_step
from trainer.queue import CrossBatchQueue


def _reference(z, labels, queue_z, queue_labels, same_label, similarity, tau):
    """L_out of each anchor over the batch plus the queue, one anchor and one pair at a time, in
    float64: the queue's same-label entries are positives, negatives, or left out."""

    def sim(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos = torch.dot(u, v)
        if similarity == "cosine":
            return cos
        return 1 - 2 * torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7)) / math.pi

    terms = []
    for i in range(len(z)):
        batch = [(z[j], labels[j] == labels[i]) for j in range(len(z)) if j != i]
        queued = []
        for entry, label in zip(queue_z, queue_labels, strict=True):
            same = bool(label == labels[i])
            if same and same_label == "exclude":
                continue
            queued.append((entry, same and same_label == "positive"))
        contrast = batch + queued
        log_denominator = torch.log(sum(torch.exp(sim(z[i], c) / tau) for c, _ in contrast))
        positives = [sim(z[i], c) / tau - log_denominator for c, is_pos in contrast if is_pos]
        if positives:
            terms.append(-sum(positives) / len(positives))
    return torch.stack(terms).mean()


def _inputs(seed: int, batch: int = 6, queued: int = 10, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1] * (batch // 2))
    queue_z = F.normalize(torch.randn(queued, dim, generator=g, dtype=torch.float64), dim=1)
    queue_labels = torch.randint(0, 2, (queued,), generator=g)
    return z, labels, queue_z, queue_labels


@pytest.mark.parametrize("same_label", ["exclude", "negative", "positive"])
@pytest.mark.parametrize("similarity", ["cosine", "angular"])
def test_each_reading_matches_a_per_anchor_loop(same_label: str, similarity: str):
    z, labels, queue_z, queue_labels = _inputs(seed=3)
    queue = CrossBatchQueue(len(queue_z), z.shape[1])
    queue.enqueue(queue_z.float(), queue_labels)
    z32 = z.float().requires_grad_()
    z64 = z.clone().requires_grad_()
    spec = LossSpec(similarity, 0.2, contrast="local", same_label=same_label)
    loss, _, _ = contrastive_step(z32, labels, queue, spec, use_queue=True)
    ref = _reference(z64, labels, queue_z, queue_labels, same_label, similarity, 0.2)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(z32.grad.double(), z64.grad, atol=1e-5, rtol=1e-4)


def test_the_three_readings_differ():
    z, labels, queue_z, queue_labels = _inputs(seed=4)
    queue = CrossBatchQueue(len(queue_z), z.shape[1])
    queue.enqueue(queue_z.float(), queue_labels)

    def loss_of(mode: str) -> float:
        spec = LossSpec("cosine", 0.2, same_label=mode)
        return float(contrastive_step(z.float(), labels, queue, spec, use_queue=True)[0])

    values = [loss_of(mode) for mode in ("exclude", "negative", "positive")]
    assert len({round(v, 4) for v in values}) == 3


def test_an_unknown_reading_is_refused():
    z, labels, _, _ = _inputs(seed=5)
    with pytest.raises(ValueError, match="same_label must be one of"):
        contrastive_step(
            z.float(),
            labels,
            CrossBatchQueue(0, 8),
            LossSpec("cosine", 0.2, same_label="ignore"),  # type: ignore[arg-type]
            use_queue=True,
        )


# The authors' log asv_19_training_log/mem_8192_supcon_temp_0.3_seed_1337-45277356.log
# (JaskiratSudan/wav2vec_contr_loss @89f9c29): the queue (QUEUE_SIZE 8192, cosine, tau 0.3) is on
# from epoch 6 (line 113); the epoch train losses from then to the early stop are 2.8016 to
# 3.5704 (lines 117-165), and the in-batch cosines at epoch 7's first step are 0.9996 between
# positives and -0.8528 between negatives (line 121).
LOGGED_LOSS = (2.8016, 3.5704)
POSITIVE_COS, NEGATIVE_COS, TAU = 0.9996, -0.8528, 0.3


def _logged_regime(seed: int = 0, dim: int = 256, per_class: int = 8, queue_size: int = 8192):
    """Unit embeddings around two class directions whose cosine is NEGATIVE_COS, spread so that
    two clips of one class have cosine POSITIVE_COS: a GPU's 8 + 8 batch and a full,
    class-balanced queue of ``queue_size`` entries drawn the same way."""
    g = torch.Generator().manual_seed(seed)
    bona = F.normalize(torch.randn(dim, generator=g), dim=0)
    other = torch.randn(dim, generator=g)
    other = F.normalize(other - (other @ bona) * bona, dim=0)
    spoof = NEGATIVE_COS * bona + math.sqrt(1 - NEGATIVE_COS**2) * other
    # Two draws of centre + noise (noise of squared norm sigma2, nearly orthogonal in 256-D)
    # have cosine about 1 / (1 + sigma2).
    sigma = math.sqrt(1 / POSITIVE_COS - 1)

    def draw(n: int, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        centre = bona if label == 1 else spoof
        noise = torch.randn(n, dim, generator=g) * sigma / math.sqrt(dim)
        return F.normalize(centre + noise, dim=1), torch.full((n,), label)

    parts = [draw(per_class, 1), draw(per_class, 0)]
    z, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    queued = [draw(queue_size // 2, 1), draw(queue_size // 2, 0)]
    queue = CrossBatchQueue(queue_size, dim)
    queue.enqueue(torch.cat([q[0] for q in queued]), torch.cat([q[1] for q in queued]))
    return z, labels, queue


def test_the_rebuilt_regime_has_the_logged_cosines():
    z, labels, _ = _logged_regime()
    cos = z @ z.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(z), dtype=torch.bool)
    assert float(cos[same & off_diagonal].mean()) == pytest.approx(POSITIVE_COS, abs=2e-4)
    assert float(cos[~same].mean()) == pytest.approx(NEGATIVE_COS, abs=2e-3)


def test_only_exclude_gives_the_loss_the_authors_logged():
    z, labels, queue = _logged_regime()

    def loss_of(mode: str) -> float:
        spec = LossSpec("cosine", TAU, contrast="local", same_label=mode)
        return float(contrastive_step(z, labels, queue, spec, use_queue=True)[0])

    loss = {mode: loss_of(mode) for mode in ("exclude", "negative", "positive")}
    low, high = LOGGED_LOSS
    # Every cosine at its logged mean is a lower bound of the real batch's loss (Jensen: the
    # spread of the cosines only raises the log-sum-exp), hence a little room below the log.
    assert low - 0.1 <= loss["exclude"] <= high, loss
    assert loss["negative"] > 2 * high and loss["positive"] > 2 * high, loss
