"""Equal error rate (EER) and score files, with the semantics of the official ASVspoof evaluation.

Conventions throughout: bona fide is the target (positive) class, a higher score means "more bona
fide", and EERs are fractions in [0, 1] (multiply by 100 for the percentages papers report).

The EER follows the ASVspoof 2021 evaluation package (``compute_det_curve`` / ``compute_eer``):
the DET curve is walked over every sorted score rather than over distinct thresholds, with no
interpolation, and tied scores are ordered target-first. That tie order is pessimistic: a scorer
that gives every trial the same value gets an EER of 1.0, not 0.5. Rounded scores create ties and
therefore inflate the EER, which is why :func:`write_scores` keeps full float precision.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from trainer.data.records import Utterance

SCORE_HEADER = ("utt_id", "score", "label", "attack", "key")
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


def _validated(scores: ArrayLike, what: str) -> np.ndarray:
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
    target = _validated(bonafide_scores, "bona fide")  # (T,)
    nontarget = _validated(spoof_scores, "spoof")  # (S,)
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


def _score_row(utt: Utterance, score: float) -> str:
    fields = (utt.utt_id, repr(float(score)), utt.label, utt.attack or "-", " ".join(utt.key))
    if any("\t" in f for f in fields):
        raise ValueError(f"{utt.utt_id!r}: a field contains a tab, which separates columns")
    return "\t".join(fields) + "\n"


def write_scores(
    path: str | os.PathLike[str], utterances: Sequence[Utterance], scores: Scores
) -> Path:
    """Write one TAB-separated row per utterance, in protocol order, and return the path.

    Columns: ``utt_id score label attack key``; ``attack`` is ``-`` when absent and ``key`` is the
    protocol's own columns joined by single spaces (In-the-Wild speaker names contain spaces, hence
    tabs between fields). Scores are written with ``repr`` and read back bit-identical. The file is
    written fresh to a temporary file beside ``path`` and renamed over it only after its row count
    has been checked against ``len(utterances)``, so a rerun never appends and a failure leaves no
    partial file (an existing file at ``path`` is then left as it was).
    """
    path = Path(path)
    ids = [u.utt_id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{len(ids) - len(set(ids))} duplicate utterance ids; refusing to write")
    rows = zip(utterances, aligned_scores(utterances, scores).tolist(), strict=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write("\t".join(SCORE_HEADER) + "\n")
            for utt, score in rows:
                handle.write(_score_row(utt, score))
            handle.flush()
            os.fsync(handle.fileno())
        with tmp.open(encoding="utf-8", newline="\n") as handle:
            n_rows = sum(1 for _ in handle) - 1
        if n_rows != len(utterances):
            raise ValueError(
                f"{path}: wrote {n_rows} rows for {len(utterances)} utterances "
                "(a field contains a line break?); file not written"
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_scores(path: str | os.PathLike[str]) -> dict[str, float]:
    """utt_id -> score from a file written by :func:`write_scores`, in file order.

    Rejects a wrong header, rows without five tab-separated fields, unparsable scores and repeated
    ids (the symptom of a score file appended to by a rerun), naming the line.
    """
    path = Path(path)
    out: dict[str, float] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="\n") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != SCORE_HEADER:
            raise ValueError(f"{path}:1: header {header} is not {list(SCORE_HEADER)}")
        for line_no, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(SCORE_HEADER):
                raise ValueError(
                    f"{path}:{line_no}: {len(fields)} fields, expected 5 (tab-separated)"
                )
            utt_id, score = fields[0], fields[1]
            if utt_id in out:
                raise ValueError(
                    f"{path}:{line_no}: duplicate utt_id {utt_id!r} (first on line "
                    f"{first_line[utt_id]})"
                )
            try:
                out[utt_id] = float(score)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: score {score!r} is not a number") from None
            first_line[utt_id] = line_no
    return out


# Bootstrap intervals of the official EER. A resample is a count per trial (how many copies of the
# trial it holds); its EER is read off one sort of the original scores, never a per-resample sort.

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
    target = _validated(bonafide_scores, "bona fide")  # (T,)
    nontarget = _validated(spoof_scores, "spoof")  # (S,)
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
        (_validated(b, f"{name}bona fide"), _validated(s, f"{name}spoof"))
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
    if bonafide_groups is None:
        walks = [_walk(b, s) for b, s in pairs]
        return _run_chunks(walks, n_boot, _plain_counts(n_t, n_s, seeds), chunk)
    groups_b, groups_s, n_groups = _group_ids(bonafide_groups, spoof_groups, n_t, n_s)
    walks = [_walk(b, s) for b, s in pairs]
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
