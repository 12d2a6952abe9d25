"""Joining Ray: a cluster's address, the Ray Job's, or an isolated local instance.

Ray itself is imported only by :func:`start_ray`, so a command checks ``--address`` (in
seconds, where ``ray.init`` retries for minutes) before anything heavy is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from typing import Any

from orchestrator.engine import leftovers
from orchestrator.train.resources import DRIVER_RESOURCE
from trainer.config import ConfigError

log = logging.getLogger(__name__)

# A local instance's job: no Ray Train preemption watcher (see ray_init_kwargs).
LOCAL_RUNTIME_ENV = {"env_vars": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}
# Where Ray's State API (and the job client) look for the instance's dashboard. Unset, a
# process that queries it without an address (Ray Train's placement-group cleaner does) looks
# for "the" local instance and fails when a second sweep's is running: the group of a trial
# ASHA stopped was never freed, and the next trial waited for its workers forever.
API_SERVER_VAR = "RAY_API_SERVER_ADDRESS"


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Start a local Ray instance on loopback only inside this block.

    ``ray.init`` turns ``_node_ip_address="127.0.0.1"`` into the machine's routed address
    (``services.resolve_ip_for_localhost``), and Ray 2.60's GCS, raylet, workers and agents
    then listen on every interface. Ray keeps the node on loopback when it believes multi-node
    clusters are off for the process (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once at
    import into ``ray_constants.ENABLE_RAY_CLUSTER``), so this block sets that flag in this
    process only: setting the variable in the environment would leak into ``ray start``
    children (``cluster local up``'s worker nodes), which then refuse to join. The processes
    the instance starts are told 127.0.0.1 on their command lines and bind it."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        log.warning(
            "this Ray has no ENABLE_RAY_CLUSTER; its local instance may listen on every interface"
        )
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _host_port(address: str) -> tuple[str, str]:
    """(host, port) of ``HOST:PORT``, with or without a scheme such as ``ray://``."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    return host, port


def loopback_only(address: str) -> bool:
    """Whether ``address`` (``HOST:PORT``) is a Ray instance that listens on loopback only (a
    private local instance, :func:`loopback_node`): joining it must keep 127.0.0.1, which
    ``ray.init`` would otherwise turn into this machine's routed address, where nothing
    answers. A loopback address of an instance that also listens there (``cluster local``,
    whose nodes are on the routed address) is left to Ray as before."""
    import ray.util

    host, port = _host_port(address)
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]") or not port.isdigit():
        return False
    routed = ray.util.get_node_ip_address()
    if routed in ("127.0.0.1", "::1"):
        return True
    try:
        with socket.create_connection((routed, int(port)), timeout=2):
            return False
    except OSError:
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_runtime_env(dashboard_port: int) -> dict[str, Any]:
    """The job runtime env of a private local instance whose dashboard is on
    ``dashboard_port``: every worker, actor and Train controller it starts queries its own
    instance's State API, whatever else runs on the machine."""
    api = {API_SERVER_VAR: f"http://127.0.0.1:{dashboard_port}"}
    return {"env_vars": {**LOCAL_RUNTIME_ENV["env_vars"], **api}}


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """ConnectionError naming ``address`` when nothing answers there: in seconds, where
    ``ray.init`` would retry for minutes. None (a local instance) and ``auto`` pass."""
    if not address or address == "auto":
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as err:
        raise ConnectionError(f"no Ray cluster reachable at {address}: {err}") from None


def starts_local_ray(address: str | None) -> bool:
    """Whether :func:`start_ray` would start a private local instance (no ``--address``, no
    ``RAY_ADDRESS``), whose resources are this machine's."""
    return not address and not os.environ.get("RAY_ADDRESS")


def check_local_resources(address: str | None, workers: int, cpus: float, gpus: float) -> None:
    """ConfigError when a local instance would lack what one trial asks for (``workers`` ranks
    of ``cpus`` CPUs each, ``gpus`` GPUs in all): its workers would otherwise wait until Ray
    Train's start-up timeout. A cluster is not checked here: an autoscaler may add nodes (the
    trial then fails after ``--start-timeout``, naming what it asked for)."""
    if not starts_local_ray(address):
        return
    have_cpus = os.cpu_count() or 1
    if workers * cpus > have_cpus:
        raise ConfigError(
            f"--workers-per-trial {workers} x --cpus-per-worker {cpus:g} = {workers * cpus:g} "
            f"CPUs, and this machine has {have_cpus}; ask for fewer, or pass --address to join "
            "a cluster"
        )
    if gpus <= 0:
        return
    import torch

    have, need = torch.cuda.device_count(), max(1, math.ceil(gpus))
    if have < need:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ConfigError(
            f"--gpus-per-trial {gpus:g} needs {need} GPU(s), and this machine shows CUDA "
            f"{have} (CUDA_VISIBLE_DEVICES={visible}); pass --gpus-per-trial 0 to train on the "
            "CPUs, or --address to join a cluster with GPUs"
        )


def ray_init_kwargs(address: str | None, max_concurrent: int) -> dict[str, Any]:
    """``ray.init``'s arguments: join ``address``; else, inside a Ray Job (whose supervisor sets
    ``RAY_ADDRESS``) or wherever a user set it, join that cluster as a plain ``ray.init()``
    does; else start an isolated local instance on 127.0.0.1 (:func:`loopback_node`) with the
    driver slots, its dashboard on a port of its own that its processes are told
    (:func:`local_runtime_env`, so two sweeps on one machine each finish), and without Ray
    Train's preemption watcher: one machine has no node to be drained, and in Ray 2.60 the
    watcher prints an error-level ``core_worker.cc`` line for every trial."""
    if address:
        return {"address": address, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        return {"log_to_driver": True}
    port = free_port()
    return {
        "address": "local",
        "_node_ip_address": "127.0.0.1",
        "resources": {DRIVER_RESOURCE: max_concurrent},
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        "runtime_env": local_runtime_env(port),
    }


def start_ray(address: str | None, max_concurrent: int) -> None:
    """Connect to Ray as :func:`ray_init_kwargs` says (nothing when already connected)."""
    import ray

    if ray.is_initialized():
        return
    check_ray_address(address)
    kwargs = ray_init_kwargs(address, max_concurrent)
    if "address" not in kwargs:
        log.info("joining the Ray cluster at RAY_ADDRESS=%s", os.environ["RAY_ADDRESS"])
    elif kwargs["address"] == "local":
        # The instance's own processes (raylet, GCS, dashboard) inherit this process's
        # environment; an inherited value would name another instance.
        os.environ[API_SERVER_VAR] = kwargs["runtime_env"]["env_vars"][API_SERVER_VAR]
        leftovers.clean()
        with loopback_node():
            ray.init(**kwargs)
        entry = leftovers.record()
        atexit.register(leftovers.forget, entry)
        return
    if address and loopback_only(address):
        with loopback_node():  # else Ray rewrites 127.0.0.1 to this machine's routed address
            ray.init(**kwargs)
        return
    ray.init(**kwargs)
