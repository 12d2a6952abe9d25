"""What several ``supcon-sweep`` commands share: the tracking and Ray options (one help text
each), the exit-status policy (stated once, for every ``--help``) and the quick checks that
answer "bad input" before anything heavy is imported."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tune.searcher import SEARCHERS

# One exit policy for every command: the trainer's, re-exported.
from trainer.cli import EXIT_BAD_INPUT as EXIT_BAD_INPUT
from trainer.cli import EXIT_FAILED as EXIT_FAILED
from trainer.config import TrainerConfig
from trainer.reporting import EPOCH_METRICS, FINAL_METRICS

DEFAULT_OUT = Path("runs")
DEFAULT_JOB_SERVER = "http://127.0.0.1:8265"
CHAMPION = "champion"  # the registry alias --register points at by default
DEFAULT_NUM_SAMPLES = 8

EXIT_STATUS = (
    "Exit status: 0 done; 1 the work ran and failed (a trial, a sweep in which every trial "
    "failed, a followed job); 2 bad input or a service that cannot be reached (arguments, "
    "config, search space, an unknown experiment or run, a missing store, MLflow or Ray not "
    "reachable)."
)


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum``. A bad value is refused by
    argparse before anything starts (exit 2, naming the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


def amount(*, zero: bool) -> Callable[[str], float]:
    """An argparse ``type``: a finite number above 0 (or 0 too, with ``zero``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            bound = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def add_tracking_args(parser: argparse._ActionsContainer, *, out: bool = True) -> None:
    """``--tracking-uri`` and ``--experiment``; with ``out``, also ``--out``, the folder that
    holds the embedded store. Without, the store is the default ``--out``'s."""
    store = "OUT" if out else str(DEFAULT_OUT)
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///{store}/mlflow.db)",
    )
    parser.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})",
    )
    if out:
        parser.add_argument(
            "--out",
            type=Path,
            default=DEFAULT_OUT,
            help=f"the sweep's local outputs: mlflow.db (the embedded MLflow store), "
            f"mlartifacts/, tune/, train/, trials/ (default {DEFAULT_OUT})",
        )


def add_ray_args(parser: argparse._ActionsContainer, *, job_server: bool = False) -> None:
    """``--address``: the Ray cluster to join, or (``job_server``) the cluster's job server."""
    if job_server:
        parser.add_argument(
            "--address",
            help=f"the Ray cluster's job server, its dashboard address (default "
            f"{DEFAULT_JOB_SERVER}, e.g. through `ray dashboard cluster.yaml`)",
        )
        return
    parser.add_argument(
        "--address",
        help="Ray cluster to join: HOST:PORT, ray://HOST:PORT or auto (default: the cluster "
        "in RAY_ADDRESS when set, as inside a Ray Job; else start a local Ray instance)",
    )


def bad_input(err: BaseException) -> int:
    """Print ``err`` as the one-line error of bad input; returns its exit status."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def storage_path(storage: str | None) -> str:
    """``--storage``: a shared path made absolute (Ray changes trials' working directories);
    URIs as given; "" for none."""
    if not storage or "://" in storage:
        return storage or ""
    return str(Path(storage).resolve())


DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"


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
    p.add_argument(
        "--searcher",
        choices=tuple(SEARCHERS),
        help="how trials are chosen: tpe (Optuna TPE, the default for a sampled space), random "
        "(Optuna's random sampler over the same distributions: the baseline for TPE) or grid "
        "(every point once, the default and only choice for a grid space)",
    )
    p.add_argument(
        "--num-samples",
        type=whole(1),
        help=f"trials of tpe or random (default {DEFAULT_NUM_SAMPLES}); a grid runs each of its "
        "points once and ignores it, saying so",
    )
    p.add_argument("--max-concurrent", type=whole(1), default=1, help="trials running at once")
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
    p.add_argument(
        "--no-share-prefix",
        action="store_true",
        help="train every trial from scratch. By default trials whose configs differ only in "
        "the queue's keys (queue.size, start_epoch, start_step, same_label) are one run until "
        "the earlier queue start: one trains that prefix, the others start from its checkpoint "
        "there, bit-identical on CPU to a run from scratch. A grid's tree is planned ahead "
        "(--dry-run shows it); TPE and random share what coincides, which only discrete values "
        "do: a continuous key (loguniform temperature) makes every prefix unique",
    )
    p.add_argument("--name", help="sweep name (default sweep-YYYYmmdd-HHMMSS)")
    add_verbose(p)
    add_tracking_args(p)
    add_trial_resources(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Tune's result of every epoch and Ray Train's INFO logs, with its "
        "per-rank 'Reporting training result' lines (default: Tune's table, one line per "
        "trial that ends)",
    )


def add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything the sweep would check (arguments, config, search space, the "
        "corpora, a tracking server or Ray address given) and print its plan: a grid's trials "
        "in run order, or the searcher and its domains; the shared-prefix tree and the "
        "trial-epochs it saves; the resources per trial; ASHA's first rung; the most stage-1 "
        "trial-epochs it can train. Starts nothing, writes nothing; "
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


def add_start_timeout(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--start-timeout",
        type=amount(zero=False),
        default=600.0,
        metavar="SECONDS",
        help="how long a trial's workers may wait for the CPUs and GPUs they ask for before the "
        "trial fails, naming what it asked and what the cluster has (default 600; raise it for "
        "an autoscaling cluster that adds nodes). Counted in Ray Train's start attempts "
        "(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s each)",
    )


def add_trial_resources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers-per-trial", type=whole(1), default=2, help="Ray Train workers (DDP ranks)"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=amount(zero=True),
        default=0,
        help="GPUs per trial: one per worker, or a share (0.5, 0.25) of one GPU for a one-worker "
        "trial, packing 2 or 4 trials per GPU; 0 runs gloo on CPUs",
    )
    p.add_argument("--cpus-per-worker", type=amount(zero=False), default=1.0)
    p.add_argument(
        "--max-failures",
        type=whole(0),
        default=2,
        help="worker-group restarts from the last checkpoint per trial",
    )
    add_start_timeout(p)
    p.add_argument(
        "--storage",
        help="where Tune results and Train checkpoints go: storage every node reaches, a shared "
        "path or a URI such as s3://BUCKET/ray (default OUT)",
    )
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="the Optuna RDB storage the sweep's study lives in, named SWEEP-<parent run id>, "
        "where `optuna-dashboard URL` shows it live (default SUPCON_OPTUNA_STORAGE, else "
        "sqlite:///OUT/optuna.db; `none` keeps it in memory)",
    )
    p.add_argument(
        "--placement",
        choices=("pack", "spread"),
        default="pack",
        help="a trial's workers on as few nodes as possible (pack, the default: fast NVLink "
        "collectives) or one per node where possible (spread)",
    )


def preflight(base: TrainerConfig, workers: int, unit: str) -> int:
    """Check every corpus once, before any trial or rerun (``unit``) starts (ConfigError when
    one is unusable); prints the counts and returns the epoch's length in batches per rank."""
    from orchestrator.tune.preflight import check_corpora, describe, steps_per_epoch

    reports = check_corpora(base)
    print(f"corpora checked once for every {unit}:\n{describe(reports)}", file=sys.stderr)
    return steps_per_epoch(base, reports["train"], workers)
