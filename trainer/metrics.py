"""Equal error rate (EER) and DET curve, with the semantics of the official ASVspoof evaluation.

Conventions throughout: bona fide is the target (positive) class, a higher score means "more bona
fide", and EERs are fractions in [0, 1] (multiply by 100 for the percentages papers report).

The EER follows the ASVspoof 2021 evaluation package (``compute_det_curve`` / ``compute_eer``):
the DET curve is walked over every sorted score rather than over distinct thresholds, with no
interpolation, and tied scores are ordered target-first. That tie order is pessimistic: a scorer
that gives every trial the same value gets an EER of 1.0, not 0.5. Rounded scores create ties and
therefore inflate the EER, which is why :func:`trainer.scores.write_scores` keeps full float
precision. Score files live in :mod:`trainer.scores`, bootstrap intervals of this EER in
:mod:`trainer.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from trainer.data.records import Utterance

_MISSING_SHOWN = 5

Scores = Mapping[str, float] | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class DetCurve:
    """The points of the official DET walk, all of shape (N + 1,) for N = #bona fide + #spoof.

    Point 0 is (FRR 0, FAR 1) at threshold ``min score - 0.001``. Point k + 1 sits at the k-th score
    in ascending order (targets before non-targets on ties) and rejects that trial and all before
    it: ``frr`` = rejected bona fide / #bona fide, ``far`` = accepted spoofs / #spoof. Thresholds
    are non-decreasing; a trial is accepted when its position is after the point's.
    """

    frr: np.ndarray
    far: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class SetResult:
    """The EER of one evaluation set, overall and per attack.

    ``per_attack[a]`` is the EER of attack ``a``'s spoofs against all bona fide trials of the set;
    spoofs without an attack label (In-the-Wild) count only in the overall EER.
    """

    name: str
    eer: float
    threshold: float
    n_bonafide: int
    n_spoof: int
    per_attack: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric keys, e.g. ``{"eval/asv19/eer": ..., "eval/asv19/eer_A07": ...}``."""
        out = {f"{prefix}/eer": self.eer}
        out.update({f"{prefix}/eer_{attack}": eer for attack, eer in self.per_attack.items()})
        return out


def finite_scores(scores: ArrayLike, what: str) -> np.ndarray:
    """``scores`` as a flat float64 array (N,); ``ValueError`` naming ``what`` (e.g. "spoof")
    when it is empty or holds NaN or inf."""
    values = np.asarray(scores, dtype=np.float64).ravel()  # (N,)
    if values.size == 0:
        raise ValueError(f"no {what} scores: the EER needs at least one trial of each class")
    finite = np.isfinite(values)
    if not finite.all():
        n_nan = int(np.isnan(values).sum())
        n_inf = int(values.size - finite.sum()) - n_nan
        raise ValueError(
            f"{n_nan + n_inf} of {values.size} {what} scores are not finite "
            f"({n_nan} NaN, {n_inf} inf)"
        )
    return values


def det_curve(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> DetCurve:
    """The DET points of the official ASVspoof walk (see :class:`DetCurve`).

    All scores are concatenated targets first and sorted with a stable sort, so a bona fide trial
    tied with a spoof is always rejected before it: within a tie the walk first raises FRR at the
    higher FAR, the pessimistic corner. Raises ``ValueError`` on an empty class or non-finite
    scores.
    """
    target = finite_scores(bonafide_scores, "bona fide")  # (T,)
    nontarget = finite_scores(spoof_scores, "spoof")  # (S,)
    all_scores = np.concatenate([target, nontarget])  # (T + S,)
    is_target = np.concatenate([np.ones(target.size), np.zeros(nontarget.size)])  # (T + S,)
    order = np.argsort(all_scores, kind="mergesort")
    targets_rejected = np.cumsum(is_target[order])  # (T + S,)
    nontargets_accepted = nontarget.size - (np.arange(1, all_scores.size + 1) - targets_rejected)
    sorted_scores = all_scores[order]
    curve = DetCurve(
        frr=np.concatenate([[0.0], targets_rejected / target.size]),
        far=np.concatenate([[1.0], nontargets_accepted / nontarget.size]),
        thresholds=np.concatenate([[sorted_scores[0] - 0.001], sorted_scores]),
    )
    for values in (curve.frr, curve.far, curve.thresholds):
        values.setflags(write=False)
    return curve


def roc_curve(
    bonafide_scores: ArrayLike, spoof_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) from the same points as :func:`det_curve`, bona fide positive.

    ``fpr = far`` and ``tpr = 1 - frr``, reversed so that fpr is non-decreasing and thresholds are
    non-increasing (the order ``np.trapezoid(tpr, fpr)`` and most plotting code expect).
    """
    curve = det_curve(bonafide_scores, spoof_scores)
    return curve.far[::-1], (1.0 - curve.frr)[::-1], curve.thresholds[::-1]


def compute_eer(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> tuple[float, float]:
    """(EER, threshold) exactly as the official ASVspoof 2021 evaluation computes them.

    On the :func:`det_curve` points, take the first index minimising ``|FRR - FAR|`` and return the
    mean of FRR and FAR there, with that point's threshold. There is no interpolation, so the EER
    can sit between FRR and FAR. ``|FRR - FAR|`` is compared in float64 as the official code does,
    so of two points equally far from the diagonal in exact arithmetic the one rounding closer wins.
    """
    curve = det_curve(bonafide_scores, spoof_scores)
    best = int(np.argmin(np.abs(curve.frr - curve.far)))
    eer = np.mean([curve.frr[best], curve.far[best]])
    return float(eer), float(curve.thresholds[best])


def aligned_scores(utterances: Sequence[Utterance], scores: Scores) -> np.ndarray:
    """Scores as a float64 array of shape (len(utterances),), in utterance order.

    ``scores`` is either a mapping utt_id -> score, which must cover every utterance (extra ids
    are ignored, so one score file can serve several subsets), or a sequence aligned with
    ``utterances``.
    """
    if isinstance(scores, Mapping):
        missing = [u.utt_id for u in utterances if u.utt_id not in scores]
        if missing:
            raise ValueError(
                f"no score for {len(missing)} of {len(utterances)} utterances, "
                f"e.g. {missing[:_MISSING_SHOWN]}"
            )
        return np.array([scores[u.utt_id] for u in utterances], dtype=np.float64)
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size != len(utterances):
        raise ValueError(
            f"scores of shape {values.shape} do not align with {len(utterances)} utterances"
        )
    return values


def _is_target(utterances: Sequence[Utterance]) -> np.ndarray:
    return np.array([u.target == 1 for u in utterances], dtype=bool)  # (N,)


def class_scores(utterances: Sequence[Utterance], scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    """(bona fide scores, spoof scores) of a set; ``scores`` as in :func:`aligned_scores`."""
    values = aligned_scores(utterances, scores)
    is_target = _is_target(utterances)
    return values[is_target], values[~is_target]


def evaluate(utterances: Sequence[Utterance], scores: Scores, name: str) -> SetResult:
    """The overall and per-attack EER of one set; ``scores`` as in :func:`aligned_scores`."""
    try:
        values = aligned_scores(utterances, scores)
        is_target = _is_target(utterances)
        bonafide = values[is_target]
        eer, threshold = compute_eer(bonafide, values[~is_target])
        attacks = [None if u.is_bonafide else u.attack for u in utterances]
        per_attack = {
            attack: compute_eer(bonafide, values[[a == attack for a in attacks]])[0]
            for attack in sorted({a for a in attacks if a is not None})
        }
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return SetResult(
        name=name,
        eer=eer,
        threshold=threshold,
        n_bonafide=int(is_target.sum()),
        n_spoof=int((~is_target).sum()),
        per_attack=per_attack,
    )


def pooled_mean(results: Sequence[SetResult]) -> float:
    """The plain mean of the per-set EERs: what the paper's "pooled" column reports.

    Each set weighs the same whatever its size.
    """
    if not results:
        raise ValueError("pooled_mean needs at least one set result")
    return float(np.mean([r.eer for r in results]))


def pooled_all(sets: Sequence[tuple[ArrayLike, ArrayLike]]) -> float:
    """The EER of all sets' scores pooled into one trial list (one threshold for every set).

    ``sets`` holds (bona fide scores, spoof scores) per set, e.g. from :func:`class_scores`. Large
    sets dominate, and a calibration shift between sets raises it; this is not the paper's
    "pooled" figure (see :func:`pooled_mean`).
    """
    if not sets:
        raise ValueError("pooled_all needs at least one set")
    bonafide = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b, _ in sets])
    spoof = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for _, s in sets])
    return compute_eer(bonafide, spoof)[0]
