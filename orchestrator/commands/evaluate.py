"""``supcon-sweep evaluate``: score a finished trial on the evaluation sets, into its own run."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from orchestrator.commands.options import (
    EXIT_FAILED,
    EXIT_STATUS,
    add_ray_args,
    add_tracking_args,
    bad_input,
)
from orchestrator.engine.session import check_ray_address


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a finished trial on the evaluation (test) sets, into its MLflow run",
        description=(
            "Load a finished trial's final model from its storage (the run's supcon.model_uri "
            "tag), score the evaluation sets of its config and log eval/<set>/eer (per attack, "
            "the pooled figures when every set is scored), the score files and the DET plot "
            "into the trial's MLflow run; its status is unchanged. A set the run already has is "
            "skipped unless --force. Runs in this process, or on the cluster at --address with "
            "the trial's own resources."
        ),
        epilog=EXIT_STATUS,
    )
    p.add_argument("--run-id", required=True, help="the trial's MLflow run id")
    p.add_argument(
        "--sets",
        type=_set_names,
        help="comma-separated evaluation sets, e.g. asv19,itw,asv21la,asv21df (default: every "
        "set of the trial's config)",
    )
    p.add_argument("--force", action="store_true", help="score sets the run already has again")
    add_tracking_args(p)
    add_ray_args(p)
    p.set_defaults(handler=_evaluate)


def _set_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got {text!r}")
    return names


def _run(job, address: str | None) -> dict[str, float] | str:
    """The metrics logged (in this process), or the error of a failed set."""
    from orchestrator.train.evaluation import SetFailedError, run_job

    if address:
        from orchestrator.engine.session import start_ray
        from orchestrator.train.evaluator import evaluate_on_ray

        start_ray(address, 1)
        return evaluate_on_ray([job])[job.run_id] or {}
    scratch = Path(tempfile.mkdtemp(prefix="supcon-eval-"))
    try:
        return run_job(job, scratch, progress=True)
    except SetFailedError as err:
        return str(err)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _evaluate(args: argparse.Namespace) -> int:
    from orchestrator.tracking import Tracking, TrackingError, check_reachable, resolve_tracking_uri
    from orchestrator.train.evaluation import EvaluationError, plan

    try:
        uri = resolve_tracking_uri(args.tracking_uri, args.out)
        check_reachable(uri)
        check_ray_address(args.address)
        tracking = Tracking.at(uri, args.experiment)
        experiment_id = tracking.experiment_id()
        job = plan(tracking, args.run_id, args.sets, force=args.force, experiment_id=experiment_id)
    except (TrackingError, EvaluationError, ConnectionError) as err:
        return bad_input(err)
    if job is None:
        print(f"run {args.run_id} already has every asked set (--force scores them again)")
        return 0
    print(f"scoring {', '.join(job.sets)} for trial {job.trial_id} (run {job.run_id})")
    outcome = _run(job, args.address)
    if isinstance(outcome, str):
        print(f"error: {outcome}", file=sys.stderr)
        return EXIT_FAILED
    for key, value in sorted(outcome.items()):
        if key.endswith("/eer"):
            print(f"{key:<28} {100 * value:6.2f} %")
    return 0
