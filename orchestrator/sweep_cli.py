"""``supcon-sweep sweep`` and ``supcon-sweep resume``."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from trainer.config import ConfigError, load_config, resolve_roots
from trainer.defaults import DEFAULT_DATA, ensure_synthetic

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
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
        help="ASHA early stopping on the per-epoch metric (default) or none",
    )
    p.add_argument(
        "--metric",
        default="encoder/dev/eer",
        help="objective (default encoder/dev/eer, a dev-set metric reported per epoch)",
    )
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--workers-per-trial", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus-per-trial", type=int, default=0, help="0 runs gloo on CPUs")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker-group restarts from the last checkpoint per trial",
    )
    p.add_argument("--seed", type=int, default=0, help="searcher seed")
    p.add_argument("--name", help="sweep name (default sweep-YYYYmmdd-HHMMSS)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow URI (default MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db)",
    )
    p.add_argument("--experiment", default="supcon-sweep", help="MLflow experiment")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="local outputs: mlflow.db, mlartifacts/, tune/, train/, trials/",
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
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides")


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
    )
    add_sweep_arguments(sweep)
    sweep.set_defaults(handler=_sweep)
    resume = subparsers.add_parser(
        "resume",
        help="resume an interrupted sweep from its Tune folder",
        description="Restore a sweep (Tuner.restore): finished trials are kept, unfinished ones "
        "restart from their checkpoints, the searcher continues from its saved state.",
    )
    resume.add_argument(
        "folder", help="the sweep's folder: OUT/tune/NAME, or STORAGE/tune/NAME (path or URI)"
    )
    resume.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    resume.set_defaults(handler=_resume)


def _settings(args: argparse.Namespace):
    from orchestrator.sweep import SweepSettings
    from orchestrator.tracking import check_reachable, resolve_tracking_uri
    from search_spaces import apply_params, load_space

    cfg = load_config(args.config, [*args.overrides, "runtime.progress=false"])
    if cfg.runtime.threads is None:
        cfg = apply_params(cfg, {"runtime.threads": max(1, int(args.cpus_per_worker))})
    cfg = resolve_roots(cfg)
    if args.config is None:
        ensure_synthetic(cfg, DEFAULT_DATA)
    space = load_space(args.space, cfg)
    if args.scheduler == "asha" and not args.metric.startswith("encoder/"):
        raise ConfigError(
            f"--scheduler asha needs a per-epoch metric (encoder/...), got "
            f"{args.metric}; use --scheduler none"
        )
    if args.metric.startswith("eval/"):
        print(
            f"note: {args.metric} is a test-set metric; selecting on it makes the reported "
            "test EER optimistic (prefer a dev metric)",
            file=sys.stderr,
        )
    out = args.out.resolve()
    uri = resolve_tracking_uri(args.tracking_uri, out)
    check_reachable(uri)
    settings = SweepSettings(
        name=args.name or time.strftime("sweep-%Y%m%d-%H%M%S"),
        base=apply_params(cfg, space.fixed()).model_dump(mode="json"),
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
        mlflow={"uri": uri, "experiment": args.experiment},
        storage=_storage(args.storage),
        placement=args.placement.upper(),
    )
    return space, settings


def _storage(storage: str | None) -> str:
    """A shared path made absolute (Ray changes trials' working directories); URIs as given."""
    if not storage or "://" in storage:
        return storage or ""
    return str(Path(storage).resolve())


def _print_best(settings, results) -> None:
    from orchestrator.best import print_table
    from orchestrator.tracking import query_best, safe_uri

    rows = query_best(
        settings.mlflow["uri"],
        settings.mlflow["experiment"],
        metric=settings.metric,
        mode=settings.mode,
        top=5,
        parent_run_id=settings.mlflow.get("parent_run_id"),
    )
    errors = len(results.errors)
    print(
        f"\nsweep {settings.name}: {len(results)} trial(s), {errors} failed; "
        f"best by {settings.metric} ({settings.mode}):"
    )
    print_table(rows, settings.metric)
    print(
        f"\nTune results: {settings.tune_dir}/{settings.name}"
        f"\nMLflow: {safe_uri(settings.mlflow['uri'])}"
        f"  (supcon-sweep best --experiment {settings.mlflow['experiment']})"
    )


def _sweep(args: argparse.Namespace) -> int:
    from orchestrator.sweep import run_sweep, start_ray
    from orchestrator.tracking import TrackingError
    from search_spaces import SpaceError

    try:
        space, settings = _settings(args)
        start_ray(args.address, args.max_concurrent)
        results = run_sweep(space, settings)
    except (ConfigError, SpaceError, TrackingError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_best(settings, results)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from orchestrator.sweep import SETTINGS, SweepSettings, resume_sweep, start_ray

    folder = args.folder if "://" in args.folder else str(Path(args.folder).resolve())
    try:
        settings = SweepSettings.load(folder)
    except FileNotFoundError:
        print(f"error: {folder} is not a sweep folder (no {SETTINGS})", file=sys.stderr)
        return 2
    start_ray(args.address, settings.max_concurrent)
    results = resume_sweep(folder, replace(settings))
    _print_best(settings, results)
    return 0


def add_trial_ray_arguments(trial: argparse.ArgumentParser) -> None:
    """``supcon-sweep trial --ray``: the trainer's trial command, run through Ray Train."""
    group = trial.add_argument_group("through Ray Train (the code path of a sweep trial)")
    group.add_argument("--ray", action="store_true", help="run the trial as a Ray Train run")
    group.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    group.add_argument("--gpus", type=int, default=0, help="GPUs for the trial (0: gloo on CPU)")
    group.add_argument("--cpus-per-worker", type=float, default=1.0)
    group.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    group.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///runs/mlflow.db)")
    group.add_argument("--experiment", default="supcon-sweep", help="MLflow experiment")
    plain = trial.get_default("handler")
    trial.set_defaults(handler=lambda args: _trial_on_ray(args) if args.ray else plain(args))


def _trial_on_ray(args: argparse.Namespace) -> int:
    from orchestrator.sweep import SweepSettings, run_single_trial, start_ray
    from orchestrator.tracking import TrackingError, check_reachable, resolve_tracking_uri

    try:
        cfg = resolve_roots(load_config(args.config, [*args.overrides, "runtime.progress=false"]))
        if args.config is None:
            ensure_synthetic(cfg, DEFAULT_DATA)
        out = args.out.resolve()
        uri = resolve_tracking_uri(args.tracking_uri, Path("runs"))
        check_reachable(uri)
        settings = SweepSettings(
            name=time.strftime("trial-%Y%m%d-%H%M%S"),
            base=cfg.model_dump(mode="json"),
            space_path="",
            metric="encoder/dev/eer",
            mode="min",
            num_samples=1,
            max_concurrent=1,
            scheduler="none",
            workers_per_trial=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_trial=args.gpus,
            max_failures=0,
            seed=cfg.seed,
            out_dir=str(out),
            mlflow={"uri": uri, "experiment": args.experiment},
        )
        start_ray(args.address, 1)
        metrics = run_single_trial(settings)
    except (ConfigError, TrackingError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    eers = {k: v for k, v in metrics.items() if k.endswith("/eer") and k.count("/") == 2}
    for key, value in sorted(eers.items()):
        print(f"{key:<28} {100 * value:6.2f} %")
    print(f"outputs in {out / 'trials' / settings.name}")
    return 0
