"""``supcon-sweep cluster local up|down|status``: the multi-node rehearsal on one machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.commands.options import EXIT_FAILED, EXIT_STATUS, bad_input, whole

DEFAULT_FOLDER = Path("runs") / "cluster"
_EPILOG = (
    f"{EXIT_STATUS} `up` exits 1 when a process does not start; `status` exits 1 when a "
    "process that `up` started has died, 2 when there is no cluster in FOLDER."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser(
        "cluster",
        help="a local multi-node Ray cluster with an MLflow server (rehearsal of the cloud flow)",
        description="Cluster helpers. `cluster local` runs the cloud flow on this machine: a "
        "Ray head, more Ray nodes joined to it, and an MLflow server, all on 127.0.0.1.",
        epilog=_EPILOG,
    )
    where = cluster.add_subparsers(dest="where", required=True, metavar="WHERE")
    local = where.add_parser(
        "local",
        help="start, inspect or stop the local cluster",
        description=(
            "up: start a Ray head (token auth on, TRAIN_DRIVER slots for trial drivers), NODES "
            "more Ray nodes and an MLflow server (SQLite, artifacts under FOLDER), all bound to "
            "127.0.0.1; run again to restart whatever has died. status: addresses and live "
            "processes. down: stop exactly the processes `up` started. Then: supcon-sweep "
            "submit --address DASHBOARD ...; supcon-sweep best --tracking-uri MLFLOW. clean: "
            "stop the Ray processes that local sweeps killed with SIGKILL left running (their "
            "dashboard and runtime-env agents), and nothing else; every local sweep does this "
            "before it starts Ray."
        ),
        epilog=_EPILOG,
    )
    local.add_argument("action", choices=("up", "down", "status", "clean"))
    local.add_argument(
        "--folder",
        type=Path,
        default=DEFAULT_FOLDER,
        help=f"state, logs and the MLflow store (default {DEFAULT_FOLDER})",
    )
    local.add_argument("--nodes", type=whole(0), default=1, help="Ray nodes besides the head")
    local.add_argument("--head-cpus", type=whole(1), default=1, help="CPUs the head offers")
    local.add_argument("--worker-cpus", type=whole(1), default=1, help="CPUs each node offers")
    local.add_argument(
        "--drivers",
        type=int,
        default=2,
        help="trials that may run at once (TRAIN_DRIVER slots on the head)",
    )
    local.add_argument("--json", action="store_true", help="print the status as JSON")
    local.set_defaults(handler=_local)


def _print_status(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"Ray address   {info['address']}")
    print(f"dashboard     {info['dashboard']}   (supcon-sweep submit --address ...)")
    print(f"MLflow        {info['tracking_uri']}   (supcon-sweep best --tracking-uri ...)")
    for name, proc in info["processes"].items():
        print(f"  {name:<8} pid {proc['pid']:<8} {'alive' if proc['alive'] else 'DEAD'}")


def _local(args: argparse.Namespace) -> int:
    from orchestrator.engine import local_cluster as lc

    if args.action == "clean":
        from orchestrator.engine import leftovers

        stopped = leftovers.clean()
        print(f"stopped: {', '.join(stopped) or 'nothing was left behind'}")
        return 0
    try:
        if args.action == "up":
            spec = lc.Spec(args.nodes, args.head_cpus, args.worker_cpus, args.drivers)
            lc.up(args.folder, spec)
            _print_status(lc.status(args.folder), args.json)
        elif args.action == "status":
            info = lc.status(args.folder)
            _print_status(info, args.json)
            return 0 if all(p["alive"] for p in info["processes"].values()) else EXIT_FAILED
        else:
            stopped = lc.down(args.folder)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    except lc.StartError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except lc.ClusterError as err:
        return bad_input(err)
    return 0
