"""A confirmation's summary: each configuration's EERs over its seeds with a seed-aware interval,
and whether the best one is distinguishable from each other one (:mod:`orchestrator.reports.stats`:
the seeds' spread plus the test set's, from a paired bootstrap over the same utterances).

By default the seeds are the fresh ones the confirmation ran: the sweep trial was selected as a
winner on the metric that ranks it (a winner's curse), so it is shown apart and is not one of
them; ``include_sweep_trial`` counts it as one more seed.

Pure computation (numpy, scipy): the runs' metrics and scores come in, a :class:`Summary` goes
out, with its MLflow metrics; :mod:`orchestrator.reports.confirm_output` writes its table,
Markdown, JSON and plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.reports.stats import Comparison, Interval, compare, deviations, interval
from trainer.bootstrap import bootstrap_eers
from trainer.data.records import Utterance
from trainer.evaluate import speaker_groups

STATS = ("mean", "std", "min", "max")
SHOWN_PARAMS = ("loss.similarity", "loss.temperature", "queue.size", "queue.start_epoch")
POOLED = "eval/pooled_mean/eer"

# (run id, set name) -> utt_id -> score: how the summary reads a run's score file.
ScoreReader = Callable[[str, str], Mapping[str, float]]


@dataclass(frozen=True)
class SeedRun:
    """One run of a configuration: its MLflow run, seed and final metrics."""

    run_id: str
    seed: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class ConfigRuns:
    """A configuration: the runs its statistics are over (one per seed), and the sweep trial
    that found it when it is shown apart (None when it is one of ``runs``, or missing)."""

    config_id: str
    sweep_rank: int
    params: Mapping[str, Any]
    runs: tuple[SeedRun, ...]
    sweep_trial: SeedRun | None = None


@dataclass(frozen=True)
class Summary:
    """Per configuration (best first, by the mean of ``metric`` over its seeds), each key's stats
    over seeds and each EER's seed-aware interval; ``deltas[config_id][key]``: the best
    configuration's mean EER minus that one's, on one set (or the pooled mean)."""

    metric: str
    mode: str
    level: float
    configs: tuple[ConfigRuns, ...]
    stats: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)
    deltas: dict[str, dict[str, Comparison]] = field(default_factory=dict)

    @property
    def best(self) -> ConfigRuns:
        return self.configs[0]


def seed_stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1; NaN for one seed), min, max and n."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return {
        "mean": float(v.mean()),
        "std": std,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": v.size,
    }


def _keys(sets: Sequence[str], metric: str) -> list[str]:
    keys = [f"eval/{s}/eer" for s in sets] + [POOLED, "eval/pooled_all/eer"]
    return keys + ([metric] if metric not in keys else [])


def _stats(config: ConfigRuns, keys: Sequence[str]) -> dict[str, dict[str, float]]:
    out = {}
    for key in keys:
        values = [r.metrics[key] for r in config.runs if key in r.metrics]
        if values:
            out[key] = seed_stats(values)
    return out


def _class_arrays(
    utterances: Sequence[Utterance], scores: Mapping[str, float], what: str
) -> np.ndarray:
    missing = [u.utt_id for u in utterances if u.utt_id not in scores]
    if missing:
        raise ValueError(f"{what}: no score for {len(missing)} utterance(s), e.g. {missing[:3]}")
    return np.array([scores[u.utt_id] for u in utterances], dtype=np.float64)  # (N,)


def _set_replicates(
    runs: Sequence[SeedRun],
    name: str,
    utterances: Sequence[Utterance],
    read: ScoreReader,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """(len(runs), n_boot) EERs of each run on the same resamples of set ``name``: speakers
    resampled where the corpus has them (cluster bootstrap), else trials per class."""
    is_bona = np.array([u.is_bonafide for u in utterances])  # (N,)
    systems = []
    for run in runs:
        scores = read(run.run_id, name)
        values = _class_arrays(utterances, scores, f"run {run.run_id}, set {name}")
        systems.append((values[is_bona], values[~is_bona]))
    groups = speaker_groups(utterances)
    kwargs = {}
    if groups is not None:
        kwargs = {"bonafide_groups": groups[is_bona], "spoof_groups": groups[~is_bona]}
    try:
        return bootstrap_eers(systems, n_boot=n_boot, seed=seed, **kwargs)
    except ValueError:
        if not kwargs:
            raise
        return bootstrap_eers(systems, n_boot=n_boot, seed=seed)  # too few speakers per class


def _deviations(
    runs: Sequence[SeedRun],
    sets: Mapping[str, Sequence[Utterance]],
    read: ScoreReader,
    n_boot: int,
) -> dict[str, np.ndarray]:
    """Per set key (and the pooled mean: the mean of the sets'), (len(runs), n_boot): each
    run's bootstrap replicates around their own mean, every run on the same resamples."""
    out = {
        f"eval/{name}/eer": deviations(_set_replicates(runs, name, utts, read, n_boot, seed=i))
        for i, (name, utts) in enumerate(sets.items())
    }
    if out:
        out[POOLED] = np.mean(list(out.values()), axis=0)
    return out


def _values(runs: Sequence[SeedRun], key: str) -> np.ndarray:
    return np.array([r.metrics[key] for r in runs], dtype=np.float64)


def summarise(
    configs: Sequence[ConfigRuns],
    sets: Mapping[str, Sequence[Utterance]],
    read: ScoreReader,
    metric: str,
    mode: str,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
) -> Summary:
    """Rank ``configs`` by their mean ``metric`` over seeds (the sweep's selection metric, a
    dev figure), give each evaluation set's (and the pooled mean's) EER a seed-aware interval,
    and compare the best with each other (:mod:`orchestrator.reports.stats`). Each set is
    resampled once for every run of every configuration, so all comparisons share their
    resamples. A configuration's sweep trial shown apart takes part in none of it."""
    keys = _keys(list(sets), metric)
    stats = {c.config_id: _stats(c, keys) for c in configs}
    sign = 1.0 if mode == "min" else -1.0

    def order(c: ConfigRuns) -> tuple[float, int]:
        mean = stats[c.config_id].get(metric, {}).get("mean", math.nan)
        return (sign * mean if math.isfinite(mean) else math.inf, c.sweep_rank)

    ranked = tuple(sorted(configs, key=order))
    scored = [c for c in ranked if c.runs and all(POOLED in r.metrics for r in c.runs)]
    runs = [r for c in scored for r in c.runs]
    devs = _deviations(runs, sets, read, n_boot) if runs else {}
    rows, start = {}, 0
    for c in scored:
        rows[c.config_id] = slice(start, start + len(c.runs))
        start += len(c.runs)
    intervals = {
        c.config_id: {
            k: interval(_values(c.runs, k), d[rows[c.config_id]], level) for k, d in devs.items()
        }
        for c in scored
    }
    deltas = {}
    if scored:
        best = scored[0]
        deltas = {
            c.config_id: {
                k: compare(
                    _values(best.runs, k),
                    _values(c.runs, k),
                    d[rows[best.config_id]],
                    d[rows[c.config_id]],
                    level,
                )
                for k, d in devs.items()
            }
            for c in scored[1:]
        }
    return Summary(metric, mode, level, ranked, stats, intervals, deltas)


def parent_metrics(summary: Summary) -> dict[str, float]:
    """``confirm/<config_id>/<key>_<stat>`` for every key and stat, ``confirm/<config_id>/
    n_seeds``, each EER's interval ``.../<key>_ci_low`` and ``_ci_high``, each comparison's
    ``confirm/<config_id>/delta/<key>`` (+ ``_low``, ``_high``), and a sweep trial shown apart
    as ``confirm/<config_id>/sweep_trial/<key>``; non-finite values (the std of one seed, the
    interval of fewer than 2) are left out."""
    out: dict[str, float] = {}
    for c in summary.configs:
        cid, per_key = c.config_id, summary.stats[c.config_id]
        out[f"confirm/{cid}/n_seeds"] = float(len(c.runs))
        for key, s in per_key.items():
            out |= {f"confirm/{cid}/{key}_{stat}": s[stat] for stat in STATS}
        for key, iv in summary.intervals.get(cid, {}).items():
            out |= {f"confirm/{cid}/{key}_ci_low": iv.low, f"confirm/{cid}/{key}_ci_high": iv.high}
        if c.sweep_trial is not None:
            out |= {
                f"confirm/{cid}/sweep_trial/{k}": v
                for k, v in c.sweep_trial.metrics.items()
                if (k.startswith("eval/") and k.endswith("/eer")) or k == summary.metric
            }
    for cid, deltas in summary.deltas.items():
        for key, d in deltas.items():
            base = f"confirm/{cid}/delta/{key}"
            out |= {base: d.delta, f"{base}_low": d.low, f"{base}_high": d.high}
    return {k: v for k, v in out.items() if math.isfinite(v)}
