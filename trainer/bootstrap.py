"""Bootstrap intervals of the official ASVspoof EER (:func:`trainer.metrics.compute_eer`).

Contract: each replicate's EER is bit for bit :func:`~trainer.metrics.compute_eer` of that
resample (same walk, tie order and float operations); intervals are percentile intervals (Efron
& Tibshirani 1993, ch. 13). A resample is a count per trial (stratified by class, or clustered by
group); its EER is read off one sort of the original scores, never a per-resample sort.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from trainer.metrics import compute_eer, finite_scores

# Work arrays of one thread's chunk, (rows, N) int32 per system, stay near this size.
_CHUNK_BYTES = 64 * 2**20
# numpy releases the GIL in the heavy steps (draws, gathers, cumsums), so two threads nearly halve
# the wall time of large sets; replicates own their random streams, so results do not depend on
# the split. Below _THREADED_TRIALS per-call overhead dominates and threads only contend.
_THREADS = 2
_THREADED_TRIALS = 50_000
# Copies per class in one resample. Lets cumulative counts live in int32 (half the memory traffic)
# and CT * S + CS * T <= 2 * T * S in int64, and keeps one copy's step in FRR - FAR (>= 2**-31) far
# above float64 rounding, which the exactness relies on.
_MAX_COPIES = 2**31 - 1
# A cluster bootstrap whose replicates lack a class more often than this says more about the groups
# than about the system.
_MAX_NAN_SHARE = 0.1

# counts(replicate) -> int32 copies per trial, (T,) and (S,) in input order, shared by all systems.
_Counts = Callable[[int], tuple[np.ndarray, np.ndarray]]


class PairedDelta(NamedTuple):
    """EER_a - EER_b on the full data, and the percentile interval of its paired replicates."""

    delta: float
    low: float
    high: float

    @property
    def distinguishable(self) -> bool:
        """True when the interval excludes 0: the systems differ at the interval's level."""
        return not self.low <= 0.0 <= self.high


@dataclass(frozen=True)
class _Walk:
    """One system's trials in the order of the official walk (ascending, targets first on ties).

    ``target_order`` (T,) and ``spoof_order`` (S,) list each class's trial indices in that order;
    ``targets_upto`` and ``spoofs_upto`` (N,) count each class at walk items <= k, so with
    ``cum_t`` the copies of the first j targets, item k ends at CT = ``cum_t[targets_upto[k]]``.
    """

    target_order: np.ndarray
    spoof_order: np.ndarray
    targets_upto: np.ndarray
    spoofs_upto: np.ndarray
    is_target: np.ndarray


def _walk(target: np.ndarray, nontarget: np.ndarray) -> _Walk:
    order = np.argsort(np.concatenate([target, nontarget]), kind="mergesort")  # (N,)
    is_target = order < target.size  # (N,)
    return _Walk(
        target_order=order[is_target],
        spoof_order=order[~is_target] - target.size,
        targets_upto=np.cumsum(is_target),
        spoofs_upto=np.cumsum(~is_target),
        is_target=is_target,
    )


def _at(cum: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.take_along_axis(cum, cols[:, None], axis=1)[:, 0].astype(np.int64)  # (B,)


def _first_crossing(
    walk: _Walk, cum_t: np.ndarray, cum_s: np.ndarray, n_t: np.ndarray, n_s: np.ndarray
) -> np.ndarray:
    """(B,) the first walk item at whose end CT * S + CS * T >= T * S, i.e. FRR >= FAR.

    The last item always qualifies (CT = T, CS = S), so a binary search over items is exact.
    """
    lo = np.zeros(n_t.size, dtype=np.int64)
    hi = np.full(n_t.size, walk.is_target.size - 1, dtype=np.int64)
    for _ in range(int(walk.is_target.size).bit_length()):
        mid = (lo + hi) // 2
        ct = _at(cum_t, walk.targets_upto[mid])
        cs = _at(cum_s, walk.spoofs_upto[mid])
        crossed = ct * n_s + cs * n_t >= n_t * n_s
        hi = np.where(crossed, mid, hi)
        lo = np.where(crossed, lo, mid + 1)
    return hi


def _walk_eers(walk: _Walk, cum_t: np.ndarray, cum_s: np.ndarray) -> np.ndarray:
    """(B,) official EERs from walk-ordered cumulative counts (B, T + 1) and (B, S + 1).

    At copy level FRR - FAR = CT / T + CS / S - 1 rises strictly with every copy rejected, so the
    official first argmin of |FRR - FAR| is the last copy point below the diagonal or the first one
    on or above it, whichever is closer in float64 (the earlier on a tie). NaN if a class is empty.
    """
    empty = (cum_t[:, -1] == 0) | (cum_s[:, -1] == 0)  # (B,)
    n_t = np.where(empty, 1, cum_t[:, -1]).astype(np.int64)  # products below need int64
    n_s = np.where(empty, 1, cum_s[:, -1]).astype(np.int64)
    item = _first_crossing(walk, cum_t, cum_s, n_t, n_s)
    is_t = walk.is_target[item].astype(np.int64)  # (B,)
    # The crossing item holds copies of one class: start from the walk point just before it.
    ct0 = _at(cum_t, walk.targets_upto[item] - is_t)
    cs0 = _at(cum_s, walk.spoofs_upto[item] - (1 - is_t))
    step = np.where(is_t == 1, n_s, n_t)
    deficit = n_t * n_s - ct0 * n_s - cs0 * n_t  # > 0: that point is below the diagonal
    need = (deficit + step - 1) // step  # copies of the item it takes to cross, >= 1
    ct_after, cs_after = ct0 + need * is_t, cs0 + need * (1 - is_t)
    ct_before, cs_before = ct_after - is_t, cs_after - (1 - is_t)
    # The float operations of det_curve and compute_eer, so the EERs are bit-identical.
    frr_a, far_a = ct_after / n_t, (n_s - cs_after) / n_s
    frr_b, far_b = ct_before / n_t, (n_s - cs_before) / n_s
    after = np.abs(frr_a - far_a) < np.abs(frr_b - far_b)
    eers = (np.where(after, frr_a, frr_b) + np.where(after, far_a, far_b)) / 2
    eers[empty] = np.nan
    return eers


def _run_chunks(walks: list[_Walk], n_rows: int, counts: _Counts, chunk: int | None) -> np.ndarray:
    """(K, n_rows) EERs of every system for replicates 0..n_rows-1, chunks split over threads."""
    n_t, n_s = walks[0].target_order.size, walks[0].spoof_order.size
    if chunk is None:
        chunk = _CHUNK_BYTES // (4 * (n_t + n_s + 2) * len(walks))
    threads = _THREADS if n_t + n_s >= _THREADED_TRIALS else 1
    chunk = max(1, min(chunk, -(-n_rows // threads)))
    out = np.empty((len(walks), n_rows))  # (K, n_rows)

    def work(starts: range) -> None:
        # Buffers per thread, reused by all its chunks: fresh pages cost more than filling them.
        # Column 0 stays 0, so row[j] ends up as the copies among the first j trials of the walk.
        cums = [(np.zeros((chunk, n_t + 1), np.int32), np.zeros((chunk, n_s + 1), np.int32))]
        cums += [(np.zeros_like(cums[0][0]), np.zeros_like(cums[0][1])) for _ in walks[1:]]
        for start in starts:
            stop = min(start + chunk, n_rows)
            for i, replicate in enumerate(range(start, stop)):
                copies = counts(replicate)
                for walk, cum in zip(walks, cums, strict=True):
                    for side, order in enumerate((walk.target_order, walk.spoof_order)):
                        row = cum[side][i, 1:]
                        # mode="clip": the indices are valid, and "raise" copies through a buffer.
                        np.take(copies[side], order, out=row, mode="clip")
                        np.cumsum(row, out=row)
            for k, (cum_t, cum_s) in enumerate(cums):
                rows = slice(0, stop - start)
                out[k, start:stop] = _walk_eers(walks[k], cum_t[rows], cum_s[rows])

    starts = range(0, n_rows, chunk)
    if threads == 1:
        work(starts)
        return out
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [starts[i::threads] for i in range(threads)]))
    return out


def _validated_counts(counts: ArrayLike, n_trials: int, what: str) -> np.ndarray:
    values = np.asarray(counts)
    if values.ndim != 2 or values.shape[1] != n_trials:
        raise ValueError(f"{what} counts of shape {values.shape} are not (B, {n_trials})")
    if values.dtype.kind not in "iu":
        raise ValueError(f"{what} counts must be integers, got dtype {values.dtype}")
    if values.size and values.min() < 0:
        raise ValueError(f"{what} counts must be >= 0")
    if values.size and values.sum(axis=1, dtype=np.float64).max() > _MAX_COPIES:
        raise ValueError(f"a resample holds more than {_MAX_COPIES} {what} copies")
    return values.astype(np.int32)


def eer_of_resamples(
    bonafide_scores: ArrayLike,
    spoof_scores: ArrayLike,
    bonafide_counts: ArrayLike,
    spoof_counts: ArrayLike,
) -> np.ndarray:
    """(B,) official EERs of B resamples given as per-trial multiplicities.

    ``bonafide_counts`` (B, T) and ``spoof_counts`` (B, S) are non-negative integers: row b holds
    trial i ``counts[b, i]`` times. Row b's EER equals, bit for bit,
    ``compute_eer(np.repeat(bonafide, bonafide_counts[b]), np.repeat(spoof, spoof_counts[b]))[0]``
    (tie order and float operations included); a row with no bona fide or no spoof copy is NaN.
    Cost O(B * (T + S)) after one sort, with no per-resample sort.
    """
    target = finite_scores(bonafide_scores, "bona fide")  # (T,)
    nontarget = finite_scores(spoof_scores, "spoof")  # (S,)
    counts_b = _validated_counts(bonafide_counts, target.size, "bona fide")  # (B, T)
    counts_s = _validated_counts(spoof_counts, nontarget.size, "spoof")  # (B, S)
    if counts_b.shape[0] != counts_s.shape[0]:
        raise ValueError(f"{counts_b.shape[0]} bona fide but {counts_s.shape[0]} spoof resamples")
    if counts_b.shape[0] == 0:
        return np.empty(0)
    walk = _walk(target, nontarget)

    def given(replicate: int) -> tuple[np.ndarray, np.ndarray]:
        return counts_b[replicate], counts_s[replicate]

    return _run_chunks([walk], counts_b.shape[0], given, None)[0]


def _validated_systems(
    systems: Sequence[tuple[ArrayLike, ArrayLike]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(systems) == 0:
        raise ValueError("no systems to bootstrap")
    names = [""] if len(systems) == 1 else [f"system {k} " for k in range(len(systems))]
    out = [
        (finite_scores(b, f"{name}bona fide"), finite_scores(s, f"{name}spoof"))
        for name, (b, s) in zip(names, systems, strict=True)
    ]
    sizes = [(b.size, s.size) for b, s in out]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"systems have (bona fide, spoof) trial counts {sizes}; paired systems must be "
            "scored on the same trials, in the same order"
        )
    return out


def _plain_counts(n_t: int, n_s: int, seeds: list[np.random.SeedSequence]) -> _Counts:
    """Stratified resamples: T bona fide and S spoof trial indices drawn with replacement."""

    def counts(replicate: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seeds[replicate])
        draws_b = rng.integers(0, n_t, size=n_t)  # (T,) trial indices
        draws_s = rng.integers(0, n_s, size=n_s)  # (S,)
        return (
            np.bincount(draws_b, minlength=n_t).astype(np.int32),
            np.bincount(draws_s, minlength=n_s).astype(np.int32),
        )

    return counts


def _group_ids(
    bonafide_groups: ArrayLike, spoof_groups: ArrayLike, n_t: int, n_s: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(T,) and (S,) group indices in [0, G), and G, from any hashable group labels."""
    labels = [*np.asarray(bonafide_groups, dtype=object).ravel()]
    spoof_labels = [*np.asarray(spoof_groups, dtype=object).ravel()]
    if len(labels) != n_t or len(spoof_labels) != n_s:
        raise ValueError(
            f"{len(labels)} bona fide and {len(spoof_labels)} spoof group labels for {n_t} bona "
            f"fide and {n_s} spoof scores; groups must align with the scores"
        )
    index: dict[Hashable, int] = {}
    ids = np.array([index.setdefault(g, len(index)) for g in labels + spoof_labels], np.int64)
    largest = max(np.bincount(ids[:n_t]).max(), np.bincount(ids[n_t:]).max())
    if len(index) * largest > _MAX_COPIES:
        raise ValueError(f"{len(index)} groups of up to {largest} trials: resamples too large")
    return ids[:n_t], ids[n_t:], len(index)


def _cluster_counts(
    groups_b: np.ndarray, groups_s: np.ndarray, n_groups: int, seeds: list[np.random.SeedSequence]
) -> _Counts:
    """Cluster resamples: G groups drawn with replacement; a trial counts its group's draws."""

    def counts(replicate: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seeds[replicate])
        draws = rng.integers(0, n_groups, size=n_groups)  # (G,) group indices
        drawn = np.bincount(draws, minlength=n_groups).astype(np.int32)  # (G,)
        return drawn[groups_b], drawn[groups_s]

    return counts


def bootstrap_eers(
    systems: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    bonafide_groups: ArrayLike | None = None,
    spoof_groups: ArrayLike | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """(K, n_boot) official EERs (see :func:`eer_of_resamples`) of K systems on shared resamples.

    ``systems`` holds K (bona fide scores, spoof scores) pairs scored on the same trials in the
    same order, so replicate r resamples the same trials for every system (a paired bootstrap).
    Without groups the bootstrap is stratified: each replicate draws T bona fide and S spoof
    trials with replacement, so the class sizes are fixed. With ``bonafide_groups`` (T,) and
    ``spoof_groups`` (S,) (any hashable labels, e.g. speakers; a group may hold both classes) it
    is a cluster bootstrap: each replicate draws G of the G groups with replacement and a trial
    appears as often as its group was drawn (groups are numbered in order of first appearance,
    bona fide labels first). A replicate left without one class is NaN; over 10% of them raises
    ``ValueError``. Replicate r draws from the r-th child of ``np.random.SeedSequence(seed)``, so
    the result does not depend on ``chunk`` (replicates per chunk, a memory bound) or threads, and
    separate calls with one seed resample the same trials: their replicates are paired too.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if (bonafide_groups is None) != (spoof_groups is None):
        raise ValueError("give both bonafide_groups and spoof_groups, or neither")
    pairs = _validated_systems(systems)
    n_t, n_s = pairs[0][0].size, pairs[0][1].size
    seeds = np.random.SeedSequence(seed).spawn(n_boot)
    walks = [_walk(b, s) for b, s in pairs]
    if bonafide_groups is None:
        return _run_chunks(walks, n_boot, _plain_counts(n_t, n_s, seeds), chunk)
    groups_b, groups_s, n_groups = _group_ids(bonafide_groups, spoof_groups, n_t, n_s)
    eers = _run_chunks(walks, n_boot, _cluster_counts(groups_b, groups_s, n_groups, seeds), chunk)
    n_nan = int(np.isnan(eers[0]).sum())
    if n_nan > _MAX_NAN_SHARE * n_boot:
        raise ValueError(
            f"{n_nan} of {n_boot} cluster resamples lack a class: too few groups with each class "
            f"for a cluster bootstrap ({np.unique(groups_b).size} of {n_groups} groups hold bona "
            f"fide trials, {np.unique(groups_s).size} hold spoof trials)"
        )
    return eers


def percentile_interval(values: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``values`` (all entries pooled), NaNs ignored.

    Returns the ``(1 - level) / 2`` and ``1 - (1 - level) / 2`` quantiles (numpy's default linear
    interpolation). Raises ``ValueError`` when no value is finite or ``level`` is outside (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(flat).any():
        raise ValueError("no finite values to take an interval of")
    tail = (1.0 - level) / 2
    low, high = np.nanquantile(flat, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_eer_ci(
    bonafide_scores: ArrayLike,
    spoof_scores: ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    bonafide_groups: ArrayLike | None = None,
    spoof_groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the official ASVspoof EER of one system.

    The ``(1 - level) / 2`` and ``1 - (1 - level) / 2`` quantiles of ``n_boot`` replicate EERs
    (Efron & Tibshirani 1993, ch. 13). Each replicate's EER is exactly what :func:`compute_eer`
    gives on that resample: first argmin of |FRR - FAR| over the walk, targets first on ties, no
    interpolation. Without groups the resampling is stratified by class (see
    :func:`bootstrap_eers`), which assumes independent trials. Trials of one speaker share
    voice, channel and content, so their scores are correlated and the stratified interval is
    too narrow; pass speaker labels as groups to resample whole speakers (a cluster bootstrap).
    In-the-Wild (Müller et al. 2022) has ~32k trials from only 58 speakers: its cluster interval
    is much wider, and it is the honest one.
    """
    eers = bootstrap_eers(
        [(bonafide_scores, spoof_scores)],
        n_boot=n_boot,
        seed=seed,
        bonafide_groups=bonafide_groups,
        spoof_groups=spoof_groups,
    )
    return percentile_interval(eers[0], level)


def paired_bootstrap_delta(
    scores_a: tuple[ArrayLike, ArrayLike],
    scores_b: tuple[ArrayLike, ArrayLike],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    bonafide_groups: ArrayLike | None = None,
    spoof_groups: ArrayLike | None = None,
) -> PairedDelta:
    """EER_a - EER_b with a paired percentile bootstrap interval.

    ``scores_a`` and ``scores_b`` are (bona fide, spoof) scores of two systems on the same trials
    in the same order. Both are evaluated on every resample (stratified, or clustered with
    groups, as in :func:`bootstrap_eers`) and the interval is the percentile interval of the
    per-replicate differences, so the trial difficulty both systems share cancels: when their
    errors are correlated the interval is much narrower than two separate intervals suggest.
    ``delta`` uses :func:`compute_eer` on the full data; a system against itself gives exactly
    ``PairedDelta(0.0, 0.0, 0.0)``.
    """
    eers = bootstrap_eers(
        [scores_a, scores_b],
        n_boot=n_boot,
        seed=seed,
        bonafide_groups=bonafide_groups,
        spoof_groups=spoof_groups,
    )
    low, high = percentile_interval(eers[0] - eers[1], level)
    delta = compute_eer(*scores_a)[0] - compute_eer(*scores_b)[0]
    return PairedDelta(delta=delta, low=low, high=high)
