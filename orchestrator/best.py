"""``supcon-sweep best``: the best finished trials in MLflow, as a table, JSON or a config file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.objective import OBJECTIVE
from orchestrator.options import EXIT_STATUS, add_tracking_args, bad_input
from trainer.config import ConfigError

# The swept knobs, always shown; any other param that differs among the shown runs joins them.
KEY_PARAMS = ("loss.similarity", "loss.temperature", "queue.size", "queue.start_epoch")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "best",
        help="list the best finished trials tracked in MLflow; export the best one's config",
        description=(
            "Rank the finished trial runs of an MLflow experiment by a metric (the last value "
            "each run logged; by default the sweeps' own objective: the value their searcher "
            "was told, sweep/objective, e.g. the best epoch's dev EER) and print "
            "their swept parameters and EERs (reruns of `confirm` are left out: see --by-config). "
            "Test-set columns show the trials that were scored "
            "on the evaluation sets (a sweep scores its top --eval-top-k; `supcon-sweep "
            "evaluate` any other); n/e marks those that were not. --export writes the best "
            "trial's config, pinned to its world size and weights, for `supcon-sweep trial`."
        ),
        epilog=f"{EXIT_STATUS} No finished trial that has --metric counts as a run not found.",
    )
    add_tracking_args(p)
    p.add_argument(
        "--metric",
        help="ranking metric (default: sweep/objective, each trial's value of the metric the "
        "experiment's sweeps selected on, as their searcher saw it)",
    )
    p.add_argument("--mode", choices=("min", "max"), help="min or max (default: the sweeps')")
    p.add_argument("--top", type=int, default=5, help="how many trials (default 5)")
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.add_argument(
        "--by-config",
        action="store_true",
        help="rank configurations instead of runs: those `supcon-sweep confirm` ran under "
        "several seeds, by their mean over seeds, showing mean ± std and the seed count",
    )
    p.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write the best trial's config, pinned to its world size (runtime.world_size: "
        "the global batch and epoch length) and its pretrained weights' hub revision; prints "
        "the command that reruns it",
    )
    p.set_defaults(handler=_best)


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


def _query(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The best rows; TrackingError when the store, the experiment or such a trial is missing."""
    from orchestrator.tracking import (
        TrackingError,
        check_reachable,
        query_best,
        resolve_tracking_uri,
        safe_uri,
        sweep_objective,
    )

    uri = resolve_tracking_uri(args.tracking_uri, args.out)
    check_reachable(uri)
    rows = []
    if args.metric is None:
        # What the sweeps selected on: each trial's objective value (the best epoch's for a
        # per-epoch metric), or the metric itself in stores written before that was logged.
        metric, mode = sweep_objective(uri, args.experiment)
        args.mode = args.mode or mode
        rows = query_best(uri, args.experiment, OBJECTIVE, args.mode, args.top, confirmations=False)
        args.metric = OBJECTIVE if rows else metric
    args.mode = args.mode or "min"
    rows = rows or query_best(
        uri, args.experiment, args.metric, args.mode, args.top, confirmations=False
    )
    if not rows:
        raise TrackingError(
            f"no finished trial in experiment {args.experiment!r} of {safe_uri(uri)} "
            f"has the metric {args.metric}"
        )
    return rows


def _best(args: argparse.Namespace) -> int:
    if args.top < 1:
        return bad_input("--top must be at least 1")
    if args.by_config and args.export:
        return bad_input("--export writes one trial's config; it does not go with --by-config")
    if args.by_config:
        from orchestrator.best_config import by_config

        return by_config(args)
    from orchestrator.tracking import TrackingError, export_config, rerun_command

    try:
        rows = _query(args)
    except TrackingError as err:
        return bad_input(err)
    if args.metric.startswith("eval/"):
        print(
            f"note: {args.metric} is a test-set metric; choosing a trial by it makes its test "
            "EER optimistic (the sweep itself selects on a dev metric), and only the trials "
            "scored on the test sets take part",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print_table(rows, args.metric)
    if args.export:
        try:
            path = export_config(rows[0], args.export)
        except ConfigError as err:
            return bad_input(f"trial {rows[0]['trial_id']} has no valid config: {err}")
        from trainer.config import load_config

        print(
            f"wrote the config of trial {rows[0]['trial_id']} to {path.resolve()}; rerun it, "
            f"with the same global batch, with\n  {rerun_command(load_config(path), path)}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0
