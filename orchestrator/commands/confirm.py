"""``supcon-sweep confirm``: rerun a finished sweep's top configurations under new seeds, and
summarise each configuration's EERs over seeds with bootstrap intervals (see
:mod:`orchestrator.engine.confirm` and :mod:`orchestrator.reports.confirm`).

Arguments are checked with nothing heavy imported; then the sweep, its storage and its
corpora; only then is the confirmation's MLflow parent run created and Ray reached, so bad input
leaves nothing in MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.commands.options import (
    CHAMPION,
    EXIT_FAILED,
    EXIT_STATUS,
    add_ray_args,
    add_tracking_args,
    amount,
    bad_input,
    preflight,
    storage_path,
    whole,
)
from orchestrator.engine.session import check_local_resources, check_ray_address
from orchestrator.objective import OBJECTIVE
from orchestrator.settings import SETTINGS_FILE, SweepSettings
from orchestrator.train.resources import check_gpus
from trainer.config import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "confirm",
        help="rerun a sweep's top configurations under new seeds; mean, spread and intervals",
        description=(
            "Take the top --top configurations of a finished sweep by its objective and rerun "
            "each under new seeds, each rerun a Ray Train trial with the sweep's resources and "
            "storage, scored on every evaluation set. The statistics are over the fresh seeds: "
            "the sweep trial was selected as a winner on the metric that ranks it, so it is "
            "shown apart (its own column) unless --include-sweep-trial counts it as a seed. "
            "Logs one MLflow parent run confirm-SWEEP with a nested run per (configuration, "
            "seed), and on the parent each configuration's mean, std, min and max over seeds of "
            "every set's EER and the pooled figures (confirm/<config_id>/eval/<set>/eer_mean, "
            "...) with a seed-aware interval (_ci_low, _ci_high), a table (confirm.md, "
            "confirm.json) and a plot (confirm.png). The best configuration (by the mean of the "
            "sweep's dev objective) is compared with each other per set and pooled: the "
            "difference of their mean EERs, with a t interval whose variance is the seeds' "
            "(Welch) plus the test set's own (a paired bootstrap over speakers); "
            "distinguishable when it excludes 0, no verdict with fewer than 2 seeds. Running "
            "confirm again finishes what is missing: finished reruns are kept, interrupted ones "
            "resume from their checkpoints."
        ),
        epilog=f"{EXIT_STATUS} confirm exits 1 when a rerun failed (the table then covers the "
        "seeds that finished).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="the sweep's name (its MLflow parent run's supcon.sweep)")
    which.add_argument("--parent-run-id", help="the sweep's MLflow parent run id")
    p.add_argument(
        "--top", type=whole(1), default=3, help="how many configurations, best first (default 3)"
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=whole(1),
        default=3,
        help="new seeds per configuration (default 3): the sweep trial's seed + 1000, + 2000, "
        "... (a run's rank r seeds seed + r, so nearby seeds would share ranks' streams)",
    )
    seeds.add_argument(
        "--seed-list", type=_seed_list, help="the seeds, comma-separated, e.g. 1,2,3"
    )
    p.add_argument(
        "--metric",
        help="rank the sweep's trials by this metric (default: the sweep's objective, "
        "sweep/objective, as its searcher saw it); the confirmed configurations are ranked "
        "by its mean over seeds",
    )
    p.add_argument("--mode", choices=("min", "max"), help="min or max (default: the sweep's)")
    p.add_argument(
        "--max-concurrent",
        type=whole(1),
        default=1,
        help="reruns at once on the cluster (default 1)",
    )
    p.add_argument(
        "--workers-per-trial",
        type=whole(1),
        help="DDP ranks per rerun (default: the sweep's; another number changes the global batch)",
    )
    p.add_argument(
        "--gpus-per-trial", type=amount(zero=True), help="GPUs per rerun (default: the sweep's)"
    )
    p.add_argument(
        "--storage",
        help="where the reruns' Train checkpoints and models go (default: the sweep's storage)",
    )
    p.add_argument(
        "--include-sweep-trial",
        action="store_true",
        help="count each configuration's sweep trial as one more seed (it was selected as the "
        "winner on the ranking metric, so its figures lean optimistic; for users short of "
        "compute). Default: fresh seeds only, the sweep trial shown apart",
    )
    p.add_argument(
        "--n-boot", type=whole(1), default=1000, help="bootstrap resamples (default 1000)"
    )
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the model of the configuration confirmed best (by its mean over seeds) "
        "as a new version of NAME in MLflow's model registry, with --alias: of its seed runs, "
        "the one at the median of the ranking metric (a representative seed, not the luckiest), "
        "tagged with the seed count and the pooled EER's interval",
    )
    p.add_argument(
        "--alias", default=CHAMPION, help=f"the alias of --register (default {CHAMPION})"
    )
    add_tracking_args(p)
    add_ray_args(p)
    p.set_defaults(handler=_confirm)


def _seed_list(text: str) -> list[int]:
    """``--seed-list``: distinct whole numbers separated by commas."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}"
        ) from None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"seed(s) {', '.join(map(str, repeated))} given more than once in {text!r}"
        )
    return seeds


def _sweep_settings(sweep, out: Path) -> SweepSettings:
    """The settings the sweep saved beside its Tune folder; ConfirmError when they are gone."""
    from orchestrator.engine.confirm import ConfirmError

    folder = sweep.tune_dir or str(out.resolve() / "tune" / sweep.name)
    try:
        return SweepSettings.load(folder)
    except FileNotFoundError:
        raise ConfirmError(
            f"the storage of sweep {sweep.name} is gone: no {folder}/{SETTINGS_FILE} (its Tune "
            "folder, which holds the sweep's settings and resources)"
        ) from None
    except (TypeError, ValueError, KeyError) as err:
        raise ConfirmError(
            f"{folder}/{SETTINGS_FILE} is not readable by this version: {err}"
        ) from None


def _resources(args: argparse.Namespace, settings: SweepSettings) -> dict[str, Any]:
    workers = args.workers_per_trial or settings.workers_per_trial
    gpus = settings.gpus_per_trial if args.gpus_per_trial is None else args.gpus_per_trial
    check_gpus(workers, gpus)
    if workers != settings.workers_per_trial:
        print(
            f"warning: {workers} workers per rerun where the sweep had "
            f"{settings.workers_per_trial}: the global batch and the epoch's length change",
            file=sys.stderr,
        )
    return {
        "workers_per_trial": workers,
        "gpus_per_trial": gpus,
        "max_concurrent": args.max_concurrent,
    }


def _confirm(args: argparse.Namespace) -> int:
    from orchestrator.engine.confirm import ConfirmError, candidates
    from orchestrator.tracking import Tracking, TrackingError, check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, args.out.resolve())
    tracking = Tracking.at(uri, args.experiment)
    try:
        check_reachable(uri)
        _, sweep = tracking.find_sweep(name=args.sweep, parent_run_id=args.parent_run_id)
        settings = _sweep_settings(sweep, args.out)
        metric, mode = args.metric or OBJECTIVE, args.mode or sweep.mode
        chosen, n_finished = candidates(tracking, sweep, metric, mode, args.top)
        if len(chosen) < args.top:
            print(
                f"note: sweep {sweep.name} has {len(chosen)} distinct finished configuration(s) "
                f"with {metric} ({n_finished} trial(s)), fewer than --top {args.top}; "
                f"confirming those",
                file=sys.stderr,
            )
        resources = _resources(args, settings)
        check_ray_address(args.address)
        check_local_resources(
            args.address,
            resources["workers_per_trial"],
            settings.cpus_per_worker,
            resources["gpus_per_trial"],
        )
        preflight(settings.base, settings.workers_per_trial, "rerun")
    except (TrackingError, ConfirmError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    from orchestrator.engine.confirm import Confirmation

    job = Confirmation(
        tracking=tracking,
        sweep=sweep,
        sweep_settings=settings,
        chosen=chosen,
        seeds=args.seed_list,
        count=args.seeds,
        metric=metric,
        mode=mode,
        storage=storage_path(args.storage),
        resources=resources,
        n_boot=args.n_boot,
        include_sweep_trial=args.include_sweep_trial,
        register=(args.register, args.alias) if args.register else None,
    )
    from orchestrator.engine.session import start_ray

    # The score files are read back one per run and set: no progress bar for each.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    start_ray(args.address, args.max_concurrent)
    with tempfile.TemporaryDirectory(prefix="supcon-confirm-") as scratch:
        failures = job.run(Path(scratch))
    for trial_id, error in failures.items():
        print(f"error: {trial_id} failed: {error}", file=sys.stderr)
    return EXIT_FAILED if failures else 0
