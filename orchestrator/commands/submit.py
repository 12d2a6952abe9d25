"""``supcon-sweep submit``: run a sweep on a Ray cluster as a Ray Job.

The working tree travels as the job's ``working_dir``; the entrypoint is ``supcon-sweep sweep``
with the same arguments, on the cluster's interpreter (the cluster image installs this project).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from orchestrator.commands.options import (
    DEFAULT_JOB_SERVER,
    EXIT_FAILED,
    EXIT_STATUS,
    add_ray_args,
    add_sweep_arguments,
    bad_input,
)
from orchestrator.objective import check_objective
from orchestrator.train.resources import check_gpus
from trainer.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv", ".git", "runs", "**/__pycache__", "*.db", "mlartifacts", ".pytest_cache"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="submit a sweep to a Ray cluster as a Ray Job",
        description=(
            "Submit `supcon-sweep sweep` to a Ray cluster's job server (the dashboard address, "
            "e.g. http://127.0.0.1:8265 through `ray dashboard cluster.yaml`). Prints the job "
            "id; --follow streams the job's logs until it ends."
        ),
        epilog=f"{EXIT_STATUS} Without --follow, 0 once the job is submitted.",
    )
    add_sweep_arguments(submit)
    add_ray_args(submit, job_server=True)
    submit.add_argument("--follow", action="store_true", help="stream the job's logs")
    submit.set_defaults(handler=_submit)


def entrypoint(args: argparse.Namespace) -> str:
    """The sweep command run on the cluster, as a user would write it after ``ray job submit
    --``: no address, it joins the cluster through the job's ``RAY_ADDRESS``."""
    words = ["supcon-sweep", "sweep"]
    skip = {"handler", "command", "follow", "address", "overrides"}
    for key, value in vars(args).items():
        if key == "eval_top_k" and value is None:
            value = "all"
        if key in skip or value is None or value is False:
            continue
        if value is True:  # a flag
            words.append("--" + key.replace("_", "-"))
            continue
        if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
            value = value.resolve().relative_to(ROOT)  # the working_dir is unpacked elsewhere
        if isinstance(value, float):
            value = f"{value:g}"  # --gpus-per-trial 2, not 2.0
        words += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(words + list(args.overrides))


def _submit(args: argparse.Namespace) -> int:
    try:  # what the sweep would refuse on the cluster, refused before anything is sent
        check_objective(args.metric, args.mode, args.scheduler)
        check_gpus(args.workers_per_trial, args.gpus_per_trial)
    except ConfigError as err:
        return bad_input(err)
    # Clusters keep Ray's token authentication on: send the token (RAY_AUTH_TOKEN,
    # RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) unless the user chose otherwise.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = args.address or DEFAULT_JOB_SERVER
    try:
        client = JobSubmissionClient(address)
    except AuthenticationError as err:
        return bad_input(
            f"the Ray job server at {address} refused the token: {err}\nSet "
            "RAY_AUTH_TOKEN_PATH to the cluster's token file (cluster/README.md)."
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        return bad_input(
            f"cannot reach the Ray job server at {address}: {err}\n"
            "Is the cluster up (ray up cluster/cluster.yaml), and the dashboard forwarded "
            "(ray dashboard cluster/cluster.yaml)?"
        )
    job_id = client.submit_job(
        entrypoint=entrypoint(args),
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES},
    )
    print(job_id)
    if not args.follow:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"\njob {job_id}: {status}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else EXIT_FAILED
