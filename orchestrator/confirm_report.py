"""A confirmation's summary: each configuration's EERs over its seeds with a seed-aware interval,
and whether the best one is distinguishable from each other one (:mod:`orchestrator.confirm_stats`:
the seeds' spread plus the test set's, from a paired bootstrap over the same utterances).

By default the seeds are the fresh ones the confirmation ran: the sweep trial was selected as a
winner on the metric that ranks it (a winner's curse), so it is shown apart and is not one of
them; ``include_sweep_trial`` counts it as one more seed.

Pure computation and files (numpy, scipy, matplotlib): the runs' metrics and scores come in, a
:class:`Summary` goes out, with its MLflow metrics, a Markdown and a JSON table and a plot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from orchestrator.confirm_stats import Comparison, Interval, compare, deviations, interval
from trainer.data.records import Utterance
from trainer.evaluate import speaker_groups
from trainer.metrics import bootstrap_eers

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
    and compare the best with each other (:mod:`orchestrator.confirm_stats`). Each set is
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


def _pct(s: Mapping[str, float] | None) -> str:
    if not s:
        return "-"
    std = f" ± {100 * s['std']:.2f}" if math.isfinite(s["std"]) else ""
    return f"{100 * s['mean']:.2f}{std}"


def _value(s: Mapping[str, float] | None, key: str) -> str:
    if key.endswith("/eer"):
        return _pct(s)
    if not s:
        return "-"
    std = f" ± {s['std']:.4g}" if math.isfinite(s["std"]) else ""
    return f"{s['mean']:.4g}{std}"


def _ci(iv: Interval | None) -> str:
    if iv is None or not math.isfinite(iv.low):
        return "-"
    return f"[{100 * iv.low:.2f}, {100 * iv.high:.2f}]"


def table_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The summary table: one row per configuration, best first; EERs in %, mean ± std over its
    seeds, the pooled mean's seed-aware interval, the sweep trial apart, and the comparison."""
    keys = next(iter(summary.stats.values())).keys() if summary.stats else []
    eers = [k for k in keys if k.startswith("eval/")]
    shown = [p for p in SHOWN_PARAMS if any(p in c.params for c in summary.configs)]
    level = f"{100 * summary.level:g}%"
    header = ["#", "config", *shown, "seeds", summary.metric]
    header += [f"{k.split('/')[1]} %" for k in eers]
    header += [f"pooled_mean {level} CI", "sweep trial pooled_mean %", "Δ pooled_mean vs #1 (CI)"]
    rows = []
    for i, c in enumerate(summary.configs, 1):
        st = summary.stats[c.config_id]
        row = [str(i), c.config_id, *(str(c.params.get(p, "-")) for p in shown)]
        row += [str(len(c.runs)), _value(st.get(summary.metric), summary.metric)]
        row += [_pct(st.get(k)) for k in eers]
        row.append(_ci(summary.intervals.get(c.config_id, {}).get(POOLED)))
        sweep = c.sweep_trial.metrics.get(POOLED) if c.sweep_trial is not None else None
        row.append(f"{100 * sweep:.2f}" if sweep is not None else "-")
        row.append(_delta_cell(summary, c))
        rows.append(row)
    return header, rows


def _delta_cell(summary: Summary, c: ConfigRuns) -> str:
    if c is summary.best:
        return "best" if len(c.runs) > 1 else "best (no verdict: fewer than 2 seeds)"
    d = summary.deltas.get(c.config_id, {}).get(POOLED)
    if d is None:
        return "no verdict: no seed scored"
    if not d.decided:
        return f"{100 * d.delta:+.2f} no verdict: fewer than 2 seeds"
    return f"{100 * d.delta:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}] {d.verdict}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def markdown(summary: Summary, sweep: str) -> str:
    header, rows = table_rows(summary)
    level = f"{100 * summary.level:g}%"
    apart = any(c.sweep_trial is not None for c in summary.configs)
    lines = [
        f"# Confirmation of sweep {sweep}",
        "",
        f"Configurations ranked by the mean over seeds of {summary.metric} ({summary.mode}); "
        f"EERs in %, mean ± sample std over seeds. "
        + (
            "The seeds are the confirmation's fresh ones; the sweep trial that found each "
            "configuration (selected as a winner on that metric) is shown apart. "
            if apart
            else "The sweep trial counts as one of the seeds (--include-sweep-trial). "
        )
        + f"Intervals ({level}) are t-based over the seeds' means, with the test set's own "
        "variance (a paired bootstrap over speakers, or trials where a set has none) folded "
        "in; the last column is the best configuration's pooled-mean EER minus this one's: "
        "distinguishable when its interval excludes 0, no verdict with fewer than 2 seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    for cid, deltas in summary.deltas.items():
        lines += ["", f"Best ({summary.best.config_id}) minus {cid}, per set:", ""]
        lines += [
            "| set | Δ EER % | interval % | seed SE % | test-set SE % | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for key, d in deltas.items():
            name = key.split("/")[1]
            lines.append(
                f"| {name} | {100 * d.delta:+.2f} | [{100 * d.low:+.2f}, {100 * d.high:+.2f}] "
                f"| {100 * d.seed_se:.2f} | {100 * d.test_se:.2f} | {d.verdict} |"
            )
    return "\n".join(lines) + "\n"


def _run_json(run: SeedRun) -> dict[str, Any]:
    return {"run_id": run.run_id, "seed": run.seed}


def to_json(summary: Summary, sweep: str) -> str:
    doc = {
        "sweep": sweep,
        "metric": summary.metric,
        "mode": summary.mode,
        "level": summary.level,
        "best": summary.best.config_id,
        "configs": [
            {
                "config_id": c.config_id,
                "sweep_rank": c.sweep_rank,
                "params": {p: c.params.get(p) for p in SHOWN_PARAMS if p in c.params},
                "runs": [_run_json(r) for r in c.runs],
                "sweep_trial": (
                    {**_run_json(c.sweep_trial), "metrics": dict(c.sweep_trial.metrics)}
                    if c.sweep_trial is not None
                    else None
                ),
                "stats": summary.stats[c.config_id],
                "intervals": {
                    k: {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}
                    for k, iv in summary.intervals.get(c.config_id, {}).items()
                },
                "vs_best": {
                    key: {
                        "delta": d.delta,
                        "low": d.low,
                        "high": d.high,
                        "df": d.df,
                        "seed_se": d.seed_se,
                        "test_se": d.test_se,
                        "verdict": d.verdict,
                        "distinguishable": d.distinguishable,
                    }
                    for key, d in summary.deltas.get(c.config_id, {}).items()
                },
            }
            for c in summary.configs
        ],
    }
    return json.dumps(doc, indent=2, default=float)


def plot(summary: Summary, sets: Sequence[str], path: Path) -> Path:
    """Per evaluation set (and the pooled mean), each seed's EER per configuration as dots, the
    mean with its seed-aware interval as an error bar, and the sweep trial apart as a cross."""
    keys = [f"eval/{s}/eer" for s in sets] + [POOLED]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    labels = [c.config_id[:6] for c in summary.configs]
    for ax, key in zip(axes[0], keys, strict=True):
        for x, c in enumerate(summary.configs):
            values = [100 * r.metrics[key] for r in c.runs if key in r.metrics]
            if values:
                ax.scatter([x] * len(values), values, s=14, alpha=0.7, color=f"C{x}")
            iv = summary.intervals.get(c.config_id, {}).get(key)
            if iv is not None and math.isfinite(iv.low):
                err = [[100 * (iv.mean - iv.low)], [100 * (iv.high - iv.mean)]]
                ax.errorbar(x + 0.2, 100 * iv.mean, yerr=err, fmt="_", color="black", capsize=3)
            if c.sweep_trial is not None and key in c.sweep_trial.metrics:
                ax.scatter([x - 0.2], [100 * c.sweep_trial.metrics[key]], marker="x", color="grey")
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_title(key.split("/")[1])
        ax.set_ylabel("EER (%)")
        ax.grid(alpha=0.3, axis="y")
    level = f"{100 * summary.level:g}%"
    fig.suptitle(f"EER per seed (dots), mean with its {level} interval (bar), sweep trial (x)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
