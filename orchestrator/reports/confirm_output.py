"""A confirmation's summary as people read it: the table printed at the end, the Markdown and
JSON files logged on the confirmation's parent run, and the plot of each configuration's EERs
over its seeds (:class:`~orchestrator.reports.confirm.Summary` in, text and files out)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from orchestrator.reports.confirm import POOLED, SHOWN_PARAMS, ConfigRuns, SeedRun, Summary
from orchestrator.reports.stats import Interval


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
