from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.bootstrap import (
    PairedDelta,
    bootstrap_eer_ci,
    bootstrap_eers,
    eer_of_resamples,
    paired_bootstrap_delta,
    percentile_interval,
)
from trainer.metrics import compute_eer


def _gaussian(rng: np.random.Generator, n_t: int, n_s: int, mu: float = 2.0):
    return rng.normal(mu, 1.0, n_t), rng.normal(0.0, 1.0, n_s)


def _loop_eers(bonafide, spoof, counts_b, counts_s) -> np.ndarray:
    """The plain reference: build every resample with np.repeat and run the official EER."""
    out = []
    for row_b, row_s in zip(counts_b, counts_s, strict=True):
        copies_b, copies_s = np.repeat(bonafide, row_b), np.repeat(spoof, row_s)
        empty = copies_b.size == 0 or copies_s.size == 0
        out.append(np.nan if empty else compute_eer(copies_b, copies_s)[0])
    return np.array(out)


def _assert_bitwise(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    # ``==`` on floats, not isclose: the contract is bit-identical EERs.
    assert (got[~np.isnan(want)] == want[~np.isnan(want)]).all()


def _case(kind: str, rng: np.random.Generator):
    """(bona fide, spoof, counts_b, counts_s) of one randomised parity case."""
    n_t, n_s, rows = int(rng.integers(1, 40)), int(rng.integers(1, 40)), 6
    bonafide, spoof = _gaussian(rng, n_t, n_s, mu=1.0)
    counts_b = rng.integers(0, 4, (rows, n_t))
    counts_s = rng.integers(0, 4, (rows, n_s))
    if kind == "tied":  # a handful of distinct values: long runs of ties across classes
        bonafide, spoof = np.round(bonafide), np.round(spoof)
    elif kind == "tiny":
        bonafide = bonafide[:1]
        counts_b = rng.integers(0, 3, (rows, 1))
    elif kind == "cluster":  # whole groups in or out, a group's count repeated on its trials
        n_groups = 5
        drawn = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=rows)
        counts_b = drawn[:, rng.integers(0, n_groups, n_t)]
        counts_s = drawn[:, rng.integers(0, n_groups, n_s)]
    return bonafide, spoof, counts_b, counts_s


@pytest.mark.parametrize("kind", ["plain", "tied", "tiny", "cluster"])
def test_eer_of_resamples_matches_the_official_eer_bit_for_bit(kind: str) -> None:
    rng = np.random.default_rng(["plain", "tied", "tiny", "cluster"].index(kind))
    for _ in range(40):
        bonafide, spoof, counts_b, counts_s = _case(kind, rng)
        got = eer_of_resamples(bonafide, spoof, counts_b, counts_s)
        _assert_bitwise(got, _loop_eers(bonafide, spoof, counts_b, counts_s))


def test_tie_order_changes_the_eer_so_the_parity_test_can_fail() -> None:
    # Negative control: ties broken spoof-first (bona fide nudged up one ulp) give other EERs on
    # the tied cases, so a walk with the wrong tie order would fail the parity test above.
    rng = np.random.default_rng(1)
    n_differ = 0
    for _ in range(40):
        bonafide, spoof, counts_b, counts_s = _case("tied", rng)
        got = eer_of_resamples(bonafide, spoof, counts_b, counts_s)
        nudged = _loop_eers(np.nextafter(bonafide, np.inf), spoof, counts_b, counts_s)
        n_differ += int((got != nudged)[~np.isnan(got)].sum())
    assert n_differ > 20
    bonafide, spoof = _gaussian(np.random.default_rng(2), 300, 300, mu=1.0)
    # Ties are ordered target-first, the pessimistic corner: rounding raises the EER.
    tied = compute_eer(np.round(bonafide), np.round(spoof))[0]
    assert tied > compute_eer(bonafide, spoof)[0] + 0.02


def test_eer_of_resamples_with_unit_counts_is_compute_eer() -> None:
    bonafide, spoof = _gaussian(np.random.default_rng(3), 200, 700)
    got = eer_of_resamples(bonafide, spoof, np.ones((1, 200), int), np.ones((1, 700), int))
    assert got[0] == compute_eer(bonafide, spoof)[0]


@pytest.mark.parametrize(("n_t", "n_s", "chunk"), [(30, 90, None), (2_000, 50_000, 1)])
def test_bootstrap_replicates_are_the_documented_resamples(
    n_t: int, n_s: int, chunk: int | None
) -> None:
    """Replicate r of the stratified bootstrap is the r-th SeedSequence child's index draw.

    The large case runs the two-thread path, one replicate per chunk.
    """
    bonafide, spoof = _gaussian(np.random.default_rng(4), n_t, n_s, mu=1.0)
    bonafide, spoof = np.round(bonafide, 1), np.round(spoof, 1)
    eers = bootstrap_eers([(bonafide, spoof)], n_boot=9, seed=7, chunk=chunk)
    want = []
    for child in np.random.SeedSequence(7).spawn(9):
        rng = np.random.default_rng(child)
        draws_b, draws_s = rng.integers(0, n_t, size=n_t), rng.integers(0, n_s, size=n_s)
        want.append(compute_eer(bonafide[draws_b], spoof[draws_s])[0])
    _assert_bitwise(eers[0], np.array(want))


def test_cluster_replicates_are_the_documented_resamples() -> None:
    rng = np.random.default_rng(5)
    bonafide, spoof = _gaussian(rng, 40, 60, mu=1.0)
    labels = np.array(["ann", "bob", "cy", "dee", "eve", "fay"])
    groups_b, groups_s = labels[rng.integers(0, 6, 40)], labels[rng.integers(0, 6, 60)]
    eers = bootstrap_eers(
        [(bonafide, spoof)], n_boot=30, seed=3, bonafide_groups=groups_b, spoof_groups=groups_s
    )
    # Groups are numbered in order of first appearance, bona fide labels first.
    first_seen = list(dict.fromkeys([*groups_b, *groups_s]))
    ids_b = np.array([first_seen.index(g) for g in groups_b])
    ids_s = np.array([first_seen.index(g) for g in groups_s])
    counts_b, counts_s = [], []
    for child in np.random.SeedSequence(3).spawn(30):
        drawn = np.bincount(np.random.default_rng(child).integers(0, 6, size=6), minlength=6)
        counts_b.append(drawn[ids_b])
        counts_s.append(drawn[ids_s])
    _assert_bitwise(eers[0], _loop_eers(bonafide, spoof, counts_b, counts_s))


def test_bootstrap_does_not_depend_on_chunk_size() -> None:
    bonafide, spoof = _gaussian(np.random.default_rng(6), 100, 300)
    systems = [(bonafide, spoof), (bonafide + 0.3, spoof)]
    whole = bootstrap_eers(systems, n_boot=40, seed=1)
    assert whole.shape == (2, 40)
    assert np.array_equal(whole, bootstrap_eers(systems, n_boot=40, seed=1, chunk=3))
    assert not np.array_equal(whole, bootstrap_eers(systems, n_boot=40, seed=2))


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_interval_contains_the_point_estimate(data_seed: int) -> None:
    rng = np.random.default_rng(data_seed)
    bonafide, spoof = _gaussian(rng, 150 * (data_seed + 1), 900, mu=1.0 + data_seed)
    low, high = bootstrap_eer_ci(bonafide, spoof, n_boot=400, seed=data_seed)
    assert low < compute_eer(bonafide, spoof)[0] < high


def _mean_width(n: int, seeds: range, **groups) -> float:
    widths = []
    for seed in seeds:
        bonafide, spoof = _gaussian(np.random.default_rng(seed), n, n, mu=1.5)
        low, high = bootstrap_eer_ci(bonafide, spoof, n_boot=300, seed=seed)
        widths.append(high - low)
    return float(np.mean(widths))


def test_interval_halves_when_the_set_grows_fourfold() -> None:
    ratio = _mean_width(1600, range(6)) / _mean_width(400, range(6))
    assert 0.35 < ratio < 0.65


def test_percentile_interval_covers_the_true_eer() -> None:
    # Bona fide ~ N(mu, 1) and spoof ~ N(0, 1) cross at mu / 2, so the true EER is Phi(-mu / 2).
    mu = 2.0
    true_eer = 0.5 * (1.0 + math.erf(-mu / 2 / math.sqrt(2.0)))
    covered = 0
    for rep in range(100):
        bonafide, spoof = _gaussian(np.random.default_rng(1000 + rep), 1000, 1000, mu=mu)
        low, high = bootstrap_eer_ci(bonafide, spoof, n_boot=500, seed=rep)
        covered += low <= true_eer <= high
    assert covered >= 88


def _speaker_set(seed: int, n_speakers: int = 20, per_class: int = 30):
    """Scores with a per-speaker offset shared by both classes: trials are not independent."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, 1.5, n_speakers)
    speakers = np.repeat(np.arange(n_speakers), per_class)  # (n_speakers * per_class,)
    bonafide = rng.normal(2.0, 1.0, speakers.size) + offsets[speakers]
    spoof = rng.normal(0.0, 1.0, speakers.size) + offsets[speakers]
    return bonafide, spoof, speakers


def test_cluster_interval_is_wider_when_speakers_correlate_scores() -> None:
    plain, cluster = [], []
    for seed in range(4):
        bonafide, spoof, speakers = _speaker_set(seed)
        low, high = bootstrap_eer_ci(bonafide, spoof, n_boot=300, seed=seed)
        plain.append(high - low)
        low, high = bootstrap_eer_ci(
            bonafide,
            spoof,
            n_boot=300,
            seed=seed,
            bonafide_groups=[f"spk{s}" for s in speakers],
            spoof_groups=[f"spk{s}" for s in speakers],
        )
        cluster.append(high - low)
    assert np.mean(cluster) > 1.5 * np.mean(plain)


def test_paired_delta_of_a_system_with_itself_is_exactly_zero() -> None:
    bonafide, spoof = _gaussian(np.random.default_rng(8), 200, 600)
    result = paired_bootstrap_delta((bonafide, spoof), (bonafide, spoof), n_boot=200)
    assert result == PairedDelta(0.0, 0.0, 0.0)
    assert not result.distinguishable


def _correlated_pair(seed: int):
    """System b = system a plus a little noise: the two share nearly all trial difficulty."""
    rng = np.random.default_rng(seed)
    a = _gaussian(rng, 400, 1200, mu=1.5)
    b = (a[0] + rng.normal(0.0, 0.3, 400), a[1] + rng.normal(0.0, 0.3, 1200))
    return a, b


def test_paired_delta_is_the_full_data_difference_with_a_narrower_interval() -> None:
    paired_widths, unpaired_widths = [], []
    for seed in range(4):
        a, b = _correlated_pair(seed)
        result = paired_bootstrap_delta(a, b, n_boot=300, seed=seed)
        assert result.delta == compute_eer(*a)[0] - compute_eer(*b)[0]
        assert result.low <= result.delta <= result.high
        paired_widths.append(result.high - result.low)
        # Unpaired: two independent intervals (different seeds); widths add in quadrature for
        # the difference of independent estimates.
        low_a, high_a = bootstrap_eer_ci(*a, n_boot=300, seed=seed)
        low_b, high_b = bootstrap_eer_ci(*b, n_boot=300, seed=seed + 100)
        unpaired_widths.append(math.hypot(high_a - low_a, high_b - low_b))
    assert np.mean(paired_widths) < 0.75 * np.mean(unpaired_widths)


def test_paired_delta_flags_a_clearly_better_system() -> None:
    a = _gaussian(np.random.default_rng(9), 500, 1500, mu=1.0)
    b = (a[0] + 1.0, a[1])  # same trials, bona fide pushed away from the spoofs
    result = paired_bootstrap_delta(a, b, n_boot=200)
    assert result.delta > 0 and result.low > 0 and result.distinguishable


def test_percentile_interval_ignores_nan_and_checks_level() -> None:
    values = np.concatenate([np.arange(101.0), [np.nan] * 5])
    assert percentile_interval(values, level=0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(values, level=1.0)
    with pytest.raises(ValueError, match="no finite"):
        percentile_interval([np.nan, np.nan])


def test_bad_inputs_are_rejected_with_a_clear_message() -> None:
    bonafide, spoof = _gaussian(np.random.default_rng(10), 20, 30)
    with pytest.raises(ValueError, match="same trials"):
        bootstrap_eers([(bonafide, spoof), (bonafide[:-1], spoof)], n_boot=5)
    with pytest.raises(ValueError, match="1 of 20 bona fide scores are not finite"):
        bootstrap_eer_ci(np.where(np.arange(20) == 3, np.nan, bonafide), spoof, n_boot=5)
    with pytest.raises(ValueError, match="no spoof"):
        bootstrap_eer_ci(bonafide, [], n_boot=5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_eer_ci(bonafide, spoof, n_boot=0)
    with pytest.raises(ValueError, match="align"):
        bootstrap_eer_ci(bonafide, spoof, n_boot=5, bonafide_groups=[0] * 19, spoof_groups=[0] * 30)
    with pytest.raises(ValueError, match="both"):
        bootstrap_eer_ci(bonafide, spoof, n_boot=5, bonafide_groups=[0] * 20)
    with pytest.raises(ValueError, match=r"\(B, 30\)"):
        eer_of_resamples(bonafide, spoof, np.ones((2, 20), int), np.ones((2, 29), int))
    with pytest.raises(ValueError, match=">= 0"):
        eer_of_resamples(bonafide, spoof, -np.ones((2, 20), int), np.ones((2, 30), int))


def test_too_few_groups_with_each_class_is_an_error() -> None:
    # All spoofs come from one of 8 speakers: a third of the resamples miss that speaker.
    bonafide, spoof = _gaussian(np.random.default_rng(11), 80, 30)
    with pytest.raises(ValueError, match=r"8 of 8 groups hold bona fide trials, 1 hold spoof"):
        bootstrap_eer_ci(
            bonafide,
            spoof,
            n_boot=100,
            bonafide_groups=np.arange(80) % 8,
            spoof_groups=np.zeros(30, int),
        )
