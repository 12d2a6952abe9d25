"""A confirmation's summary: each configuration's EERs over seeds, and whether the best one is
distinguishable from each other one (a paired bootstrap over the same utterances).

Pure computation and files (numpy, matplotlib): the runs' metrics and scores come in, a
:class:`Summary` goes out, with its MLflow metrics, a Markdown and a JSON table and a plot.
"""

from __future__ import annotations

import itertools
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

from trainer.data.records import Utterance
from trainer.evaluate import speaker_groups
from trainer.metrics import PairedDelta, bootstrap_eers, percentile_interval

STATS = ("mean", "std", "min", "max")
SHOWN_PARAMS = ("loss.similarity", "loss.temperature", "queue.size", "queue.start_epoch")

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
    """A configuration and its runs, one per seed (the sweep trial's among them)."""

    config_id: str
    sweep_rank: int
    params: Mapping[str, Any]
    runs: tuple[SeedRun, ...]


@dataclass(frozen=True)
class Summary:
    """Per configuration (best first, by the mean of ``metric``), each key's stats over seeds;
    ``deltas[config_id][key]``: the best configuration's mean EER over seeds minus that
    one's, on one set (or the pooled mean), with its paired-bootstrap interval."""

    metric: str
    mode: str
    level: float
    configs: tuple[ConfigRuns, ...]
    stats: dict[str, dict[str, dict[str, float]]]
    deltas: dict[str, dict[str, PairedDelta]] = field(default_factory=dict)

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
    keys = [f"eval/{s}/eer" for s in sets] + ["eval/pooled_mean/eer", "eval/pooled_all/eer"]
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


def _deltas(
    best: slice,
    other: slice,
    runs: Sequence[SeedRun],
    replicates: Mapping[str, np.ndarray],
    level: float,
) -> dict[str, PairedDelta]:
    """Per set and for the pooled mean: the mean EER over the ``best`` runs' seeds minus the
    ``other`` runs', with the interval of that difference over the paired resamples
    (``replicates[set]``: (len(runs), n_boot), every run on the same resample)."""
    out, pooled = {}, []
    for name, reps in replicates.items():
        key = f"eval/{name}/eer"
        diff = reps[best].mean(axis=0) - reps[other].mean(axis=0)  # (n_boot,)
        point = float(
            np.mean([r.metrics[key] for r in runs[best]])
            - np.mean([r.metrics[key] for r in runs[other]])
        )
        out[key] = PairedDelta(point, *percentile_interval(diff, level))
        pooled.append((point, diff))
    if pooled:
        point = float(np.mean([p for p, _ in pooled]))
        diff = np.mean([d for _, d in pooled], axis=0)  # (n_boot,)
        out["eval/pooled_mean/eer"] = PairedDelta(point, *percentile_interval(diff, level))
    return out


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
    dev figure), then compare the best with each other on every evaluation set in ``sets``
    (utterances in protocol order) and on the pooled mean. Each set is resampled once for
    every run of every configuration (sets with different seeds), so all comparisons share
    their resamples."""
    keys = _keys(list(sets), metric)
    stats = {c.config_id: _stats(c, keys) for c in configs}
    sign = 1.0 if mode == "min" else -1.0

    def order(c: ConfigRuns) -> tuple[float, int]:
        mean = stats[c.config_id].get(metric, {}).get("mean", math.nan)
        return (sign * mean if math.isfinite(mean) else math.inf, c.sweep_rank)

    ranked = tuple(sorted(configs, key=order))
    deltas: dict[str, dict[str, PairedDelta]] = {}
    if len(ranked) > 1:
        runs = [r for c in ranked for r in c.runs]
        bounds = np.cumsum([0, *(len(c.runs) for c in ranked)])
        slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        replicates = {
            name: _set_replicates(runs, name, utterances, read, n_boot, seed=i)
            for i, (name, utterances) in enumerate(sets.items())
        }
        deltas = {
            c.config_id: _deltas(slices[0], s, runs, replicates, level)
            for c, s in zip(ranked[1:], slices[1:], strict=True)
        }
    return Summary(metric, mode, level, ranked, stats, deltas)


def parent_metrics(summary: Summary) -> dict[str, float]:
    """``confirm/<config_id>/<key>_<stat>`` for every key and stat, ``confirm/<config_id>/
    n_seeds``, and each comparison's ``confirm/<config_id>/delta/<key>`` (+ ``_low``,
    ``_high``); non-finite values (the std of one seed) are left out."""
    out: dict[str, float] = {}
    for cid, per_key in summary.stats.items():
        out[f"confirm/{cid}/n_seeds"] = float(max((s["n"] for s in per_key.values()), default=0))
        for key, s in per_key.items():
            out |= {f"confirm/{cid}/{key}_{stat}": s[stat] for stat in STATS}
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


def table_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The summary table: one row per configuration, best first; EERs in %, mean ± std."""
    keys = next(iter(summary.stats.values())).keys() if summary.stats else []
    eers = [k for k in keys if k.startswith("eval/")]
    shown = [p for p in SHOWN_PARAMS if any(p in c.params for c in summary.configs)]
    header = ["#", "config", *shown, "seeds", summary.metric]
    header += [f"{k.split('/')[1]} %" for k in eers] + ["Δ pooled_mean vs #1 (CI)"]
    rows = []
    for i, c in enumerate(summary.configs, 1):
        st = summary.stats[c.config_id]
        row = [str(i), c.config_id, *(str(c.params.get(p, "-")) for p in shown)]
        row += [str(len(c.runs)), _value(st.get(summary.metric), summary.metric)]
        row += [_pct(st.get(k)) for k in eers]
        row.append(_delta_cell(summary.deltas.get(c.config_id), "eval/pooled_mean/eer"))
        rows.append(row)
    return header, rows


def _delta_cell(deltas: Mapping[str, PairedDelta] | None, key: str) -> str:
    if deltas is None:
        return "best"
    d = deltas.get(key)
    if d is None:
        return "-"
    verdict = "distinguishable" if d.distinguishable else "not distinguishable"
    return f"{100 * d.delta:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}] {verdict}"


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
    lines = [
        f"# Confirmation of sweep {sweep}",
        "",
        f"Configurations ranked by the mean over seeds of {summary.metric} ({summary.mode}); "
        f"EERs in %, mean ± sample std over seeds. The last column: the best configuration's "
        f"pooled-mean EER minus this one's, with its {level} paired-bootstrap interval "
        "(every run scored on the same resampled utterances; speakers resampled where the "
        "corpus has them); distinguishable when the interval excludes 0.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    for cid, deltas in summary.deltas.items():
        lines += ["", f"Best ({summary.best.config_id}) minus {cid}, per set:", ""]
        lines += ["| set | Δ EER % | interval % | distinguishable |", "|---|---|---|---|"]
        for key, d in deltas.items():
            name = key.split("/")[1]
            lines.append(
                f"| {name} | {100 * d.delta:+.2f} | [{100 * d.low:+.2f}, {100 * d.high:+.2f}] "
                f"| {'yes' if d.distinguishable else 'no'} |"
            )
    return "\n".join(lines) + "\n"


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
                "runs": [{"run_id": r.run_id, "seed": r.seed} for r in c.runs],
                "stats": summary.stats[c.config_id],
                "vs_best": {
                    key: {**d._asdict(), "distinguishable": d.distinguishable}
                    for key, d in summary.deltas.get(c.config_id, {}).items()
                },
            }
            for c in summary.configs
        ],
    }
    return json.dumps(doc, indent=2, default=float)


def plot(summary: Summary, sets: Sequence[str], path: Path) -> Path:
    """Per evaluation set (and the pooled mean), each seed's EER per configuration as dots, the
    mean as a bar and ± std as an error bar."""
    keys = [f"eval/{s}/eer" for s in sets] + ["eval/pooled_mean/eer"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    labels = [c.config_id[:6] for c in summary.configs]
    for ax, key in zip(axes[0], keys, strict=True):
        for x, c in enumerate(summary.configs):
            values = [100 * r.metrics[key] for r in c.runs if key in r.metrics]
            if not values:
                continue
            ax.scatter([x] * len(values), values, s=14, alpha=0.7, color=f"C{x}")
            std = np.std(values, ddof=1) if len(values) > 1 else 0.0
            ax.errorbar(x + 0.2, np.mean(values), yerr=std, fmt="_", color="black", capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_title(key.split("/")[1])
        ax.set_ylabel("EER (%)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("EER per seed and configuration (best first); bar: mean ± std")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
