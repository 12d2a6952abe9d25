"""The table of ``supcon-sweep best`` (and of a sweep's end): the best runs' swept parameters
and EERs, in percent, with ``n/e`` for a set a run was not scored on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.objective import OBJECTIVE

# The swept knobs, always shown; any other param that differs among the shown runs joins them.
KEY_PARAMS = ("loss.similarity", "loss.temperature", "queue.size", "queue.start_epoch")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _shown_params(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({k for r in rows for k in r["params"]})
    differing = [
        k for k in keys if k not in KEY_PARAMS and len({_fmt(r["params"].get(k)) for r in rows}) > 1
    ]
    return [k for k in KEY_PARAMS if k in keys] + differing


def _eer_columns(rows: Sequence[dict[str, Any]], metric: str) -> list[tuple[str, str]]:
    """(metric key, header) pairs: each evaluation set, the pooled figures (the mean with
    ASVspoof 2021 over every trial too), stage-2 dev, and the ranking metric if it is none of
    those. Per-attack and per-condition keys (``eer_A07``, ``eer_codec_alaw``) are left out."""
    keys = {k for r in rows for k in r["metrics"]}
    sets = sorted(
        parts[1]
        for parts in (k.split("/") for k in keys)
        if len(parts) == 3 and parts[0] == "eval" and parts[2] == "eer"
    )
    names = [s for s in sets if s not in ("pooled_mean", "pooled_all")]
    columns = [(f"eval/{s}/eer", s) for s in names]
    columns += [
        ("eval/pooled_mean/eer", "pooled_mean"),
        ("eval/pooled_all/eer", "pooled_all"),
        ("eval/pooled_mean/eer_all", "pooled_mean(21 all trials)"),
        ("classifier/dev/eer", "dev(stage2)"),
    ]
    columns = [(k, h) for k, h in columns if k in keys]
    if metric not in {k for k, _ in columns} and metric in keys:
        columns.append((metric, "objective" if metric == OBJECTIVE else metric))
    return columns


def _is_eer(key: str) -> bool:
    return key.endswith(("/eer", "/eer_all"))


NOT_EVALUATED = "n/e"


def _metric(key: str, row: dict[str, Any]) -> str:
    value = row["metrics"].get(key)
    if value is None:
        tested = any(k.startswith("eval/") for k in row["metrics"])
        return NOT_EVALUATED if key.startswith("eval/") and not tested else "-"
    return f"{100 * value:.2f}" if _is_eer(key) else f"{value:.4g}"


def print_table(rows: Sequence[dict[str, Any]], metric: str) -> None:
    """One line per run, best first: rank, trial id, shown params, then EERs in %."""
    if not rows:
        print("(no finished trial has this metric)")
        return
    params = _shown_params(rows)
    eers = _eer_columns(rows, metric)
    header = ["#", "trial", *params, *(f"{h} %" if _is_eer(k) else h for k, h in eers)]
    table = [
        [
            str(i),
            r["trial_id"],
            *(_fmt(r["params"].get(k)) for k in params),
            *(_metric(k, r) for k, _ in eers),
        ]
        for i, r in enumerate(rows, 1)
    ]
    widths = [max(len(row[c]) for row in [header, *table]) for c in range(len(header))]
    for row in [header, *table]:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
        print("  ".join(cells).rstrip())
    if any(NOT_EVALUATED in row for row in table):
        print(
            f"{NOT_EVALUATED}: not scored on the evaluation sets "
            "(supcon-sweep evaluate --run-id RUN scores it)"
        )
