"""Supervised contrastive loss (SupCon) with a cosine or angular similarity.

A pure function of (anchors, labels, contrast set, labels, similarity, temperature): no
collectives, no device moves, no queue access. The caller builds the contrast set (the gathered
batch, plus queue entries) and says where each anchor sits in it.
"""

from __future__ import annotations

import math
from typing import get_args

import torch

from trainer.config import Similarity

SIMILARITIES: tuple[Similarity, ...] = get_args(Similarity)

# acos has an infinite derivative at +-1. Clamping keeps it finite: an entry at the bound gets a
# zero gradient from the clamp instead of inf (inf * 0 from a later mask is still NaN).
_ACOS_EPS = 1e-7


def _exact_matmul_dtype(device: torch.device) -> torch.dtype:
    tf32 = (
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    )
    return torch.float64 if device.type == "cuda" and tf32 else torch.float32


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor, similarity: Similarity) -> torch.Tensor:
    """Similarities (B, N) between L2-normalised rows of ``a`` (B, D) and ``b`` (N, D), in float32.

    ``cosine``: ``s = a . b``. ``angular``: ``s = 1 - 2 * theta / pi`` with
    ``theta = acos(clamp(a . b, -1 + 1e-7, 1 - 1e-7))``, so s is in [-1, 1] like the cosine. The
    clamp is needed because d acos(x)/dx is infinite at x = +-1: an anchor's own entry (x = 1) would
    give NaN gradients even when it is masked out afterwards.

    On CUDA with TF32 allowed, the dot products run in float64 and are rounded to float32: a TF32
    matmul (10-bit mantissa) moves acos near 1 by several hundredths of a radian. At SupCon's
    sizes, (B, N, D) = (16, 8k, 256), that costs nothing measurable on a GPU; CPU float32 matmuls
    are plain IEEE float32 and stay in float32.
    """
    if similarity not in SIMILARITIES:
        allowed = " or ".join(map(repr, SIMILARITIES))
        raise ValueError(f"similarity must be {allowed}, got {similarity!r}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        exact = _exact_matmul_dtype(a.device)
        cos = (a.to(exact) @ b.to(exact).T).float()  # (B, N)
        if similarity == "cosine":
            return cos
        theta = torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
        return 1.0 - (2.0 / math.pi) * theta


def supcon_loss(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor,
    contrast_labels: torch.Tensor,
    self_index: torch.Tensor,
    *,
    similarity: Similarity,
    temperature: float,
    exclude_same_label: torch.Tensor | None = None,
) -> torch.Tensor:
    """SupCon "L_out" of Khosla et al. 2020 (arXiv:2004.11362, eq. 2), a float32 scalar.

    Args:
        anchors: (B, D) L2-normalised anchor embeddings.
        anchor_labels: (B,) class ids (long or bool).
        contrast: (N, D) L2-normalised contrast embeddings (gathered batch, plus queue).
        contrast_labels: (N,) class ids; an id no anchor has (e.g. negative) makes the entry a
            negative for every anchor.
        self_index: (B,) long, the position of each anchor inside ``contrast``, or -1 if absent.
        similarity: ``"cosine"`` or ``"angular"`` (see :func:`pairwise_similarity`).
        temperature: tau > 0; the similarity is divided by it (no learnable scale).
        exclude_same_label: optional (N,) bool; a flagged entry joins only the contrast sets of
            anchors with another label: for an anchor of its own label it is neither a positive
            nor in the denominator (queued entries under ``queue.same_label: exclude``).

    For anchor i, A(i) is every contrast entry except its own position and the flagged entries
    of its label, and P(i) the entries of A(i) with the same label::

        L_i = -1/|P(i)| * sum_{p in P(i)} [ s_ip/tau - log sum_{a in A(i)} exp(s_ia/tau) ]

    Reduction: the mean of L_i over the anchors with |P(i)| > 0; anchors without a positive are
    skipped. If no anchor has one, the result is a zero that still depends on the inputs, so that
    ``backward()`` works and, under DDP with a gradient-carrying gather, every rank still runs the
    gather's backward collective.

    Computed in float32 whatever the input dtype or autocast state. The own entry (and every
    excluded one) is set to -inf before a logsumexp, so nothing is exponentiated unshifted.
    """
    if anchors.ndim != 2 or contrast.ndim != 2 or anchors.shape[1] != contrast.shape[1]:
        raise ValueError(
            f"anchors (B, D) and contrast (N, D), got {anchors.shape}, {contrast.shape}"
        )
    batch, n_contrast = anchors.shape[0], contrast.shape[0]
    if anchor_labels.shape != (batch,) or self_index.shape != (batch,):
        raise ValueError("anchor_labels and self_index must be (B,) with B = anchors.shape[0]")
    if contrast_labels.shape != (n_contrast,):
        raise ValueError("contrast_labels must be (N,) with N = contrast.shape[0]")
    if exclude_same_label is not None and exclude_same_label.shape != (n_contrast,):
        raise ValueError("exclude_same_label must be (N,) with N = contrast.shape[0]")
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        sim = pairwise_similarity(anchors.float(), contrast.float(), similarity)  # (B, N)
        columns = torch.arange(n_contrast, device=sim.device)
        left_out = columns[None, :] == self_index[:, None]  # (B, N); -1 matches no column
        same = anchor_labels.long()[:, None] == contrast_labels.long()[None, :]  # (B, N)
        if exclude_same_label is not None:
            left_out = left_out | (same & exclude_same_label.bool()[None, :])
        positive = same & ~left_out
        n_positive = positive.sum(dim=1)  # (B,)
        logits = (sim / temperature).masked_fill(left_out, float("-inf"))  # (B, N)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, N)
        positive_sum = log_prob.masked_fill(~positive, 0.0).sum(dim=1)  # (B,)
        per_anchor = -positive_sum / n_positive.clamp_min(1)  # (B,); 0 where no positive
        # A sum over the anchors with a positive, not a boolean selection: no host sync, and with
        # none the result is still a graph-connected zero.
        return per_anchor.sum() / (n_positive > 0).sum().clamp_min(1)
