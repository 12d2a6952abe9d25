from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from trainer.data.records import Utterance
from trainer.metrics import (
    SetResult,
    class_scores,
    compute_eer,
    det_curve,
    evaluate,
    pooled_all,
    pooled_mean,
    roc_curve,
)


def _utt(
    utt_id: str, label: str, attack: str | None = None, key: tuple[str, ...] = ()
) -> Utterance:
    return Utterance(utt_id=utt_id, path=Path("x.flac"), label=label, attack=attack, key=key)


def _set(bonafide: list[float], spoofs: dict[str | None, list[float]], tag: str = ""):
    """Utterances and aligned scores: bona fide first, then each attack's spoofs."""
    utts = [_utt(f"{tag}b{i}", "bonafide") for i in range(len(bonafide))]
    scores = list(bonafide)
    for attack, values in spoofs.items():
        utts += [_utt(f"{tag}s{attack}{i}", "spoof", attack) for i in range(len(values))]
        scores += values
    return utts, scores


def _reference_eer(bonafide, spoof) -> tuple[float, float]:
    """The official DET walk rebuilt by counting around each distinct threshold.

    Inside a group of trials tied at value v the official sort puts targets first, so the walk
    rejects the tied targets one by one (FAR still counting every spoof >= v), then the tied
    spoofs. The first point closest to the diagonal wins.
    """
    bonafide, spoof = [float(s) for s in bonafide], [float(s) for s in spoof]
    n_t, n_s = len(bonafide), len(spoof)
    points = [(0 / n_t, n_s / n_s, min(bonafide + spoof) - 0.001)]
    for v in sorted(set(bonafide + spoof)):
        t_below = sum(s < v for s in bonafide)
        t_tied = sum(s == v for s in bonafide)
        s_above = sum(s > v for s in spoof)
        s_tied = sum(s == v for s in spoof)
        for j in range(1, t_tied + 1):
            points.append(((t_below + j) / n_t, (s_above + s_tied) / n_s, v))
        for j in range(1, s_tied + 1):
            points.append(((t_below + t_tied) / n_t, (s_above + s_tied - j) / n_s, v))
    frr, far, threshold = min(points, key=lambda p: abs(p[0] - p[1]))  # min keeps the first
    return (frr + far) / 2, threshold


# --- EER semantics ---------------------------------------------------------------------------


def test_perfect_separation_is_zero():
    assert compute_eer([1.0, 2.0], [-1.0, 0.0]) == (0.0, 0.0)


def test_perfectly_inverted_is_one():
    # sorted: -1 t, 0 t, 1 s, 2 s -> (FRR, FAR) = (0,1) (.5,1) (1,1) ...: |FRR-FAR| = 0 at 0.0
    assert compute_eer([-1.0, 0.0], [1.0, 2.0]) == (1.0, 0.0)


def test_constant_scorer_is_one_not_half():
    # All tied: every target is rejected before any spoof, so the walk reaches (1, 1).
    assert compute_eer([0.3] * 3, [0.3] * 4) == (1.0, 0.3)


def test_tie_between_classes_is_pessimistic():
    # Targets {0.5, 1.0}, spoofs {0.0, 0.5}; the 0.5 tie sorts the target first:
    #   0.0 s -> (FRR 0, FAR 1/2); 0.5 t -> (1/2, 1/2): EER 0.5 at 0.5.
    # The optimistic order (spoof first) would give 0.5 s -> (0, 0): EER 0.
    assert compute_eer([0.5, 1.0], [0.0, 0.5]) == (0.5, 0.5)


def test_three_targets_two_spoofs():
    # Targets {0.3, 0.8, 0.9}, spoofs {0.1, 0.5}; sorted 0.1 s, 0.3 t, 0.5 s, 0.8 t, 0.9 t:
    #   start (0, 1) |1|; 0.1 s (0, 1/2) |1/2|; 0.3 t (1/3, 1/2) |1/6|; 0.5 s (1/3, 0) |1/3|;
    #   0.8 t (2/3, 0); 0.9 t (1, 0). Minimum at 0.3: EER = (1/3 + 1/2) / 2 = 5/12.
    eer, threshold = compute_eer([0.3, 0.8, 0.9], [0.1, 0.5])
    assert eer == pytest.approx(5 / 12)
    assert threshold == 0.3


def test_near_ties_in_distance_follow_float64_like_the_official_code():
    # Sorted 0.1 s, 0.2 t, 0.6 t, 0.7 s, 0.9 t gives (1/3, 1/2) then (2/3, 1/2): both 1/6 from the
    # diagonal in exact arithmetic, but in float64 2/3 - 1/2 < 1/2 - 1/3, so the second point wins.
    eer, threshold = compute_eer([0.2, 0.6, 0.9], [0.1, 0.7])
    assert eer == pytest.approx(7 / 12)
    assert threshold == 0.6


def test_order_invariance_with_ties():
    rng = np.random.default_rng(3)
    bonafide = np.round(rng.normal(1.0, 1.0, 40), 1)
    spoof = np.round(rng.normal(0.0, 1.0, 60), 1)
    expected = compute_eer(bonafide, spoof)
    for _ in range(5):
        assert compute_eer(rng.permutation(bonafide), rng.permutation(spoof)) == expected


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_reference_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    n_t, n_s = rng.integers(1, 30, size=2)
    bonafide = np.round(rng.normal(0.5, 1.0, n_t), 1)
    spoof = np.round(rng.normal(0.0, 1.0, n_s), 1)
    assert compute_eer(bonafide, spoof) == _reference_eer(bonafide, spoof)


def test_det_and_roc_curves_share_the_walk():
    curve = det_curve([0.3, 0.8, 0.9], [0.1, 0.5])
    np.testing.assert_allclose(curve.frr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.far, [1, 0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(curve.thresholds, [0.099, 0.1, 0.3, 0.5, 0.8, 0.9])
    with pytest.raises(ValueError, match="read-only"):
        curve.frr[0] = 1.0
    fpr, tpr, thresholds = roc_curve([0.3, 0.8, 0.9], [0.1, 0.5])
    np.testing.assert_array_equal(fpr, curve.far[::-1])
    np.testing.assert_array_equal(tpr, 1 - curve.frr[::-1])
    np.testing.assert_array_equal(thresholds, curve.thresholds[::-1])
    assert np.all(np.diff(fpr) >= 0)


@pytest.mark.parametrize(
    ("bonafide", "spoof", "message"),
    [
        ([], [0.1], "no bona fide scores"),
        ([0.1], [], "no spoof scores"),
        (
            [0.1, math.nan, math.inf],
            [0.0],
            r"2 of 3 bona fide scores are not finite \(1 NaN, 1 inf",
        ),
        ([0.1], [math.nan], r"1 of 1 spoof scores are not finite \(1 NaN, 0 inf"),
    ],
)
def test_validation_errors(bonafide, spoof, message):
    with pytest.raises(ValueError, match=message):
        compute_eer(bonafide, spoof)


# --- per-set, per-attack and pooled ----------------------------------------------------------


def test_per_attack_against_all_bona_fide():
    # Bona fide {0.9, 0.8, 0.6, 0.3}.
    # A01 {0.1, 0.2}: below every bona fide -> 0.
    # A02 {0.7, 0.1}: 0.1 s (0, 1/2); 0.3 t (1/4, 1/2); 0.6 t (1/2, 1/2) -> 0.5.
    # Overall adds an unlabelled spoof 0.95; sorted 0.1 s, 0.1 s, 0.2 s, 0.3 t, 0.6 t, 0.7 s, ...:
    #   (0, 4/5) (0, 3/5) (0, 2/5) (1/4, 2/5) (1/2, 2/5) (1/2, 1/5) ... -> (1/2 + 2/5) / 2 at 0.6.
    utts, scores = _set([0.9, 0.8, 0.6, 0.3], {"A01": [0.1, 0.2], "A02": [0.7, 0.1], None: [0.95]})
    result = evaluate(utts, scores, "dev")
    assert result.eer == pytest.approx(0.45)
    assert result.threshold == 0.6
    assert (result.n_bonafide, result.n_spoof) == (4, 5)
    assert result.per_attack == pytest.approx({"A01": 0.0, "A02": 0.5})
    assert list(result.per_attack) == ["A01", "A02"]
    assert result.metrics("encoder/dev") == {
        "encoder/dev/eer": result.eer,
        "encoder/dev/eer_A01": result.per_attack["A01"],
        "encoder/dev/eer_A02": result.per_attack["A02"],
    }


def test_evaluate_accepts_a_mapping_and_checks_coverage():
    utts, scores = _set([0.9, 0.8], {"A01": [0.1, 0.85]})
    by_id = {u.utt_id: s for u, s in zip(utts, scores, strict=True)} | {"unused": 0.0}
    assert evaluate(utts, by_id, "x") == evaluate(utts, scores, "x")
    del by_id["b0"], by_id["sA011"]
    with pytest.raises(
        ValueError, match=r"x: no score for 2 of 4 utterances, e.g. \['b0', 'sA011'\]"
    ):
        evaluate(utts, by_id, "x")
    with pytest.raises(ValueError, match="do not align with 4 utterances"):
        evaluate(utts, scores[:3], "x")


def test_evaluate_names_the_set_on_an_empty_class():
    utts, scores = _set([], {"A01": [0.1]})
    with pytest.raises(ValueError, match="itw: no bona fide scores"):
        evaluate(utts, scores, "itw")


def test_pooled_mean_and_pooled_all_differ():
    # Set a: bona fide {1, 2}, spoofs {0, 3}: 0 s (0, 1/2); 1 t (1/2, 1/2) -> EER 0.5.
    # Set b: bona fide {5, 6}, spoofs {4, 4.5}: separated -> EER 0.
    # Pooled trials: 0 s, 1 t, 2 t, 3 s, 4 s, 4.5 s, 5 t, 6 t over 4 + 4 trials:
    #   (0, 3/4) (1/4, 3/4) (1/2, 3/4) (1/2, 1/2) -> EER 0.5, while the mean of the sets is 0.25.
    set_a = _set([1.0, 2.0], {"A01": [0.0, 3.0]}, tag="a")
    set_b = _set([5.0, 6.0], {"A01": [4.0, 4.5]}, tag="b")
    results = [evaluate(*set_a, "a"), evaluate(*set_b, "b")]
    assert [r.eer for r in results] == [0.5, 0.0]
    assert pooled_mean(results) == 0.25
    assert pooled_all([class_scores(*set_a), class_scores(*set_b)]) == 0.5
    with pytest.raises(ValueError):
        pooled_mean([])


def test_set_result_metrics_without_attacks():
    result = SetResult(name="itw", eer=0.1, threshold=0.0, n_bonafide=1, n_spoof=1)
    assert result.metrics("eval/itw") == {"eval/itw/eer": 0.1}
