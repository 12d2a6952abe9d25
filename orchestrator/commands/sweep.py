"""``supcon-sweep sweep`` and ``supcon-sweep resume``.

Arguments, the config and the search space are checked first, with nothing heavy imported;
then the MLflow store and the Ray cluster are reached; only then does any work start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.commands.options import (
    DEFAULT_NUM_SAMPLES,
    EXIT_FAILED,
    EXIT_STATUS,
    add_dry_run,
    add_ray_args,
    add_sweep_arguments,
    add_verbose,
    bad_input,
    preflight,
    storage_path,
)
from orchestrator.engine.session import check_local_resources, check_ray_address
from orchestrator.objective import OBJECTIVE, check_objective
from orchestrator.settings import OPTUNA_STORAGE_VAR, SETTINGS_FILE, SweepSettings
from orchestrator.train.resources import check_gpus, gpu_share, worker_threads
from search_spaces import SearchSpace, SpaceError, load_space
from trainer.config import ConfigError, TrainerConfig, apply_overrides, load_config, resolve_roots
from trainer.defaults import DEFAULT_DATA, ensure_synthetic

if TYPE_CHECKING:
    from ray.tune import ResultGrid

SWEEP_STATUS = (
    "A sweep exits 1 when every trial failed or a best trial could not be scored on the test "
    "sets; when only some trials failed it exits 0, its MLflow parent run is FAILED and the "
    "table lists the trials that finished."
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
    add_dry_run(sweep)
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
    add_verbose(resume)
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


def _num_samples(asked: int | None, space: SearchSpace) -> int:
    """``--num-samples`` for a sampled space; a grid runs each point once, so a number given
    for one is ignored, and said to be."""
    if space.is_grid and asked is not None:
        points = len(space.grid_points())
        print(
            f"--num-samples {asked} ignored: {space.path} is a grid, each of its {points} "
            "points runs once",
            file=sys.stderr,
        )
    return asked or DEFAULT_NUM_SAMPLES


def _optuna_storage(url: str | None, out: Path) -> str:
    """``--optuna-storage``, else ``SUPCON_OPTUNA_STORAGE``, else ``sqlite:///OUT/optuna.db``;
    "" for ``none`` (the study in memory, as before)."""
    chosen = url or os.environ.get(OPTUNA_STORAGE_VAR) or f"sqlite:///{out / 'optuna.db'}"
    if "@" in chosen.split("://", 1)[-1].split("/", 1)[0]:
        # the URL is saved with the sweep's settings and printed: no credentials in it
        raise ConfigError(
            "--optuna-storage: the URL holds credentials; give the database's password its "
            "own way (PGPASSWORD or ~/.pgpass for PostgreSQL, MySQL's option file)"
        )
    return "" if chosen.lower() == "none" else chosen


def _settings(args: argparse.Namespace, cfg: TrainerConfig, space: SearchSpace) -> SweepSettings:
    """The sweep's settings (nothing is checked or created here)."""
    from orchestrator.settings import TrackingTarget
    from orchestrator.tracking import resolve_tracking_uri
    from orchestrator.tune.searcher import check_searcher

    out = args.out.resolve()
    return SweepSettings(
        name=args.name or time.strftime("sweep-%Y%m%d-%H%M%S"),
        base=apply_overrides(cfg, space.fixed()),
        space_path=str(args.space.resolve()),
        metric=args.metric,
        mode=args.mode,
        num_samples=_num_samples(args.num_samples, space),
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures,
        start_timeout_s=args.start_timeout,
        seed=args.seed,
        out_dir=str(out),
        tracking=TrackingTarget(resolve_tracking_uri(args.tracking_uri, out), args.experiment),
        searcher=check_searcher(args.searcher, space),
        storage=storage_path(args.storage),
        optuna_storage=_optuna_storage(args.optuna_storage, out),
        placement=args.placement.upper(),
        eval_top_k=args.eval_top_k,
        verbose=args.verbose,
        share_prefix=not args.no_share_prefix,
    )


def _objective_text(settings: SweepSettings) -> str:
    if settings.objective.per_epoch:
        return f"at the epoch stage 1 keeps, the best {settings.objective.monitor}"
    return "each trial's final value"


def _print_failed(runs: list) -> None:
    """The sweep's failed trials, each with its cause (its run's :data:`ERROR_TAG`)."""
    from orchestrator.tracking import ERROR_TAG
    from orchestrator.tracking.store import TRIAL_TAG

    failed = [r for r in runs if r.info.status == "FAILED"]
    if failed:
        print(f"\nfailed trials ({len(failed)}):")
    for run in failed:
        cause = run.data.tags.get(ERROR_TAG, "cause not recorded")
        print(f"  {run.data.tags.get(TRIAL_TAG, run.info.run_id)}: {cause}")


def _outcome(settings: SweepSettings, results: ResultGrid, eval_failures: dict[str, str]) -> int:
    """Print the sweep's best trials; 1 when every trial failed (nothing to choose from) or a
    best trial could not be scored on the evaluation sets."""
    from orchestrator.reports.best import print_table
    from orchestrator.tracking import Tracking, safe_uri
    from orchestrator.tracking.store import ui_link

    target = settings.target
    rows = Tracking(target).best(OBJECTIVE, settings.mode, 5, target.parent_run_id)
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
    if settings.optuna_storage:
        from orchestrator.tune.study import dashboard_command

        print(
            f"Optuna study {settings.study_name}: {safe_uri(settings.optuna_storage)}"
            f"\n  live: {dashboard_command(safe_uri(settings.optuna_storage))}"
        )
    _print_failed(Tracking(target).trial_runs())
    for trial_id, error in eval_failures.items():
        print(f"error: evaluation of trial {trial_id} failed: {error}", file=sys.stderr)
    if errors and errors == len(results):
        print(f"error: every trial of sweep {settings.name} failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if eval_failures else 0


def _sweep(args: argparse.Namespace) -> int:
    if (args.json or args.no_data_check) and not args.dry_run:
        return bad_input("--json and --no-data-check go with --dry-run")
    try:
        cfg, space = _validated(args)
    except (ConfigError, SpaceError) as err:
        return bad_input(err)
    if args.dry_run:
        return _dry_run(args, cfg, space)
    from orchestrator.tracking import TrackingError, check_reachable
    from orchestrator.tune.scheduling import asha_rungs

    try:
        settings = _settings(args, cfg, space)
        check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        check_local_resources(
            args.address,
            settings.workers_per_trial,
            settings.cpus_per_worker,
            settings.gpus_per_trial,
        )
        if args.config is None:
            ensure_synthetic(cfg, DEFAULT_DATA)
        steps = preflight(settings.base, settings.workers_per_trial, "trial")
        rungs = asha_rungs(space, settings.base, steps)
        if settings.scheduler == "asha":
            print(rungs.describe(), file=sys.stderr)
        if settings.objective.differs():
            print(settings.objective.differs(), file=sys.stderr)
        from orchestrator.engine.session import start_ray
        from orchestrator.engine.sweep import run_sweep

        start_ray(args.address, args.max_concurrent)
        if settings.optuna_storage:
            from orchestrator.tracking import safe_uri
            from orchestrator.tune.study import dashboard_command

            print(
                f"the search, live: {dashboard_command(safe_uri(settings.optuna_storage))}",
                file=sys.stderr,
            )
        settings, results, eval_failures = run_sweep(space, settings, rungs)
    except (TrackingError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    return _outcome(settings, results, eval_failures)


def _dry_run(args: argparse.Namespace, cfg: TrainerConfig, space: SearchSpace) -> int:
    """Print the plan (:mod:`orchestrator.tune.plan`) after the checks a sweep makes before
    its first trial, none that creates anything: an embedded SQLite store is not created, and
    the default synthetic corpus, when missing, is not generated (its check is skipped)."""
    from orchestrator.tracking import TrackingError, check_reachable
    from orchestrator.tune.plan import plan
    from orchestrator.tune.preflight import check_corpora
    from trainer.defaults import reads_from

    try:
        settings = _settings(args, cfg, space)
    except ConfigError as err:
        return bad_input(err)
    reports = None
    try:
        if "://" in settings.tracking_uri and not settings.tracking_uri.startswith("sqlite"):
            check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        try:  # a plan for a cluster is often made on a laptop: said, not refused
            check_local_resources(
                args.address,
                settings.workers_per_trial,
                settings.cpus_per_worker,
                settings.gpus_per_trial,
            )
        except ConfigError as err:
            print(
                f"note: started here without --address, the sweep would stop: {err}",
                file=sys.stderr,
            )
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
        from orchestrator.tune.tuner import check_resumable

        check_resumable(folder)  # before Ray starts or MLflow is touched
        check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        check_local_resources(
            args.address,
            settings.workers_per_trial,
            settings.cpus_per_worker,
            settings.gpus_per_trial,
        )
        preflight(settings.base, settings.workers_per_trial, "trial")
        from orchestrator.engine.session import start_ray
        from orchestrator.engine.sweep import resume_sweep

        start_ray(args.address, settings.max_concurrent)
        settings = replace(settings, verbose=args.verbose)
        settings, results, eval_failures = resume_sweep(folder, settings, _space_of(settings))
    except (TrackingError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    return _outcome(settings, results, eval_failures)
