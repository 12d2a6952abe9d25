"""The cloud deliverables under ``cluster/``, checked offline: the images and installs match the
pinned Ray and Python; token authentication on every node, with no token (or any other secret)
written in a file; the one bucket variable; nothing exposed outside the cluster. Nothing here
reaches a network or starts Ray."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tests.cluster.configs import (
    CLUSTER,
    KUBERAY,
    LAUNCHER,
    MLFLOW,
    ROOT,
    SETTINGS,
    launcher,
    manifests,
    one,
    pod_containers,
    ray_specs,
    rayjob_entrypoint,
)
from tests.cluster.shell import (
    SHELL_VARS,
    guide_lines,
    hardcoded_buckets,
    secret_findings,
    simple_commands,
)

pytestmark = pytest.mark.cluster

PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


# -- Versions, token, bucket, secrets -------------------------------------------------------


def test_images_match_the_installed_ray_and_python() -> None:
    expected = f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"
    docker = launcher()["docker"]
    launcher_images = {docker.get(key, expected) for key in ("image", "head_image", "worker_image")}
    assert launcher_images == {expected}
    assert f"FROM {expected}" in (CLUSTER / "Dockerfile").read_text()
    assert f'"ray[default,tune,train]=={ray.__version__}"' in (ROOT / "pyproject.toml").read_text()
    templates = [
        one("rayjob.yaml", "RayJob")["spec"]["submitterPodTemplate"],
        one(*MLFLOW)["spec"]["template"],
    ]
    for spec in ray_specs():
        assert spec["rayVersion"] == ray.__version__
        templates += [spec["headGroupSpec"]["template"]]
        templates += [g["template"] for g in spec["workerGroupSpecs"]]
    (image,) = {c["image"] for t in templates for c in pod_containers(t)}  # built from Dockerfile
    assert image.endswith(f":ray{ray.__version__}-{PYTHON_TAG}-gpu")


def test_the_cluster_installs_this_working_tree() -> None:
    cfg = launcher()
    assert cfg["file_mounts"]["~/supcon-sweep"] == "."
    assert "pip install --quiet -e ~/supcon-sweep" in cfg["setup_commands"]


def test_token_auth_on_every_node_without_a_token_in_any_file() -> None:
    cfg = launcher()
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    token_dirs = [
        remote
        for remote, local in cfg["file_mounts"].items()
        if not Path(local).expanduser().resolve().is_relative_to(ROOT)
    ]
    assert len(token_dirs) == 1, "the token folder, from outside the working tree"
    installs = [c for c in cfg["setup_commands"] if "~/.ray/auth_token" in c]
    assert installs and f"{token_dirs[0]}/auth_token" in installs[0]
    for spec in ray_specs():
        assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
    kinds = {
        doc["kind"]
        for name in ("common.yaml", "raycluster.yaml", "rayjob.yaml")
        for doc in manifests(name)
    }
    assert "Secret" not in kinds
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            text = path.read_text()
            assert "RAY_AUTH_MODE=disabled" not in text, path
            assert secret_findings(text) == [], path


NODE_CHECK = """
from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # what `ray start` checks
"""
LAPTOP_HEADER = """
from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
print(get_auth_headers_if_auth_enabled({}).get("authorization"))  # what JobSubmissionClient sends
"""


def ray_with_env(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (Ray reads its auth mode once per process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_token_reaches_ray_where_the_docs_put_it(tmp_path: Path) -> None:
    token, cfg = secrets.token_hex(32), launcher()
    env = dict(
        o.removeprefix("--env ").split("=", 1)
        for o in cfg["docker"]["run_options"]
        if o.startswith("--env ")
    )
    node = tmp_path / "node"  # the token where setup_commands install it, the container's env
    (node / ".ray").mkdir(parents=True)
    (node / ".ray" / "auth_token").write_text(token)
    started = ray_with_env({"HOME": str(node), "RAY_AUTH_MODE": env["RAY_AUTH_MODE"]}, NODE_CHECK)
    assert started.returncode == 0, started.stderr[-2000:]
    refused = ray_with_env({"HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}, NODE_CHECK)
    assert refused.returncode != 0, "a node without the token must not start"
    # The laptop: the export line of cluster/README.md, with the file cluster.yaml mounts.
    (line,) = [line for line in guide_lines() if "RAY_AUTH_TOKEN_PATH=" in line]
    laptop = dict(word.split("=", 1) for word in simple_commands(line)[0][1:])
    path = Path(laptop["RAY_AUTH_TOKEN_PATH"])
    (mounted,) = [Path(local) for local in cfg["file_mounts"].values() if local.startswith("~/")]
    assert path.relative_to(SHELL_VARS["HOME"]) == (mounted / "auth_token").relative_to("~")
    home = tmp_path / "laptop"
    (home / path.parent.relative_to(SHELL_VARS["HOME"])).mkdir(parents=True)
    (home / path.relative_to(SHELL_VARS["HOME"])).write_text(token)
    laptop["RAY_AUTH_TOKEN_PATH"] = str(home / path.relative_to(SHELL_VARS["HOME"]))
    sent = ray_with_env({**laptop, "HOME": str(home)}, LAPTOP_HEADER)
    assert sent.stdout.strip() == f"Bearer {token}", sent.stderr[-2000:]


def test_secret_scan_finds_literals() -> None:
    token = secrets.token_hex(32)
    assert secret_findings(f"export RAY_AUTH_TOKEN={token}")
    assert secret_findings("stringData:\n  auth_token: some-literal-secret-value")
    assert secret_findings("aws_access_key_id = AKIAIOSFODNN7EXAMPLE")
    assert secret_findings("MLFLOW_TRACKING_PASSWORD=Zq3vKx9_pL2mN8rT4wYb")
    assert secret_findings("  POSTGRES_PASSWORD: 'Zq3vKx9_pL2mN8rT4wYb'")
    assert secret_findings("--from-file=auth_token=$HOME/.config/x/auth_token") == []


def test_the_bucket_is_named_once_per_deployment() -> None:
    cfg = launcher()
    (definition,) = [o for o in cfg["docker"]["run_options"] if "SUPCON_BUCKET=" in o]
    definitions = {
        LAUNCHER: definition.split("=", 1)[1],
        KUBERAY / "common.yaml": one(*SETTINGS)["data"]["SUPCON_BUCKET"],
    }
    texts = {p: p.read_text() for p in CLUSTER.rglob("*") if p.is_file()}
    for bucket in set(definitions.values()):
        where = {p.relative_to(ROOT): t.count(bucket) for p, t in texts.items() if bucket in t}
        expected = {p.relative_to(ROOT): 1 for p, b in definitions.items() if b == bucket}
        assert where == expected, f"{bucket!r} is written outside its one definition"
    for path, text in texts.items():
        assert hardcoded_buckets(text) == [], path
    # The container environment holds the bucket: commands on the host never see it.
    assert not [c for c in cfg["initialization_commands"] if "SUPCON_BUCKET" in c]


def test_containers_that_name_the_bucket_read_it_from_the_configmap() -> None:
    configmap = one(*SETTINGS)["metadata"]["name"]
    templates = [
        one(*MLFLOW)["spec"]["template"],
        one("rayjob.yaml", "RayJob")["spec"]["submitterPodTemplate"],
    ]
    for spec in ray_specs():
        templates += [spec["headGroupSpec"]["template"]]
        templates += [g["template"] for g in spec["workerGroupSpecs"]]
    users = 0
    for container in (c for t in templates for c in pod_containers(t)):
        sources = {
            e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e
        }
        assert configmap in sources, container["name"]
        users += "SUPCON_BUCKET" in json.dumps(container)
    assert users >= 2  # the MLflow server and the data copy
    # The RayJob's entrypoint is expanded by the submitter's shell, which reads the ConfigMap.
    assert "$SUPCON_BUCKET" in rayjob_entrypoint()


def test_bucket_scan_finds_literal_names() -> None:
    assert hardcoded_buckets('--storage "s3://my-bucket/ray"') == ["s3://my-bucket"]
    assert hardcoded_buckets('"Resource": "arn:aws:s3:::my-bucket/*"') == ["arn:aws:s3:::my-bucket"]
    assert hardcoded_buckets("s3://$SUPCON_BUCKET/ray and arn:aws:s3:::$SUPCON_BUCKET") == []


def test_nothing_is_exposed_outside_kubernetes() -> None:
    docs = [
        d for name in ("common.yaml", "raycluster.yaml", "rayjob.yaml") for d in manifests(name)
    ]
    assert "Ingress" not in {d["kind"] for d in docs}
    for service in (d for d in docs if d["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    for spec in ray_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress", False)
