"""The stage-1 loss step: SupCon of the local anchors against the in-batch contrast set (this
rank's batch, or the batch gathered from every rank) plus the global queue."""

from __future__ import annotations

from typing import Literal

import torch

from trainer import distributed
from trainer.loss import Similarity, supcon_loss
from trainer.queue import CrossBatchQueue

Contrast = Literal["local", "global"]
SameLabel = Literal["exclude", "negative", "positive"]
SAME_LABEL_MODES: tuple[SameLabel, ...] = ("exclude", "negative", "positive")


def contrastive_step(
    z_local: torch.Tensor,
    labels_local: torch.Tensor,
    queue: CrossBatchQueue,
    *,
    similarity: Similarity,
    temperature: float,
    use_queue: bool,
    same_label: SameLabel,
    contrast: Contrast = "global",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SupCon loss of this rank's anchors; returns (loss, gathered z (W*B, D), labels (W*B,)).

    ``z_local`` (B, D) are this rank's L2-normalised embeddings, ``labels_local`` (B,) its
    non-negative class ids. The in-batch contrast set depends on ``contrast``:

    - ``global``: the batch gathered from all ranks *with* gradient (W*B entries);
    - ``local``: this rank's own B clips only (the authors' DDP code); no gradient crosses ranks,
      so the batch is gathered without gradient, only to be returned for the enqueue.

    The queue's contents follow either way when ``use_queue`` and the queue is not empty: the
    queue is global in both modes. ``same_label`` says what a queued entry with the anchor's own
    label is to that anchor:

    - ``exclude``: nothing; it leaves the anchor's contrast set, so only opposite-label entries
      join the denominator (|Q| = the opposite-class entries, as the paper counts them, and the
      loss level of the authors' logs);
    - ``negative``: a negative, in the denominator but never a positive;
    - ``positive``: a positive, like an in-batch entry of the same label.

    The queue is only read: after ``loss.backward()`` the caller enqueues the two returned tensors
    (the same on every rank), so this step never sees its own batch in the queue.

    Under DDP each rank's loss is the mean over its own anchors and DDP averages gradients over
    ranks. ``global``: that equals the single-process gradient on the full W*B batch when every
    rank has the same number of anchors with a positive (class-balanced batches). ``local``: each
    rank's loss is the SupCon of its own batch (plus the queue), and the gradient is the average
    of the W per-batch gradients; it differs from one process on the full batch, whose anchors
    also contrast with the other ranks' clips. Every rank must pass the same B.
    """
    if contrast not in ("local", "global"):
        raise ValueError(f"contrast must be 'local' or 'global', got {contrast!r}")
    if same_label not in SAME_LABEL_MODES:
        raise ValueError(f"same_label must be one of {SAME_LABEL_MODES}, got {same_label!r}")
    batch = z_local.shape[0]
    gathered_labels = distributed.all_gather_nograd(labels_local.long())  # (W*B,)
    if contrast == "global":
        gathered_z = distributed.gather_with_grad(z_local)  # (W*B, D)
        in_batch, in_batch_labels = gathered_z, gathered_labels
        offset = distributed.world_rank() * batch  # this rank's slice of the gathered batch
    else:
        gathered_z = distributed.all_gather_nograd(z_local)  # (W*B, D), for the enqueue only
        in_batch, in_batch_labels = z_local, labels_local.long()
        offset = 0
    contrast_z, contrast_labels, excluded = in_batch, in_batch_labels, None
    if use_queue and len(queue) > 0:
        queue_z, queue_labels = queue.contents()  # (K, D), (K,)
        queue_labels = queue_labels.to(in_batch.device)
        if same_label == "negative":
            queue_labels = -1 - queue_labels  # ids no anchor has: negatives for everyone
        contrast_z = torch.cat([in_batch.float(), queue_z.to(in_batch.device)])  # (N + K, D)
        contrast_labels = torch.cat([in_batch_labels, queue_labels])  # (N + K,)
        if same_label == "exclude":
            excluded = torch.arange(len(contrast_labels), device=in_batch.device) >= len(in_batch)
    self_index = offset + torch.arange(batch, device=z_local.device)  # (B,)
    loss = supcon_loss(
        z_local,
        labels_local,
        contrast_z,
        contrast_labels,
        self_index,
        similarity=similarity,
        temperature=temperature,
        exclude_same_label=excluded,
    )
    return loss, gathered_z.detach(), gathered_labels
