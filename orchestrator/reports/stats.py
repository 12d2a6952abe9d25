"""Seed-aware intervals for a confirmation: a configuration's mean EER over seeds, and the
difference between two configurations, with both sources of variation a paper's claim has.

A run's EER on a test set varies with its training seed and with the test set itself (which
utterances and speakers were drawn). Model, for run r of configuration c on set T::

    EER(c, r, T) = mu_c + a(c, r) + b(c, T) + e(c, r, T)

``a``: the seed's effect (several ITW points for this model); ``b``: the test set's effect on
configuration c, the same for all its seeds (hard speakers; largely shared between
configurations on one test set); ``e``: the test set's effect particular to one trained model.
The mean over n seeds estimates ``mu_c`` with variance ``(var a + var e) / n + var b``.

- ``var a + var e`` is the sample variance of the n seeds' EERs on the one test set
  (``b`` is constant across them).
- ``var b`` is not visible across seeds; a paired bootstrap of the test set (speakers resampled
  where the set has them) shows it: at resample k, each run's replicate deviates from its own
  mean by ``beta(c, k) + eps(r, k)``; the variance over resamples of the seed-mean of those
  deviations is ``var beta + var eps / n``, and the spread across a configuration's runs at one
  resample is ``var eps``. So ``var b`` is estimated as the first minus the second over n,
  clipped at 0 (counting ``var e`` twice would make the verdict needlessly conservative).

The interval is t-based: ``mean +- t(df) * se`` with ``df = n - 1`` for a configuration, and
for a difference of means the Welch-Satterthwaite df of the seed terms (the bootstrap term is
treated as known). A bootstrap over 3 seeds would be too narrow (it can only reproduce the 3
values seen). Fewer than 2 seeds per configuration gives no interval and no verdict. The error
rate and power of the verdict under seed and speaker variation are simulated in
``tests/orchestrator/test_confirm_statistics.py`` (README: the figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A configuration's mean over its seeds, and its ``level`` interval (NaN bounds when it
    has fewer than 2 seeds)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """``delta`` = the best configuration's mean EER over seeds minus another's, with its
    ``level`` interval; ``seed_se`` and ``test_se`` are the two parts of its standard error.
    ``verdict``: ``distinguishable`` (the interval excludes 0), ``not distinguishable``, or
    ``no verdict`` (a configuration with fewer than 2 seeds)."""

    delta: float
    low: float
    high: float
    df: float
    seed_se: float
    test_se: float

    @property
    def decided(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def distinguishable(self) -> bool:
        return self.decided and not self.low <= 0.0 <= self.high

    @property
    def verdict(self) -> str:
        if not self.decided:
            return "no verdict"
        return "distinguishable" if self.distinguishable else "not distinguishable"


def deviations(replicates: np.ndarray) -> np.ndarray:
    """(n_runs, n_boot) each run's bootstrap replicates minus their own mean (NaNs kept)."""
    reps = np.asarray(replicates, dtype=np.float64)
    return reps - np.nanmean(reps, axis=1, keepdims=True)


def _test_variance(devs: list[np.ndarray], signs: list[float]) -> float:
    """var of ``sum(sign * seed-mean of devs)`` over resamples, less each configuration's
    model-specific part (its runs' spread at one resample, over its n runs); >= 0."""
    combined = sum(s * np.nanmean(d, axis=0) for s, d in zip(signs, devs, strict=True))
    total = float(np.nanvar(combined, ddof=1))
    own = sum(float(np.nanmean(np.nanvar(d, axis=0, ddof=1))) / d.shape[0] for d in devs)
    return max(0.0, total - own)


def interval(values: np.ndarray, devs: np.ndarray, level: float = 0.95) -> Interval:
    """A configuration's mean of ``values`` (its n runs' EERs) with a t interval whose variance
    is the seeds' (``var / n``) plus the test set's shared part, from ``devs`` (n, n_boot)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return Interval(float(x.mean()) if n else math.nan, math.nan, math.nan, n)
    se = math.sqrt(x.var(ddof=1) / n + _test_variance([devs], [1.0]))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * se
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half), n)


def compare(
    best: np.ndarray,
    other: np.ndarray,
    best_devs: np.ndarray,
    other_devs: np.ndarray,
    level: float = 0.95,
) -> Comparison:
    """``mean(best) - mean(other)`` with its seed-aware ``level`` interval (see the module)."""
    a, b = np.asarray(best, dtype=np.float64), np.asarray(other, dtype=np.float64)
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Comparison(delta, math.nan, math.nan, math.nan, math.nan, math.nan)
    seed_a, seed_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    test = _test_variance([best_devs, other_devs], [1.0, -1.0])
    var = seed_a + seed_b + test
    seed_terms = seed_a**2 / (a.size - 1) + seed_b**2 / (b.size - 1)
    df = var**2 / seed_terms if seed_terms > 0 else math.inf
    se = math.sqrt(var)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    return Comparison(
        delta, delta - half, delta + half, df, math.sqrt(seed_a + seed_b), math.sqrt(test)
    )
