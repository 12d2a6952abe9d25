"""The global cross-batch queue: a FIFO memory of detached (embedding, label) pairs.

XBM-style memory (Wang et al. 2020, arXiv:1912.06798): past batches' embeddings from the same
encoder, no momentum encoder. Usage per training step, on every rank:

1. read :meth:`CrossBatchQueue.contents` (before this step's batch is in it) to extend the
   contrast set of the loss;
2. backward and optimiser step;
3. :meth:`CrossBatchQueue.enqueue` the batch *gathered across ranks* (the same tensors on every
   rank), so every rank holds identical contents without any extra communication.

``size`` counts entries of both classes. With class-balanced batches about ``size / 2`` are of
the opposite class to an anchor, which is what the paper reports as |Q| (negatives); under
``queue.same_label: exclude`` (the authors') those are the only queued entries the anchor
contrasts with (:func:`trainer.contrastive.contrastive_step`).
"""

from __future__ import annotations

from typing import Any

import torch


class CrossBatchQueue:
    """Ring buffer of ``size`` float32 embeddings (dim ``dim``) with long labels.

    Only written entries are ever returned: the fill is counted, never inferred from label values
    (label 0 is a real class) or from initial vectors. Any batch size works with any queue size.
    ``size == 0`` disables the queue: enqueue is a no-op and it is always empty.
    """

    def __init__(self, size: int, dim: int, device: torch.device | str | None = None) -> None:
        if size < 0 or dim < 1:
            raise ValueError(f"queue size must be >= 0 and dim >= 1, got size={size}, dim={dim}")
        self.size, self.dim = size, dim
        self._embeddings = torch.zeros(size, dim, device=device)  # (K, D) float32
        self._labels = torch.zeros(size, dtype=torch.long, device=device)  # (K,)
        self._pointer = 0  # the slot the next entry goes to (the oldest entry once full)
        self._fill = 0

    def __len__(self) -> int:
        """The number of valid entries, ``min(size, entries enqueued so far)``."""
        return self._fill

    @property
    def device(self) -> torch.device:
        return self._embeddings.device

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append detached copies of ``embeddings`` (M, D) and ``labels`` (M,), dropping the oldest.

        Any M: when M > size only the newest ``size`` rows (the last ones) are kept.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings (M, {self.dim}), got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"expected labels ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if self.size == 0 or embeddings.shape[0] == 0:
            return
        new_embeddings = embeddings.detach()[-self.size :]  # (m, D), m <= size
        new_labels = labels.detach()[-self.size :]  # (m,)
        count = new_embeddings.shape[0]
        slots = (self._pointer + torch.arange(count, device=self.device)) % self.size  # (m,)
        self._embeddings[slots] = new_embeddings.to(self._embeddings)
        self._labels[slots] = new_labels.to(self.device, torch.long)
        self._pointer = (self._pointer + count) % self.size
        self._fill = min(self.size, self._fill + count)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the valid entries, oldest first: embeddings (F, D) float32, labels (F,) long.

        F = ``len(self)``; (0, D) and (0,) when empty. Copies, so a later enqueue never changes a
        tensor the current step's autograd graph holds.
        """
        if self._fill < self.size:  # never wrapped yet: slots 0..fill-1 in write order
            return self._embeddings[: self._fill].clone(), self._labels[: self._fill].clone()
        order = torch.arange(self.size, device=self.device).roll(-self._pointer)  # (K,)
        return self._embeddings[order], self._labels[order]

    def state_dict(self) -> dict[str, Any]:
        """Buffers, pointer and fill, for the training checkpoint."""
        return {
            "embeddings": self._embeddings.clone(),
            "labels": self._labels.clone(),
            "pointer": self._pointer,
            "fill": self._fill,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output exactly (onto this queue's device); the queue's size
        and dim must match the saved ones."""
        embeddings, labels = state["embeddings"], state["labels"]
        pointer, fill = int(state["pointer"]), int(state["fill"])
        if tuple(embeddings.shape) != (self.size, self.dim) or tuple(labels.shape) != (self.size,):
            raise ValueError(
                f"queue checkpoint holds {tuple(embeddings.shape)} embeddings; this queue is "
                f"(size={self.size}, dim={self.dim}): queue.size or the embedding dim changed"
            )
        if not (0 <= fill <= self.size and 0 <= pointer < max(1, self.size)):
            raise ValueError(
                f"queue checkpoint has pointer={pointer}, fill={fill} for size {self.size}"
            )
        self._embeddings.copy_(embeddings)
        self._labels.copy_(labels)
        self._pointer, self._fill = pointer, fill
