"""The stage-1 loss step: SupCon of the local anchors against the in-batch contrast set (this
rank's batch, or the batch gathered from every rank) plus the global queue.

:class:`LossSpec` is the one place where the config's loss variant (``loss.similarity``,
``loss.temperature``, ``loss.contrast``, ``queue.same_label``) reaches the loss: the training
step (:func:`contrastive_step`) and the dev monitor (:func:`trainer.stage1.dev_supcon_loss`)
both call :func:`trainer.loss.supcon_loss` through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch

from trainer import distributed
from trainer.config import Contrast, SameLabel, Similarity, TrainerConfig
from trainer.loss import supcon_loss
from trainer.queue import CrossBatchQueue

CONTRASTS: tuple[Contrast, ...] = get_args(Contrast)
SAME_LABEL_MODES: tuple[SameLabel, ...] = get_args(SameLabel)


@dataclass(frozen=True)
class LossSpec:
    """The stage-1 SupCon variant: ``similarity`` and ``temperature`` of :func:`supcon_loss`, the
    in-batch contrast set (``contrast``) and what a queued entry with the anchor's own label is
    (``same_label``), as :func:`contrastive_step` describes them. :meth:`from_config` reads it
    from a trainer config; an unknown ``contrast`` or ``same_label`` raises ``ValueError``."""

    similarity: Similarity
    temperature: float
    contrast: Contrast = "global"
    same_label: SameLabel = "exclude"

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            allowed = " or ".join(map(repr, CONTRASTS))
            raise ValueError(f"contrast must be {allowed}, got {self.contrast!r}")
        if self.same_label not in SAME_LABEL_MODES:
            raise ValueError(
                f"same_label must be one of {SAME_LABEL_MODES}, got {self.same_label!r}"
            )

    @classmethod
    def from_config(cls, cfg: TrainerConfig) -> LossSpec:
        """``loss.similarity``, ``loss.temperature``, ``loss.contrast`` and ``queue.same_label``."""
        return cls(
            similarity=cfg.loss.similarity,
            temperature=cfg.loss.temperature,
            contrast=cfg.loss.contrast,
            same_label=cfg.queue.same_label,
        )

    def supcon(
        self,
        anchors: torch.Tensor,
        anchor_labels: torch.Tensor,
        contrast: torch.Tensor,
        contrast_labels: torch.Tensor,
        self_index: torch.Tensor,
        exclude_same_label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`supcon_loss` (shapes and reduction there) with this spec's similarity and
        temperature."""
        return supcon_loss(
            anchors,
            anchor_labels,
            contrast,
            contrast_labels,
            self_index,
            similarity=self.similarity,
            temperature=self.temperature,
            exclude_same_label=exclude_same_label,
        )


def contrastive_step(
    z_local: torch.Tensor,
    labels_local: torch.Tensor,
    queue: CrossBatchQueue,
    spec: LossSpec,
    *,
    use_queue: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SupCon loss of this rank's anchors; returns (loss, gathered z (W*B, D), labels (W*B,)).

    ``z_local`` (B, D) are this rank's L2-normalised embeddings, ``labels_local`` (B,) its
    non-negative class ids; ``spec`` gives the similarity and temperature. The in-batch contrast
    set depends on ``spec.contrast``:

    - ``global``: the batch gathered from all ranks *with* gradient (W*B entries);
    - ``local``: this rank's own B clips only (the authors' DDP code); no gradient crosses ranks,
      so the batch is gathered without gradient, only to be returned for the enqueue.

    The queue's contents follow either way when ``use_queue`` and the queue is not empty: the
    queue is global in both modes. ``spec.same_label`` says what a queued entry with the anchor's
    own label is to that anchor:

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
    batch = z_local.shape[0]
    gathered_labels = distributed.all_gather_nograd(labels_local.long())  # (W*B,)
    if spec.contrast == "global":
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
        if spec.same_label == "negative":
            queue_labels = -1 - queue_labels  # ids no anchor has: negatives for everyone
        contrast_z = torch.cat([in_batch.float(), queue_z.to(in_batch.device)])  # (N + K, D)
        contrast_labels = torch.cat([in_batch_labels, queue_labels])  # (N + K,)
        if spec.same_label == "exclude":
            excluded = torch.arange(len(contrast_labels), device=in_batch.device) >= len(in_batch)
    self_index = offset + torch.arange(batch, device=z_local.device)  # (B,)
    loss = spec.supcon(z_local, labels_local, contrast_z, contrast_labels, self_index, excluded)
    return loss, gathered_z.detach(), gathered_labels
