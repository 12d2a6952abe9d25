"""The files under ``cluster/``, loaded for the tests: the launcher config, the KubeRay
manifests and the pieces of them the tests look at."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "cluster.yaml"
KUBERAY = CLUSTER / "kuberay"
IMAGE_ROOT = "/home/ray/supcon-sweep"  # where cluster/Dockerfile puts the project
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def one(name: str, kind: str, called: str | None = None) -> dict:
    """The one document of ``kind`` in manifest file ``name`` (the one ``called`` so)."""
    (doc,) = [
        d for d in manifests(name) if d["kind"] == kind and called in (None, d["metadata"]["name"])
    ]
    return doc


MLFLOW = ("common.yaml", "Deployment", "supcon-mlflow")
POSTGRES = ("common.yaml", "Deployment", "supcon-postgres")
SETTINGS = ("common.yaml", "ConfigMap", "supcon-sweep-env")


def launcher_commands(cfg: dict) -> list[str]:
    nodes = cfg["available_node_types"].values()
    return [c for key in COMMAND_KEYS for c in cfg.get(key, [])] + [
        c for node in nodes for key in COMMAND_KEYS for c in node.get(key, [])
    ]


def pod_containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def ray_specs() -> list[dict]:
    return [
        one("raycluster.yaml", "RayCluster")["spec"],
        one("rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"],
    ]


def rayjob_entrypoint() -> str:
    return one("rayjob.yaml", "RayJob")["spec"]["entrypoint"]


def repo_path(path: Path) -> Path:
    """A path as the cluster sees it (relative to the repo, or inside the image) -> the repo."""
    if str(path).startswith(IMAGE_ROOT + "/"):
        return ROOT / Path(str(path)[len(IMAGE_ROOT) + 1 :])
    return path if path.is_absolute() else ROOT / path
