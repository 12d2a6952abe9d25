"""Helpers shared by test modules (test modules never import from each other)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SPACE = ROOT / "search_spaces" / "smoke.yaml"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.5 s; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def checkpoint_dirs(train_dir: Path) -> list[Path]:
    """The checkpoint folders Ray Train keeps in a storage's ``train/`` (``TRIAL/checkpoint_*``,
    not its ``checkpoint_manager_snapshot.json``)."""
    return [p for p in train_dir.glob("*/checkpoint_*") if p.is_dir()]


def data_overrides(synth_root: Path, epochs: int = 3) -> list[str]:
    """Trainer overrides for a trial that takes seconds on the synthetic corpus: tiny model,
    half-second crops, two batches per epoch, two evaluation sets."""
    la, itw = synth_root / "LA", synth_root / "itw"
    return [
        f"data.train.root={la}",
        f"data.dev.root={la}",
        f"data.eval={{asv19: {{kind: asvspoof2019, root: {la}, split: eval}}, "
        f"itw: {{kind: itw, root: {itw}}}}}",
        "data.train_crop.seconds=0.5",
        "data.eval_crop.seconds=0.5",
        "data.sampler.batch_size=8",
        "data.sampler.batches_per_epoch=2",
        f"stage1.epochs={epochs}",
        "stage1.patience=null",
        "stage2.epochs=5",
        "runtime.threads=1",
    ]


def micro(synth_root: Path, epochs: int = 3) -> list[str]:
    """:func:`data_overrides` with the queue on from epoch 1 and no progress bars."""
    return [
        *data_overrides(synth_root, epochs),
        "queue.size=24",
        "queue.start_epoch=1",
        "runtime.progress=false",
    ]


def sweep_args(out: Path, synth_root: Path, *extra: str, workers: int = 2) -> list[str]:
    """``supcon-sweep sweep`` arguments for the 2-trial smoke sweep, ``workers`` gloo workers
    per trial (2: DDP; 1 where DDP is not what a test checks: a Train worker costs seconds to
    start), no test-set scoring afterwards (``extra`` may ask for it: the last
    ``--eval-top-k`` wins)."""
    return [
        "sweep",
        "--space",
        str(SMOKE_SPACE),
        "--out",
        str(out),
        "--workers-per-trial",
        str(workers),
        "--cpus-per-worker",
        str(1.0 / workers),
        "--max-concurrent",
        "2",
        "--scheduler",
        "none",
        "--name",
        "smoke",
        "--eval-top-k",
        "0",
        *extra,
        *data_overrides(synth_root),
    ]


def use_ray_token_auth() -> None:
    """One Ray auth mode for the whole test process, as on a real cluster: token.

    Called by the conftests of the tests that use Ray, before anything imports Ray (its
    processes read the mode once), so tests that start Ray, talk to a job server or check the
    cluster configs agree on it whatever order they run in. On a fresh machine Ray's default
    token is created first, through Ray's own CLI (its output, the token, is discarded).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] != "token" or "RAY_AUTH_TOKEN" in os.environ:
        return
    if not (Path.home() / ".ray" / "auth_token").is_file():
        ray_cli = Path(sys.executable).parent / "ray"
        subprocess.run(
            [str(ray_cli), "get-auth-token", "--generate"],
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=120,
        )


@contextmanager
def gloo_rank(world_rank: int, world_size: int, port: int) -> Iterator[None]:
    """Inside a test's worker process: join a ``world_size``-rank gloo group on 127.0.0.1 as
    ``world_rank`` (as torchrun's environment would), one torch thread; destroyed on exit."""
    import torch

    from trainer import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(world_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(world_rank),
    )
    torch.set_num_threads(1)
    assert distributed.init_from_env("gloo")
    try:
        yield
    finally:
        distributed.destroy()


def listeners(pid: int) -> set[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every TCP socket ``pid`` and its descendants
    listen on now: a local Ray instance's GCS, raylet, dashboard, agents and workers."""
    import ipaddress

    import psutil

    found = set()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for proc in procs:
        try:
            name = proc.name()
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                ip = ipaddress.ip_address(conn.laddr.ip)
                ip = getattr(ip, "ipv4_mapped", None) or ip
                found.add((name, proc.pid, str(ip), conn.laddr.port))
    return found


def off_loopback(found: set[tuple[str, int, str, int]]) -> list[tuple[str, int, str, int]]:
    """The listeners not bound to loopback, except one per Ray Train worker process:
    PyTorch's rendezvous store (TCPStore, on rank 0), which PyTorch 2.14 binds on every
    interface and offers no address for."""
    import ipaddress
    from collections import Counter

    outside = [e for e in found if not ipaddress.ip_address(e[2]).is_loopback]
    # a process's title changes as it works (ray::RayTrainWorker.run_train_fn): count ports
    ports = {(e[1], e[3]) for e in outside if e[0].startswith("ray::RayTrainWo")}
    per_trainer = Counter(pid for pid, _ in ports)
    return [e for e in outside if per_trainer.get(e[1], 0) != 1]


def cli_env() -> dict[str, str]:
    """The environment of a ``supcon-sweep`` subprocess joining the tests' Ray (token auth)."""
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}


def run_cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m orchestrator.cli ARGV`` run to its end from the repository root, its output
    captured."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *argv],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def process_tree(pid: int) -> list:
    """The live process ``pid`` and all its descendants (psutil processes)."""
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@contextmanager
def team_mlflow(folder: Path) -> Iterator:
    """The team MLflow server (``supcon-sweep cluster server``: PostgreSQL + basic-auth) in
    ``folder`` on free loopback ports, as ``bench/mlflow_load.py`` starts it; once stopped
    (SIGTERM), nothing of it may be left running."""
    from bench.mlflow_load import cluster_server

    with cluster_server(folder) as server:
        yield server
    assert server.leftovers == [], server.leftovers
