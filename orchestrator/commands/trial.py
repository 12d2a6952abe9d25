"""``supcon-sweep trial``: one trial, in this process (the trainer's own command) or, with
``--ray``, as a Ray Train run: the code path of a sweep trial, tracked in MLflow as a one-trial
sweep."""

from __future__ import annotations

import argparse
import sys
import time

from orchestrator.commands.options import (
    DEFAULT_OUT,
    EXIT_FAILED,
    EXIT_STATUS,
    add_ray_args,
    add_start_timeout,
    add_tracking_args,
    amount,
    bad_input,
    whole,
)
from orchestrator.engine.session import check_local_resources, check_ray_address
from orchestrator.settings import SweepSettings, TrackingTarget, TrialResources
from orchestrator.train.resources import check_gpus, gpu_share, worker_threads
from trainer import cli as trainer_cli
from trainer.config import ConfigError, TrainerConfig, load_config, resolve_roots
from trainer.defaults import DEFAULT_DATA, ensure_synthetic


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    trial = subparsers.add_parser(
        "trial",
        help="run one trial: stage 1, stage 2, evaluation (locally, or through Ray Train)",
        description=(
            "Run one trial of the two-stage trainer in this process (or as DDP under torchrun). "
            "With no arguments: the local default on the synthetic corpus, generated into "
            "runs/data if missing. With --ray: the same trial as a Ray Train run over "
            "--workers-per-trial workers, tracked in MLflow like a sweep of one trial."
        ),
        epilog=EXIT_STATUS,
    )
    trainer_cli.add_arguments(trial)
    group = trial.add_argument_group("through Ray Train (the code path of a sweep trial)")
    group.add_argument("--ray", action="store_true", help="run the trial as a Ray Train run")
    group.add_argument(
        "--workers-per-trial",
        "--workers",
        dest="workers",
        type=whole(1),
        help="Ray Train workers (DDP ranks; default: the config's runtime.world_size, else 2)",
    )
    group.add_argument(
        "--gpus-per-trial",
        "--gpus",
        dest="gpus",
        type=amount(zero=True),
        default=0,
        help="GPUs for the trial: one per worker, or a share (0.5, 0.25) of one GPU for one "
        "worker (0: gloo on CPU)",
    )
    group.add_argument("--cpus-per-worker", type=amount(zero=False), default=1.0)
    add_start_timeout(group)
    add_ray_args(group)
    add_tracking_args(group, out=False)
    trial.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The ``trial`` handler: through Ray Train with ``--ray``, else the trainer's own, whose
    final model folder is then made an MLflow model (as a sweep trial's is)."""
    if args.ray:
        return _on_ray(args)
    code = trainer_cli.run(args)
    model = args.out.resolve() / "model"
    if code == 0 and (model / "decision.json").is_file():
        from orchestrator.tracking.pyfunc import make_mlflow_model

        make_mlflow_model(model)
        print(f"the final model is an MLflow model: mlflow.pyfunc.load_model({str(model)!r})")
    return code


def _settings(args: argparse.Namespace, cfg: TrainerConfig) -> SweepSettings:
    """A sweep of this one trial, named ``trial-YYYYmmdd-HHMMSS``."""
    from orchestrator.tracking import resolve_tracking_uri

    return SweepSettings.one_trial(
        time.strftime("trial-%Y%m%d-%H%M%S"),
        cfg,
        TrialResources(args.workers, args.gpus, args.cpus_per_worker),
        out_dir=str(args.out.resolve()),
        start_timeout_s=args.start_timeout,
        tracking=TrackingTarget(
            resolve_tracking_uri(args.tracking_uri, DEFAULT_OUT), args.experiment
        ),
    )


def _on_ray(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, [*args.overrides, "runtime.progress=false"])
        cfg = resolve_roots(worker_threads(cfg, args.cpus_per_worker))
        args.workers = args.workers or cfg.runtime.world_size or 2
        trainer_cli.check_out(args.out.resolve())
        check_gpus(args.workers, args.gpus)
        cfg = gpu_share(cfg, args.gpus)
        if cfg.runtime.world_size not in (None, args.workers):
            raise ConfigError(
                f"--workers-per-trial {args.workers}, but the config's runtime.world_size is "
                f"{cfg.runtime.world_size} (its global batch); drop --workers-per-trial, or set "
                "runtime.world_size=null to accept the change"
            )
    except ConfigError as err:
        return bad_input(err)
    from orchestrator.tracking import TrackingError, check_reachable

    settings = _settings(args, cfg)
    try:
        check_reachable(settings.tracking_uri)
        check_ray_address(args.address)
        check_local_resources(args.address, args.workers, args.cpus_per_worker, args.gpus)
    except (TrackingError, ConnectionError, ConfigError) as err:
        return bad_input(err)
    from ray.train import TrainingFailedError

    from orchestrator.engine.session import start_ray
    from orchestrator.engine.trial import run_single_trial
    from orchestrator.train.trainer import TrialStartError

    try:
        start_ray(args.address, 1)
        if args.config is None:
            ensure_synthetic(cfg, DEFAULT_DATA)
        metrics = run_single_trial(settings)
    except (TrackingError, ConnectionError) as err:
        return bad_input(err)
    except (TrainingFailedError, TrialStartError) as err:
        print(f"error: trial {settings.name} failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    eers = {k: v for k, v in metrics.items() if k.endswith("/eer") and k.count("/") == 2}
    for key, value in sorted(eers.items()):
        print(f"{key:<28} {100 * value:6.2f} %")
    print(f"outputs in {settings.trials_dir}/{settings.name}")
    return 0
