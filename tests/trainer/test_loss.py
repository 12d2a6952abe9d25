"""SupCon against a plain per-anchor loop; skipping, self exclusion, the acos clamp, precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.loss import pairwise_similarity, supcon_loss


def _reference_loss(
    anchors, anchor_labels, contrast, contrast_labels, self_index, similarity, tau, excluded=None
):
    """Khosla et al. 2020 L_out, one anchor and one pair at a time, in float64; ``excluded``
    (N,) flags entries that leave the contrast set of anchors with their label."""

    def sim(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos = torch.dot(u, v)
        if similarity == "cosine":
            return cos
        return 1 - 2 * torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7)) / math.pi

    terms = []
    for i in range(anchors.shape[0]):
        others = [
            j
            for j in range(contrast.shape[0])
            if j != int(self_index[i])
            and not (
                excluded is not None and excluded[j] and contrast_labels[j] == anchor_labels[i]
            )
        ]
        positives = [j for j in others if int(contrast_labels[j]) == int(anchor_labels[i])]
        if not positives:
            continue
        log_denominator = torch.log(
            sum(torch.exp(sim(anchors[i], contrast[a]) / tau) for a in others)
        )
        total = sum(sim(anchors[i], contrast[p]) / tau - log_denominator for p in positives)
        terms.append(-total / len(positives))
    return torch.stack(terms).mean()


def _case(seed: int, batch: int, extra: int, dim: int = 16, absent: int = 0):
    """Anchors placed at shuffled positions of a contrast set with ``extra`` other rows; the first
    ``absent`` anchors are left out of the contrast set (self_index -1)."""
    g = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    anchor_labels = torch.randint(0, 2, (batch,), generator=g)
    others = F.normalize(torch.randn(extra, dim, generator=g), dim=1)
    other_labels = torch.randint(0, 2, (extra,), generator=g)
    present = torch.arange(absent, batch)
    contrast = torch.cat([anchors[present], others])
    contrast_labels = torch.cat([anchor_labels[present], other_labels])
    perm = torch.randperm(len(contrast), generator=g)
    contrast, contrast_labels = contrast[perm], contrast_labels[perm]
    self_index = torch.full((batch,), -1)
    self_index[present] = torch.argsort(perm)[: len(present)]
    return anchors, anchor_labels, contrast, contrast_labels, self_index


@pytest.mark.parametrize("similarity", ["cosine", "angular"])
@pytest.mark.parametrize("tau", [0.07, 0.3, 1.0])
@pytest.mark.parametrize("absent", [0, 3])
def test_matches_per_anchor_loop_value_and_gradient(similarity: str, tau: float, absent: int):
    anchors, a_lab, contrast, c_lab, self_index = _case(
        seed=int(tau * 100) + absent, batch=8, extra=12, absent=absent
    )
    a32, c32 = anchors.clone().requires_grad_(), contrast.clone().requires_grad_()
    a64, c64 = anchors.double().requires_grad_(), contrast.double().requires_grad_()
    loss = supcon_loss(a32, a_lab, c32, c_lab, self_index, similarity=similarity, temperature=tau)
    ref = _reference_loss(a64, a_lab, c64, c_lab, self_index, similarity, tau)
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(a32.grad.double(), a64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c32.grad.double(), c64.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", "angular"])
def test_excluded_entries_leave_only_the_contrast_sets_of_their_own_label(similarity: str):
    anchors, a_lab, contrast, c_lab, self_index = _case(seed=11, batch=8, extra=12)
    excluded = torch.zeros(len(contrast), dtype=torch.bool)
    excluded[torch.arange(len(contrast)) % 3 == 0] = True  # anchors' own rows among them
    a32, c32 = anchors.clone().requires_grad_(), contrast.clone().requires_grad_()
    a64, c64 = anchors.double().requires_grad_(), contrast.double().requires_grad_()
    kw = {"similarity": similarity, "temperature": 0.2}
    loss = supcon_loss(a32, a_lab, c32, c_lab, self_index, exclude_same_label=excluded, **kw)
    ref = _reference_loss(a64, a_lab, c64, c_lab, self_index, similarity, 0.2, excluded)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(a32.grad.double(), a64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c32.grad.double(), c64.grad, atol=1e-5, rtol=1e-5)
    plain = supcon_loss(anchors, a_lab, contrast, c_lab, self_index, **kw)
    assert (plain - loss).abs() > 1e-3  # the flags changed the loss
    none = torch.zeros(len(contrast), dtype=torch.bool)
    unflagged = supcon_loss(
        anchors, a_lab, contrast, c_lab, self_index, exclude_same_label=none, **kw
    )
    torch.testing.assert_close(unflagged, plain, atol=0, rtol=0)


def test_bool_labels_equal_long_labels():
    anchors, a_lab, contrast, c_lab, self_index = _case(seed=5, batch=6, extra=6)
    kw = {"similarity": "cosine", "temperature": 0.3}
    as_long = supcon_loss(anchors, a_lab, contrast, c_lab, self_index, **kw)
    as_bool = supcon_loss(anchors, a_lab.bool(), contrast, c_lab.bool(), self_index, **kw)
    torch.testing.assert_close(as_bool, as_long, atol=0, rtol=0)


def test_anchor_without_positive_is_skipped():
    # Anchor 2 (label 1) has no other label-1 entry: the loss is the mean over anchors 0 and 1.
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    self_index = torch.arange(3)
    tau = 0.5
    s = z @ z.T / tau
    l0 = -(s[0, 1] - torch.logsumexp(s[0, [1, 2]], 0))
    l1 = -(s[1, 0] - torch.logsumexp(s[1, [0, 2]], 0))
    loss = supcon_loss(z, labels, z, labels, self_index, similarity="cosine", temperature=tau)
    torch.testing.assert_close(loss, (l0 + l1) / 2, atol=1e-6, rtol=0)


def test_no_positive_anywhere_returns_a_differentiable_zero():
    anchors = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    contrast = F.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    loss = supcon_loss(
        anchors,
        torch.zeros(3, dtype=torch.long),
        contrast,
        torch.ones(5, dtype=torch.long),
        torch.full((3,), -1),
        similarity="angular",
        temperature=0.1,
    )
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(anchors.grad, torch.zeros_like(anchors))
    assert torch.equal(contrast.grad, torch.zeros_like(contrast))


def test_own_entry_is_neither_positive_nor_in_the_denominator():
    # The lone label-0 anchor's only positive would be itself: excluded, it has none, and the
    # loss is anchor 1's alone. Counting the own entry would change both.
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    tau = 0.3
    loss = supcon_loss(z, labels, z, labels, torch.arange(3), similarity="cosine", temperature=tau)
    s = z @ z.T / tau
    only_anchor_1 = -(s[1, 2] - torch.logsumexp(s[1, [0, 2]], 0))
    only_anchor_2 = -(s[2, 1] - torch.logsumexp(s[2, [0, 1]], 0))
    torch.testing.assert_close(loss, (only_anchor_1 + only_anchor_2) / 2, atol=1e-6, rtol=0)
    with_self = supcon_loss(
        z, labels, z, labels, torch.full((3,), -1), similarity="cosine", temperature=tau
    )
    assert abs(with_self.item() - loss.item()) > 0.1


def _exact_unit_vectors() -> torch.Tensor:
    # Rows of the identity and their negatives: dot products are exactly 1, 0 and -1.
    eye = torch.eye(3)
    return torch.cat([eye, -eye[:1]])  # (4, 3); rows 0 and 3 are antipodal


def test_angular_gradient_is_finite_on_the_diagonal_and_for_antipodal_pairs():
    z = _exact_unit_vectors()
    labels = torch.tensor([0, 1, 0, 1])
    anchors, contrast = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = supcon_loss(
        anchors, labels, contrast, labels, torch.arange(4), similarity="angular", temperature=0.07
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(contrast.grad).all()


def test_without_the_clamp_the_masked_diagonal_gives_nan_gradients():
    # The failure the clamp prevents: acos'(1) = -inf, and -inf * 0 (the mask) is NaN.
    z = _exact_unit_vectors()[:3].requires_grad_()
    theta = torch.acos(z @ z.T)
    logits = ((1 - 2 * theta / math.pi) / 0.07).masked_fill(
        torch.eye(3, dtype=torch.bool), -math.inf
    )
    (-logits.log_softmax(dim=1)[0, 1]).backward()
    assert torch.isnan(z.grad).any()


def test_bf16_inputs_are_computed_in_fp32():
    anchors, a_lab, contrast, c_lab, self_index = _case(seed=7, batch=8, extra=8)
    kw = {"similarity": "angular", "temperature": 0.07}
    reference = supcon_loss(anchors, a_lab, contrast, c_lab, self_index, **kw)
    a16, c16 = anchors.bfloat16(), contrast.bfloat16()
    from_bf16 = supcon_loss(a16, a_lab, c16, c_lab, self_index, **kw)
    assert from_bf16.dtype == torch.float32
    upcast = supcon_loss(a16.float(), a_lab, c16.float(), c_lab, self_index, **kw)
    torch.testing.assert_close(from_bf16, upcast, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_bf16, reference, atol=5e-2, rtol=0)


def test_autocast_does_not_lower_the_precision():
    anchors, a_lab, contrast, c_lab, self_index = _case(seed=8, batch=8, extra=8)
    kw = {"similarity": "cosine", "temperature": 0.07}
    plain = supcon_loss(anchors, a_lab, contrast, c_lab, self_index, **kw)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = supcon_loss(anchors, a_lab, contrast, c_lab, self_index, **kw)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, atol=1e-6, rtol=0)


def test_inputs_are_not_modified():
    anchors, a_lab, contrast, c_lab, self_index = _case(seed=9, batch=4, extra=4)
    before = [t.clone() for t in (anchors, a_lab, contrast, c_lab, self_index)]
    supcon_loss(anchors, a_lab, contrast, c_lab, self_index, similarity="angular", temperature=0.1)
    for old, new in zip(before, (anchors, a_lab, contrast, c_lab, self_index), strict=True):
        assert torch.equal(old, new)


def test_pairwise_similarity_ranges_and_values():
    z = _exact_unit_vectors()
    cos = pairwise_similarity(z, z, "cosine")
    ang = pairwise_similarity(z, z, "angular")
    torch.testing.assert_close(cos, z @ z.T)
    assert ang.shape == (4, 4) and ang.dtype == torch.float32
    assert ang[0, 0].item() == pytest.approx(1.0, abs=1e-3)  # clamped just below 1
    assert ang[0, 1].item() == pytest.approx(0.0, abs=1e-6)  # orthogonal
    assert ang[0, 3].item() == pytest.approx(-1.0, abs=1e-3)  # antipodal
    with pytest.raises(ValueError, match="cosine"):
        pairwise_similarity(z, z, "dot")  # type: ignore[arg-type]


@pytest.mark.gpu
def test_cuda_tf32_does_not_degrade_the_angular_loss():
    # Close positives (cos ~0.9) as training produces: acos amplifies dot-product error there.
    # With the dot products in TF32 (as trainer.runtime enables) the loss is off by ~1e-4.
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(11)
    anchors = F.normalize(torch.randn(16, 256, generator=g), dim=1)
    contrast = F.normalize(anchors.repeat(3, 1) + 0.03 * torch.randn(48, 256, generator=g), dim=1)
    a_lab = torch.arange(16) % 2
    c_lab, self_index = a_lab.repeat(3), torch.full((16,), -1)
    reference = _reference_loss(
        anchors.double(), a_lab, contrast.double(), c_lab, self_index, "angular", 0.07
    )
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        on_gpu = supcon_loss(
            anchors.cuda(),
            a_lab.cuda(),
            contrast.cuda(),
            c_lab.cuda(),
            self_index.cuda(),
            similarity="angular",
            temperature=0.07,
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    torch.testing.assert_close(on_gpu.double().cpu(), reference, atol=1e-5, rtol=0)
