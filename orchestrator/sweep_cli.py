"""``supcon-sweep sweep`` and ``supcon-sweep resume``.

Arguments, the config and the search space are checked first, with nothing heavy imported;
then the MLflow store and the Ray cluster are reached; only then does any work start.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.objective import OBJECTIVE, check_objective
from orchestrator.options import (
    EXIT_FAILED,
    EXIT_STATUS,
    add_ray_args,
    add_tracking_args,
    bad_input,
    check_gpus,
    check_ray_address,
    gpu_share,
    storage_path,
    worker_threads,
)
from orchestrator.settings import SETTINGS_FILE, SweepSettings
from search_spaces import SearchSpace, SpaceError, load_space
from trainer.config import ConfigError, TrainerConfig, apply_overrides, load_config, resolve_roots
from trainer.defaults import DEFAULT_DATA, ensure_synthetic
from trainer.reporting import EPOCH_METRICS, FINAL_METRICS

if TYPE_CHECKING:
    from ray.tune import ResultGrid

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"
SWEEP_STATUS = (
    "A sweep exits 1 when every trial failed or a best trial could not be scored on the test "
    "sets; when only some trials failed it exits 0, its MLflow parent run is FAILED and the "
    "table lists the trials that finished."
)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep's own options and the tracking ones (``submit`` passes them all on)."""
    p.add_argument(
        "--space",
        type=Path,
        default=DEFAULT_SPACE,
        help="search space YAML (default search_spaces/default.yaml)",
    )
    p.add_argument(
        "--config", type=Path, help="base trainer config (default trainer/configs/local.yaml)"
    )
    p.add_argument("--num-samples", type=int, default=8, help="TPE trials (grids run every point)")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials running at once")
    p.add_argument(
        "--scheduler",
        choices=("asha", "none"),
        default="asha",
        help="ASHA early stopping (default) or none. ASHA stops no trial before its queue has "
        "been on for 2 epochs: its first rung is after the space's latest queue.start_epoch + 1 "
        "(0-based; epoch 2 when no trial has a queue); each later rung at twice the epoch",
    )
    p.add_argument(
        "--metric",
        default="encoder/dev/eer",
        help="what the sweep selects on (default encoder/dev/eer). A per-epoch metric "
        f"({', '.join(EPOCH_METRICS)}) is summarised per trial by its best epoch so far, for "
        "trials ASHA stops and trials that finish alike; an end-of-trial metric "
        f"({', '.join(FINAL_METRICS)}) by its final value, told to the searcher at the trial's "
        "end (needs --scheduler none). Logged on each trial run as sweep/objective",
    )
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--seed", type=int, default=0, help="searcher seed")
    p.add_argument(
        "--eval-top-k",
        type=eval_top_k,
        default=3,
        metavar="K",
        help="once the search ends, score the best K finished trials (by the objective) on the "
        "evaluation sets: an integer (default 3; 0 none) or 'all'. Trials themselves stop at the "
        "dev evaluation; `supcon-sweep evaluate --run-id RUN` scores any other later",
    )
    p.add_argument("--name", help="sweep name (default sweep-YYYYmmdd-HHMMSS)")
    _add_verbose(p)
    add_tracking_args(p)
    _add_trial_resources(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides")


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Tune's result of every epoch and Ray Train's INFO logs, with its "
        "per-rank 'Reporting training result' lines (default: Tune's table, one line per "
        "trial that ends)",
    )


def _add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything the sweep would check (arguments, config, search space, the "
        "corpora, a tracking server or Ray address given) and print its plan: a grid's trials "
        "in run order, or the searcher and its domains; the resources per trial; ASHA's first "
        "rung; the most stage-1 trial-epochs it can train. Starts nothing, writes nothing; "
        "exit 0 for a valid plan, 2 otherwise",
    )
    p.add_argument(
        "--json", action="store_true", help="with --dry-run: the plan as one JSON object"
    )
    p.add_argument(
        "--no-data-check",
        action="store_true",
        help="with --dry-run: skip the corpora's check (it looks at every listed file)",
    )


def eval_top_k(text: str) -> int | None:
    """``--eval-top-k``: a whole number >= 0, or ``all`` (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or 'all', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (or 'all'), got {value}")
    return value


def _add_trial_resources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers-per-trial", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0,
        help="GPUs per trial: one per worker, or a share (0.5, 0.25) of one GPU for a one-worker "
        "trial, packing 2 or 4 trials per GPU; 0 runs gloo on CPUs",
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker-group restarts from the last checkpoint per trial",
    )
    p.add_argument(
        "--storage",
        help="where Tune results and Train checkpoints go: storage every node reaches, a shared "
        "path or a URI such as s3://BUCKET/ray (default OUT)",
    )
    p.add_argument(
        "--placement",
        choices=("pack", "spread"),
        default="pack",
        help="a trial's workers on as few nodes as possible (pack, the default: fast NVLink "
        "collectives) or one per node where possible (spread)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="run a sweep: Ray Tune + Optuna over Ray Train trials, tracked in MLflow",
        description=(
            "Search the loss and queue settings of the two-stage trainer. Each trial is a Ray "
            "Train run (DDP over --workers-per-trial workers); Optuna TPE (or an exhaustive grid) "
            "picks the parameters; every sweep and trial is an MLflow run. Local Ray and SQLite "
            "MLflow under --out by default."
        ),
        epilog=f"{EXIT_STATUS} {SWEEP_STATUS}",
    )
    add_sweep_arguments(sweep)
    add_ray_args(sweep)
    _add_dry_run(sweep)
    sweep.set_defaults(handler=_sweep)
    resume = subparsers.add_parser(
        "resume",
        help="resume an interrupted sweep from its Tune folder",
        description="Restore a sweep (Tuner.restore): finished trials are kept, unfinished ones "
        "restart from their checkpoints, the searcher continues from its saved state. The "
        "sweep's MLflow store and experiment are the ones it was started with.",
        epilog=f"{EXIT_STATUS} {SWEEP_STATUS}",
    )
    resume.add_argument(
        "folder", help="the sweep's folder: OUT/tune/NAME, or STORAGE/tune/NAME (path or URI)"
    )
    add_ray_args(resume)
    _add_verbose(resume)
    resume.set_defaults(handler=_resume)


def _validated(args: argparse.Namespace) -> tuple[TrainerConfig, SearchSpace]:
    """The base config and the space, checked with the objective and the trial's resources;
    ConfigError or SpaceError names what is wrong."""
    cfg = load_config(args.config, [*args.overrides, "runtime.progress=false"])
    cfg = resolve_roots(worker_threads(cfg, args.cpus_per_worker))
    space = load_space(args.space, cfg)
    check_objective(args.metric, args.mode, args.scheduler)
    check_gpus(args.workers_per_trial, args.gpus_per_trial)
    return gpu_share(cfg, args.gpus_per_trial), space


def _settings(args: argparse.Namespace, cfg: TrainerConfig, space: SearchSpace) -> SweepSettings:
    """The sweep's settings (nothing is checked or created here)."""
    from orchestrator.tracking import resolve_tracking_uri

    out = args.out.resolve()
    return SweepSettings(
        name=args.name or time.strftime("sweep-%Y%m%d-%H%M%S"),
        base=apply_overrides(cfg, space.fixed()),
        space_path=str(args.space.resolve()),
        metric=args.metric,
        mode=args.mode,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures,
        seed=args.seed,
        out_dir=str(out),
        tracking_uri=resolve_tracking_uri(args.tracking_uri, out),
        experiment=args.experiment,
        storage=storage_path(args.storage),
        placement=args.placement.upper(),
        eval_top_k=args.eval_top_k,
        verbose=args.verbose,
    )


def _objective_text(settings: SweepSettings) -> str:
    if settings.objective.per_epoch:
        return f"at the epoch stage 1 keeps, the best {settings.objective.monitor}"
    return "each trial's final value"


def _outcome(settings: SweepSettings, results: ResultGrid, eval_failures: dict[str, str]) -> int:
    """Print the sweep's best trials; 1 when every trial failed (nothing to choose from) or a
    best trial could not be scored on the evaluation sets."""
    from orchestrator.best import print_table
    from orchestrator.tracking import query_best, safe_uri
    from orchestrator.tracking.store import ui_link

    target = settings.target
    rows = query_best(
        target.uri, target.experiment, OBJECTIVE, settings.mode, 5, target.parent_run_id
    )
    errors = len(results.errors)
    k = settings.eval_top_k
    scored = "every finished one" if k is None else f"the top {k} finished"
    print(
        f"\nsweep {settings.name}: {len(results)} trial(s), {errors} failed; "
        f"the best finished trials by {settings.metric} ({settings.mode}; objective: "
        f"{_objective_text(settings)}), test sets scored for {scored}:"
    )
    print_table(rows, OBJECTIVE)
    print(
        f"\nTune results: {settings.tune_dir}/{settings.name}"
        f"\nMLflow: {safe_uri(target.uri)}"
        f"  (supcon-sweep best --experiment {target.experiment})"
        f"\nMLflow UI: {ui_link(target.uri, target.experiment_id)}"
    )
    for trial_id, error in eval_failures.items():
        print(f"error: evaluation of trial {trial_id} failed: {error}", file=sys.stderr)
    if errors and errors == len(results):
        print(f"error: every trial of sweep {settings.name} failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if eval_failures else 0


def _preflight(base: TrainerConfig, workers: int) -> int:
    """Check every corpus once, before any trial (ConfigError when one is unusable); prints the
    counts and returns the epoch's length in batches per rank."""
    from orchestrator.preflight import check_corpora, describe, steps_per_epoch

    reports = check_corpora(base)
    print(f"corpora checked once for every trial:\n{describe(reports)}", file=sys.stderr)
    return steps_per_epoch(base, reports["train"], workers)


def _sweep(args: argparse.Namespace) -> int:
    if (args.json or args.no_data_check) and not args.dry_run:
        return bad_input("--json and --no-data-check go with --dry-run")
    try:
        cfg, space = _validated(args)
    except (ConfigError, SpaceError) as err:
        return bad_input(err)
    if args.dry_run:
        return _dry_run(args, cfg, space)
    from orchestrator.scheduling import asha_rungs
    from orchestrator.tracking import TrackingError, check_reachable

    try:
        settings = _settings(args, cfg, space)
        check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        if args.config is None:
            ensure_synthetic(cfg, DEFAULT_DATA)
        steps = _preflight(settings.base, settings.workers_per_trial)
        rungs = asha_rungs(space, settings.base, steps)
        if settings.scheduler == "asha":
            print(rungs.describe(), file=sys.stderr)
        if settings.objective.differs():
            print(settings.objective.differs(), file=sys.stderr)
        from orchestrator.sweep import run_sweep, start_ray

        start_ray(args.address, args.max_concurrent)
        settings, results, eval_failures = run_sweep(space, settings, rungs)
    except (TrackingError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    return _outcome(settings, results, eval_failures)


def _dry_run(args: argparse.Namespace, cfg: TrainerConfig, space: SearchSpace) -> int:
    """Print the plan (:mod:`orchestrator.sweep_plan`) after the checks a sweep makes before
    its first trial, none that creates anything: an embedded SQLite store is not created, and
    the default synthetic corpus, when missing, is not generated (its check is skipped)."""
    from orchestrator.preflight import check_corpora
    from orchestrator.sweep_plan import plan
    from orchestrator.tracking import TrackingError, check_reachable
    from trainer.defaults import reads_from

    settings = _settings(args, cfg, space)
    reports = None
    try:
        if "://" in settings.tracking_uri and not settings.tracking_uri.startswith("sqlite"):
            check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        missing_synth = (
            args.config is None and reads_from(cfg, DEFAULT_DATA) and not DEFAULT_DATA.exists()
        )
        if missing_synth and not args.no_data_check:
            print(
                f"note: {DEFAULT_DATA} does not exist yet; the sweep generates the synthetic "
                "corpus there first, so it is not checked now",
                file=sys.stderr,
            )
        elif not args.no_data_check:
            reports = check_corpora(settings.base)
        result = plan(settings, space, reports)
    except (TrackingError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(result.describe())
    return 0


def _space_of(settings: SweepSettings) -> SearchSpace | None:
    """The sweep's search space, for its study plots' distributions; None when its file is gone
    or changed into something invalid (the plots then use the values the trials had)."""
    try:
        return load_space(settings.space_path, settings.base)
    except (SpaceError, ConfigError, OSError):
        return None


def _resume(args: argparse.Namespace) -> int:
    folder = args.folder if "://" in args.folder else str(Path(args.folder).resolve())
    try:
        settings = SweepSettings.load(folder)
    except FileNotFoundError:
        return bad_input(f"{folder} is not a sweep folder (no {SETTINGS_FILE})")
    except (TypeError, ValueError, KeyError) as err:
        return bad_input(f"{folder}/{SETTINGS_FILE} is not readable by this version: {err}")
    from orchestrator.tracking import TrackingError, check_reachable

    try:
        check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        _preflight(settings.base, settings.workers_per_trial)
        from orchestrator.sweep import resume_sweep, start_ray

        start_ray(args.address, settings.max_concurrent)
        settings = replace(settings, verbose=args.verbose)
        settings, results, eval_failures = resume_sweep(folder, settings, _space_of(settings))
    except (TrackingError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    return _outcome(settings, results, eval_failures)
