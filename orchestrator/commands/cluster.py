"""``supcon-sweep cluster local up|down|status``: the multi-node rehearsal on one machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from orchestrator import mlflow_server as srv
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
            "more Ray nodes and the cluster's MLflow server (`cluster server`: PostgreSQL, "
            "basic-auth, the sweep user's credentials in FOLDER/mlflow/secrets/sweep.env and "
            "in every Ray node's environment), all bound to 127.0.0.1; run again to restart "
            "whatever has died. status: addresses and live "
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
    local.add_argument(
        "--backend",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="the MLflow server's store: a PostgreSQL server of its own, with MLflow's "
        "basic-auth (as on a cluster; default), or SQLite with one worker and no "
        "authentication (the old rehearsal)",
    )
    local.set_defaults(handler=_local)

    server = where.add_parser(
        "server",
        help="run the team's MLflow server (PostgreSQL + basic-auth) in the foreground",
        description=(
            "The MLflow server a cluster runs: a PostgreSQL server of its own (initialised in "
            "FOLDER/postgres on first use, on 127.0.0.1 only) or --database-url, MLflow's "
            "basic-auth app with an admin whose password is generated into FOLDER/secrets "
            "(mode 700), the sweep user of --users (created, or its password updated), and "
            f"{srv.WORKERS} server workers with pools sized so that concurrent log_batch calls "
            "cannot starve each other of connections. Runs until stopped (SIGTERM/SIGINT) or "
            "until MLflow or PostgreSQL exits, and stops the other."
        ),
        epilog="Exit status: 1 when a part does not start or one of the servers exits.",
    )
    server.add_argument("--folder", type=Path, required=True, help="data, secrets and logs")
    server.add_argument("--host", default="127.0.0.1", help="MLflow's address (default loopback)")
    server.add_argument("--port", type=whole(1), default=5000, help="MLflow's port")
    server.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    server.add_argument(
        "--database-url",
        default=os.environ.get(srv.DATABASE_URL_VAR),
        help="an external PostgreSQL (postgresql://USER@HOST:PORT/DB, no password: libpq "
        f"reads PGPASSWORD); default {srv.DATABASE_URL_VAR}, else a server of its own",
    )
    server.add_argument(
        "--pg-port", type=whole(1), default=5432, help="port of its own PostgreSQL (127.0.0.1)"
    )
    server.add_argument("--workers", type=whole(1), help="MLflow server workers")
    server.add_argument(
        "--artifacts-destination",
        dest="artifacts",
        help="where artifacts are kept (s3://..., default FOLDER/mlartifacts); clients upload "
        "through the server",
    )
    server.add_argument("--allowed-hosts", help="Host headers MLflow accepts (mlflow server's)")
    server.add_argument(
        "--users",
        type=Path,
        help=f"the sweep user's credentials file ({srv.USER_VAR}=..., {srv.PASSWORD_VAR}=..., "
        "mode 600); generated when missing (default FOLDER/secrets/sweep.env)",
    )
    server.add_argument(
        "--users-from-env",
        action="store_true",
        help=f"take the sweep user from {srv.USER_VAR}/{srv.PASSWORD_VAR} instead (a "
        "Kubernetes Secret's envFrom); the MLflow server itself never sees them",
    )
    server.set_defaults(handler=_server)

    creds = where.add_parser(
        "credentials",
        help="generate the sweep user's MLflow credentials file",
        description=(
            f"Write FILE with {srv.USER_VAR} and a new random {srv.PASSWORD_VAR}, mode 600, "
            "unless it exists. `set -a; . FILE; set +a` puts them in a shell's environment, "
            "where MLflow's client reads them."
        ),
    )
    creds.add_argument("file", type=Path)
    creds.add_argument("--user", default=srv.SWEEP_USER, help="the MLflow user name")
    creds.set_defaults(handler=_credentials)


def _server(args: argparse.Namespace) -> int:
    spec = srv.ServerSpec(
        folder=args.folder,
        host=args.host,
        port=args.port,
        backend=args.backend,
        database_url=args.database_url,
        pg_port=args.pg_port,
        workers=args.workers,
        artifacts=args.artifacts,
        allowed_hosts=args.allowed_hosts,
        users=args.users,
        users_from_env=args.users_from_env,
    )
    return srv.serve(spec)


def _credentials(args: argparse.Namespace) -> int:
    existed = args.file.expanduser().is_file()
    try:
        user, _ = srv.user_credentials(args.file, args.user)
    except srv.ServerError as err:
        return bad_input(err)
    print(f"{'kept' if existed else 'wrote'} {args.file} (MLflow user {user})")
    return 0


def _print_status(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"Ray address   {info['address']}")
    print(f"dashboard     {info['dashboard']}   (supcon-sweep submit --address ...)")
    print(f"MLflow        {info['tracking_uri']}   (supcon-sweep best --tracking-uri ...)")
    if info.get("credentials"):
        print(f"MLflow login  set -a; . {info['credentials']}; set +a")
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
            spec = lc.Spec(args.nodes, args.head_cpus, args.worker_cpus, args.drivers, args.backend)
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
