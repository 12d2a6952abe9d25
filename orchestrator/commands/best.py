"""``supcon-sweep best``: the best finished trials in MLflow, as a table, JSON or a config file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orchestrator.commands.options import (
    CHAMPION,
    EXIT_STATUS,
    add_tracking_args,
    bad_input,
    whole,
)
from orchestrator.objective import OBJECTIVE
from trainer.config import ConfigError


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
    p.add_argument("--top", type=whole(1), default=5, help="how many trials (default 5)")
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
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's final model (an MLflow model folder in the sweep's "
        "storage, not copied) as a new version of NAME in MLflow's model registry, tagged with "
        "its sweep, config id and selection metric, and point --alias at it; then "
        "mlflow.pyfunc.load_model('models:/NAME@ALIAS') or `supcon-sweep score --model` runs "
        "it. Registering the same trial again creates nothing",
    )
    p.add_argument(
        "--alias",
        default=CHAMPION,
        help=f"the alias --register points at the version (default {CHAMPION})",
    )
    p.set_defaults(handler=_best)


def _query(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The best rows; TrackingError when the store, the experiment or such a trial is missing."""
    from orchestrator.tracking import (
        Tracking,
        TrackingError,
        check_reachable,
        resolve_tracking_uri,
        safe_uri,
    )

    uri = resolve_tracking_uri(args.tracking_uri, args.out)
    check_reachable(uri, create=False)
    tracking = Tracking.at(uri, args.experiment)
    rows = []
    if args.metric is None:
        # What the sweeps selected on: each trial's objective value (the best epoch's for a
        # per-epoch metric), or the metric itself in stores written before that was logged.
        metric, mode = tracking.sweep_objective()
        args.mode = args.mode or mode
        rows = tracking.best(OBJECTIVE, args.mode, args.top, confirmations=False)
        args.metric = OBJECTIVE if rows else metric
    args.mode = args.mode or "min"
    rows = rows or tracking.best(args.metric, args.mode, args.top, confirmations=False)
    if not rows:
        raise TrackingError(
            f"no finished trial in experiment {args.experiment!r} of {safe_uri(uri)} "
            f"has the metric {args.metric}"
        )
    return rows


def _best(args: argparse.Namespace) -> int:
    if args.export is not None and args.export.is_dir():
        return bad_input(f"--export {args.export} is a directory; name the YAML file to write")
    if args.by_config and (args.export or args.register):
        return bad_input(
            "--export and --register take one trial; they do not go with --by-config "
            "(`supcon-sweep confirm --register` registers the configuration confirmed best)"
        )
    if args.by_config:
        return _by_config(args)
    from orchestrator.reports.best import print_table
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
    _warn_on_corpus_versions(args, rows)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print_table(rows, args.metric)
    if args.export:
        try:
            path = export_config(rows[0], args.export)
        except ConfigError as err:
            return bad_input(f"trial {rows[0]['trial_id']} has no valid config: {err}")
        except OSError as err:
            return bad_input(f"cannot write --export {args.export}: {err.strerror or err}")
        from trainer.config import load_config

        print(
            f"wrote the config of trial {rows[0]['trial_id']} to {path.resolve()}; rerun it, "
            f"with the same global batch, with\n  {rerun_command(load_config(path), path)}",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.register:
        return _register(args, rows[0])
    return 0


def _warn_on_corpus_versions(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """A warning when the ranked trials read different versions (protocol digests) of a
    corpus of the same name: their numbers are then not comparable."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import resolve_tracking_uri
    from orchestrator.tracking.datasets import digest_mismatches

    client = MlflowClient(resolve_tracking_uri(args.tracking_uri, args.out))
    differ = digest_mismatches(client.get_run(r["run_id"]) for r in rows)
    for name, digests in sorted(differ.items()):
        print(
            f"warning: the trials listed read different versions of {name} (protocol digests "
            f"{', '.join(sorted(digests))}): their figures are not comparable",
            file=sys.stderr,
        )


def _register(args: argparse.Namespace, row: dict[str, Any]) -> int:
    from orchestrator.tracking import TrackingError, resolve_tracking_uri, row_config_id
    from orchestrator.tracking.registry import register, sweep_of
    from orchestrator.tracking.store import SWEEP_TAG

    uri = resolve_tracking_uri(args.tracking_uri, args.out)
    value = row["metrics"].get(args.metric)
    tags = {
        SWEEP_TAG: sweep_of(uri, row["run_id"]),
        "supcon.trial_id": row["trial_id"],
        "supcon.config_id": row_config_id(row),
        "supcon.selected_by": f"{args.metric} ({args.mode})",
        "supcon.selected_value": "" if value is None else repr(value),
    }
    try:
        done = register(uri, row, args.register, args.alias, tags)
    except TrackingError as err:
        return bad_input(err)
    what = "registered" if done.created else "already registered (nothing created):"
    print(
        f"{what} trial {row['trial_id']} as {done.name} version {done.version}, alias "
        f"{done.alias}; its model: {done.source}\n  load it: mlflow.pyfunc.load_model("
        f"{done.uri!r})  or  supcon-sweep score --model {done.uri} PATH ...",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0


def _by_config(args: argparse.Namespace) -> int:
    """The ``--by-config`` handler: configurations ranked by their mean over seeds
    (:mod:`orchestrator.reports.by_config`)."""
    from orchestrator.reports.by_config import group, print_configs
    from orchestrator.tracking import (
        Tracking,
        TrackingError,
        check_reachable,
        resolve_tracking_uri,
        safe_uri,
    )

    uri = resolve_tracking_uri(args.tracking_uri, args.out)
    tracking = Tracking.at(uri, args.experiment)
    try:
        check_reachable(uri, create=False)
        default_metric, default_mode = tracking.sweep_objective()
        rows = tracking.configured_runs()
    except TrackingError as err:
        return bad_input(err)
    metric = args.metric or (
        OBJECTIVE if any(OBJECTIVE in r["metrics"] for r in rows) else default_metric
    )
    mode = args.mode or default_mode
    configs = group(rows, metric)
    if not configs:
        return bad_input(
            f"no configuration in experiment {args.experiment!r} of {safe_uri(uri)} has runs of "
            f"two or more seeds with {metric}; `supcon-sweep confirm --sweep NAME` makes them"
        )
    sign = 1 if mode == "min" else -1
    configs.sort(key=lambda c: sign * c["stats"][metric]["mean"])
    configs = configs[: args.top]
    if args.json:
        print(json.dumps(configs, indent=2, default=float))
    else:
        print_configs(configs, metric)
    return 0
