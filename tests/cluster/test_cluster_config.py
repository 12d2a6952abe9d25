"""The cloud deliverables under ``cluster/``, checked offline against what is installed: Ray's own
validation of the launcher config; every ``ray``, ``mlflow server`` and ``supcon-sweep`` command
in the configs, the manifests and cluster/README.md, parsed by the real CLIs; the KubeRay
manifests. (Pins, tokens, the bucket and secrets: test_cluster_pins_and_secrets.py.) Nothing here
reaches a network or starts Ray."""

from __future__ import annotations

import argparse
import json
import shlex
import socket

import click
import jsonschema
import pytest
from mlflow.cli import cli as mlflow_cli
from mlflow.server.security_utils import is_allowed_host_header
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import cli as ray_cli

from orchestrator import mlflow_server as srv
from orchestrator.cli import build_parser
from orchestrator.train.resources import DRIVER_RESOURCE
from tests.cluster.configs import (
    CLUSTER,
    IMAGE_ROOT,
    MLFLOW,
    POSTGRES,
    SETTINGS,
    launcher,
    launcher_commands,
    manifests,
    one,
    ray_specs,
    rayjob_entrypoint,
    repo_path,
)
from tests.cluster.shell import (
    guide_lines,
    invocations,
    parse_click,
    simple_commands,
)
from trainer.config import load_config

pytestmark = pytest.mark.cluster


def exported_tracking_uri(line: str) -> str:
    """The MLFLOW_TRACKING_URI that ``line`` exports before it runs ``ray start``."""
    words = simple_commands(line)
    start = next(i for i, w in enumerate(words) if w[:2] == ["ray", "start"])
    exports = [
        w.split("=", 1)[1]
        for cmd in words[:start]
        if cmd[0] == "export"
        for w in cmd[1:]
        if w.startswith("MLFLOW_TRACKING_URI=")
    ]
    assert exports, f"MLFLOW_TRACKING_URI is not exported before ray start: {line}"
    return exports[-1]


def parse_ours(args: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(args)
    except SystemExit as exit_:
        pytest.fail(f"`supcon-sweep {shlex.join(args)}` is rejected by our CLI ({exit_.code})")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("offline validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# -- The launcher config --------------------------------------------------------------------


@pytest.mark.usefixtures("no_network")
def test_launcher_config_passes_rays_own_validation() -> None:
    prepared = prepare_config(launcher())
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


MUTATIONS = {
    "float resource": lambda c: c["available_node_types"]["head"]["resources"].update(
        {DRIVER_RESOURCE: 8.5}
    ),
    "unknown top-level key": lambda c: c.update(bucket="b"),
    "unknown node-type key": lambda c: c["available_node_types"]["gpu_8x"].update(gpus=8),
    "unknown docker key": lambda c: c["docker"].update(env={"A": "b"}),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.usefixtures("no_network")
def test_validation_rejects_a_broken_copy(mutation: str) -> None:
    cfg = launcher()
    MUTATIONS[mutation](cfg)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_head_holds_the_trial_drivers_and_no_train_worker() -> None:
    cfg = launcher()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["resources"]
    assert head["CPU"] == 0 and head.get("GPU", 0) == 0
    assert isinstance(head[DRIVER_RESOURCE], int) and head[DRIVER_RESOURCE] >= 1
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert workers
    for name, node in workers.items():
        assert node["resources"]["GPU"] >= 1 and node["resources"]["CPU"] >= 1, name
        assert DRIVER_RESOURCE not in node["resources"], name
        assert node["max_workers"] >= node.get("min_workers", 0) >= 0, name
    assert cfg["idle_timeout_minutes"] > 0


def test_ray_start_commands() -> None:
    cfg = launcher()
    for key, role in (("head_start_ray_commands", "head"), ("worker_start_ray_commands", "worker")):
        commands = cfg[key]
        assert invocations(commands[0], "ray") == [["stop"]], f"{key} must begin with ray stop"
        starts = [
            (line, args)
            for line in commands
            for args in invocations(line, "ray")
            if args[:1] == ["start"]
        ]
        assert len(starts) == 1, key
        line, args = starts[0]
        params = parse_click(ray_cli, args, "ray").params
        # Job drivers and Train workers inherit MLflow's address from `ray start`.
        assert exported_tracking_uri(line).startswith("http://"), key
        if role == "head":
            assert params["head"] and params["autoscaling_config"]
            assert params["dashboard_host"] == "127.0.0.1"  # reached through SSH only
        else:
            assert not params["head"] and params["address"] == "10.0.0.1:6379"


def test_launcher_opens_no_port_beyond_ssh() -> None:
    rules = launcher()["provider"].get("security_group", {}).get("IpPermissions", [])
    assert rules == []


def server_args(line: str) -> argparse.Namespace:
    """``supcon-sweep cluster server ...`` in ``line``, parsed by our CLI."""
    (args,) = [a for a in invocations(line, "supcon-sweep") if a[:2] == ["cluster", "server"]]
    return parse_ours(args)


def check_mlflow_command(parsed: argparse.Namespace, store_uri: str) -> dict:
    """The ``mlflow server`` command ``cluster server`` runs for ``parsed``, parsed by MLflow's
    own CLI: basic-auth, artifacts through the server. Returns its params."""
    spec = srv.ServerSpec(
        folder=parsed.folder,
        host=parsed.host,
        port=parsed.port,
        backend=parsed.backend,
        database_url=parsed.database_url,
        artifacts=parsed.artifacts,
        allowed_hosts=parsed.allowed_hosts,
    )
    cmd = srv.mlflow_command(spec, store_uri)
    params = parse_click(mlflow_cli, cmd[1:], "mlflow").params
    assert params["app_name"] == "basic-auth" and params["serve_artifacts"]
    assert int(params["workers"]) == srv.WORKERS and params["backend_store_uri"] == store_uri
    return params


def test_mlflow_server_on_the_head() -> None:
    """`cluster server` on the head: its own PostgreSQL (never SQLite), basic-auth, artifacts
    to the bucket, Host headers limited to the head's IP and localhost."""
    cfg = launcher()
    (line,) = [c for c in cfg["head_start_ray_commands"] if "cluster server" in c]
    parsed = server_args(line)
    assert parsed.backend == "postgresql" and parsed.database_url is None
    assert parsed.port == 5000 and parsed.host == "0.0.0.0"
    assert parsed.artifacts.startswith("s3://test-bucket/")
    assert str(parsed.folder).startswith("/home/ray/mlflow")  # the head's mounted disk
    assert not any(invocations(c, "mlflow") for c in cfg["head_start_ray_commands"])
    params = check_mlflow_command(parsed, "postgresql+psycopg2://mlflow@127.0.0.1:5433/mlflow")
    allowed = params["allowed_hosts"].split(",")
    assert "*" not in allowed
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")  # through ssh -L / ray attach
    (start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    uri = exported_tracking_uri(start)
    assert is_allowed_host_header(allowed, uri.removeprefix("http://")), uri
    setup = " ".join(cfg["head_setup_commands"])
    assert "apt-get install" in setup and "postgresql" in setup  # Ubuntu's server programs
    assert "supcon-sweep[server]" in setup


def sourced_files(line: str) -> list[str]:
    """The files ``line`` sources with ``set -a`` (every variable in them exported)."""
    words = simple_commands(line)
    return [w[1] for i, w in enumerate(words) if w[0] == "." and ["set", "-a"] in words[:i]]


def test_every_node_exports_the_sweep_users_credentials() -> None:
    """The sweep user's file from the laptop (beside the Ray token, never in the working tree)
    is installed with mode 600 and sourced into `ray start` on the head and on every worker, so
    job drivers and Train workers log in; the server creates that user from the same file."""
    cfg = launcher()
    (install,) = [c for c in cfg["setup_commands"] if "mlflow.env" in c]
    (copy,) = [w for w in simple_commands(install) if w[0] == "install"]
    assert copy[1:3] == ["-m", "600"] and copy[3] == "~/ray-auth/mlflow.env"
    node_file = copy[4]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cfg[key] if "ray start" in c]
        assert sourced_files(start) == [node_file], key
        assert start.index("set -a") < start.index("ray start"), key
    (line,) = [c for c in cfg["head_start_ray_commands"] if "cluster server" in c]
    assert str(server_args(line).users) == node_file


def test_mlflow_server_on_kubernetes() -> None:
    """`cluster server` on the PostgreSQL Deployment's database, the users from Secrets; the
    PostgreSQL Deployment allows the connections the MLflow workers' pools may open."""
    container = one(*MLFLOW)["spec"]["template"]["spec"]["containers"][0]
    parsed = server_args(" ".join(container["args"]))
    assert parsed.users_from_env and parsed.artifacts.startswith("s3://test-bucket/")
    settings = one(*SETTINGS)["data"]
    database = settings[srv.DATABASE_URL_VAR]
    assert database.startswith("postgresql+psycopg2://mlflow@supcon-postgres:5432/")
    assert ":" not in database.split("://")[1].split("@")[0], "no password in the URL"
    params = check_mlflow_command(parsed, database)
    allowed = params["allowed_hosts"].split(",")
    assert is_allowed_host_header(allowed, settings["MLFLOW_TRACKING_URI"].removeprefix("http://"))
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")  # kubectl port-forward
    secrets = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
    assert secrets == {"supcon-mlflow-db", "supcon-mlflow-users"}
    (postgres,) = one(*POSTGRES)["spec"]["template"]["spec"]["containers"]
    assert f"max_connections={srv.MAX_CONNECTIONS}" in postgres["args"]
    env = {e["name"]: e for e in postgres["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "supcon-mlflow-db"
    service = one("common.yaml", "Service", "supcon-postgres")
    assert service["spec"]["ports"][0]["port"] == 5432


def test_ray_containers_log_in_as_the_sweep_user() -> None:
    """Every Ray container and the RayJob's submitter take the sweep user from its Secret;
    the containers that only copy data do not."""
    templates = [one("rayjob.yaml", "RayJob")["spec"]["submitterPodTemplate"]]
    for spec in ray_specs():
        templates += [spec["headGroupSpec"]["template"]]
        templates += [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        for container in template["spec"]["containers"]:
            refs = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
            assert refs == {"supcon-mlflow-users"}, container["name"]
        for container in template["spec"].get("initContainers", []):
            assert "supcon-mlflow-users" not in json.dumps(container), container["name"]


# -- Commands of this project, and the guide's commands -------------------------------------


def check_sweep(args: argparse.Namespace, gpus: int, cpus: int, drivers: int) -> None:
    """A sweep/submit command: its files exist, its overrides validate, and its trials fit."""
    assert repo_path(args.space).is_file(), args.space
    load_config(repo_path(args.config) if args.config else None, args.overrides)
    assert args.storage.startswith("s3://test-bucket/"), "storage every node reaches"
    assert args.max_concurrent <= drivers, "more trials at once than TRAIN_DRIVER slots"
    if args.placement == "pack":
        assert args.gpus_per_trial <= gpus, "a packed trial does not fit on one node"
        assert args.workers_per_trial * args.cpus_per_worker <= cpus


def test_supcon_sweep_commands_exist() -> None:
    cfg = launcher()
    sources = {
        "cluster.yaml": launcher_commands(cfg),
        "cluster/README.md": guide_lines(),
        "rayjob.yaml": [rayjob_entrypoint()],
    }
    gpu_8x = cfg["available_node_types"]["gpu_8x"]["resources"]
    drivers = cfg["available_node_types"]["head"]["resources"][DRIVER_RESOURCE]
    for source, lines in sources.items():
        found = [args for line in lines for args in invocations(line, "supcon-sweep")]
        assert found, f"no supcon-sweep command in {source}"
        for args in found:
            parsed = parse_ours(args)
            if parsed.command == "submit":
                check_sweep(parsed, gpu_8x["GPU"], gpu_8x["CPU"], drivers)


def test_rayjob_runs_a_sweep_that_fits_its_cluster() -> None:
    (args,) = invocations(rayjob_entrypoint(), "supcon-sweep")
    parsed = parse_ours(args)
    assert parsed.command == "sweep" and parsed.address == "auto"
    spec = ray_specs()[0]
    (group,) = spec["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    start = spec["headGroupSpec"]["rayStartParams"]
    drivers = json.loads(shlex.split(start["resources"])[0])[DRIVER_RESOURCE]
    check_sweep(parsed, int(limits["nvidia.com/gpu"]), int(limits["cpu"]), drivers)
    gpus_at_once = parsed.max_concurrent * parsed.gpus_per_trial
    assert gpus_at_once <= group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    dockerfile = (CLUSTER / "Dockerfile").read_text().splitlines()
    copied = {line.split()[-1].removeprefix("./") for line in dockerfile if line.startswith("COPY")}
    for path in (parsed.config, parsed.space):
        assert str(path).startswith(IMAGE_ROOT + "/") and path.parts[4] in copied, path


def test_ray_commands_in_the_guide() -> None:
    used = {}
    for line in guide_lines():
        for args in invocations(line, "ray"):
            ctx = parse_click(ray_cli, args, "ray")
            used.setdefault(ctx.info_name, ctx.params)
    for flow in ("ray up", "ray dashboard", "ray attach", "ray down"):
        assert used[flow]["cluster_config_file"] == "cluster/cluster.yaml", flow
    assert 5000 in used["ray attach"]["port_forward"]


def test_command_checks_reject_what_does_not_exist() -> None:
    with pytest.raises(click.NoSuchOption):
        parse_click(ray_cli, ["start", "--hed"], "ray")
    with pytest.raises(click.NoSuchOption):
        parse_click(mlflow_cli, ["server", "--allowed-host", "x"], "mlflow")
    with pytest.raises(click.UsageError):
        parse_click(ray_cli, ["launch", "cluster/cluster.yaml"], "ray")
    with pytest.raises(pytest.fail.Exception):
        parse_ours(["sweep", "--bucket", "s3://x"])


def test_kuberay_manifests() -> None:
    assert [d["kind"] for d in manifests("raycluster.yaml")] == ["RayCluster"]
    assert [d["kind"] for d in manifests("rayjob.yaml")] == ["RayJob"]
    shared = {"ConfigMap", "ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service"}
    assert "Secret" not in {d["kind"] for d in manifests("common.yaml")}  # made with kubectl
    assert {d["kind"] for d in manifests("common.yaml")} == shared
    cluster, job = one("raycluster.yaml", "RayCluster"), one("rayjob.yaml", "RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "the RayJob runs the RayCluster spec"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    spec = cluster["spec"]
    start = spec["headGroupSpec"]["rayStartParams"]
    assert start["num-cpus"] == "0"
    drivers = json.loads(shlex.split(start["resources"])[0])
    assert isinstance(drivers[DRIVER_RESOURCE], int) and drivers[DRIVER_RESOURCE] >= 1
    for group in spec["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1, group["groupName"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert group["maxReplicas"] >= group["minReplicas"] >= 0


def test_the_optuna_study_lives_on_the_heads_disk() -> None:
    """The sweep's driver runs on the head and is the study's one writer: ``ray up`` keeps it
    on the head's mounted MLflow folder, KubeRay on a volume every Ray head mounts."""
    docker = launcher()["docker"]
    assert (
        "--env SUPCON_OPTUNA_STORAGE=sqlite:////home/ray/mlflow/optuna.db"
        in (docker["head_run_options"])
    )
    assert any(o.endswith(":/home/ray/mlflow") for o in docker["head_run_options"])
    kinds = [(d["kind"], d["metadata"]["name"]) for d in manifests("common.yaml")]
    assert ("PersistentVolumeClaim", "supcon-optuna") in kinds
    for spec in ray_specs():
        head = spec["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]}
        (container,) = head["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        path = env["SUPCON_OPTUNA_STORAGE"].removeprefix("sqlite:///")
        (name,) = [n for n, claim_name in volumes.items() if claim_name == "supcon-optuna"]
        assert path.startswith(mounts[name] + "/")
