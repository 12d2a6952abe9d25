"""The stage-1 loss step: SupCon of the local anchors against the gathered batch plus the queue."""

from __future__ import annotations

import torch

from trainer import distributed
from trainer.loss import Similarity, supcon_loss
from trainer.queue import CrossBatchQueue


def contrastive_step(
    z_local: torch.Tensor,
    labels_local: torch.Tensor,
    queue: CrossBatchQueue,
    *,
    similarity: Similarity,
    temperature: float,
    use_queue: bool,
    queue_positives: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SupCon loss of this rank's anchors; returns (loss, gathered z (W*B, D), labels (W*B,)).

    ``z_local`` (B, D) are this rank's L2-normalised embeddings, ``labels_local`` (B,) its
    non-negative class ids. The contrast set is the batch gathered from all ranks *with* gradient,
    followed by the queue's contents when ``use_queue`` and the queue is not empty. With
    ``queue_positives=False`` queue entries stay in every denominator but never count as
    positives.

    The queue is only read: after ``loss.backward()`` the caller enqueues the two returned tensors
    (the same on every rank), so this step never sees its own batch in the queue.

    Under DDP each rank's loss is the mean over its own anchors and DDP averages gradients over
    ranks, which equals the single-process mean when every rank has the same number of anchors with
    a positive (class-balanced batches). Every rank must pass the same B.
    """
    batch = z_local.shape[0]
    gathered_z = distributed.gather_with_grad(z_local)  # (W*B, D)
    gathered_labels = distributed.all_gather_nograd(labels_local.long())  # (W*B,)
    contrast, contrast_labels = gathered_z, gathered_labels
    if use_queue and len(queue) > 0:
        queue_z, queue_labels = queue.contents()  # (K, D), (K,)
        if not queue_positives:
            queue_labels = -1 - queue_labels  # ids no anchor has: negatives for everyone
        contrast = torch.cat([gathered_z.float(), queue_z.to(gathered_z.device)])  # (W*B + K, D)
        contrast_labels = torch.cat([gathered_labels, queue_labels.to(gathered_labels.device)])
    offset = distributed.world_rank() * batch  # this rank's slice of the gathered batch
    self_index = offset + torch.arange(batch, device=z_local.device)  # (B,)
    loss = supcon_loss(
        z_local,
        labels_local,
        contrast,
        contrast_labels,
        self_index,
        similarity=similarity,
        temperature=temperature,
    )
    return loss, gathered_z.detach(), gathered_labels
