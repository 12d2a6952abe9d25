"""The README's cluster flow on a real multi-node Ray cluster started on this machine.

``supcon-sweep cluster local up`` starts a Ray head, a second Ray node and the cluster's MLflow
server (a real PostgreSQL, MLflow's basic-auth; the sweep user's login exported into the Ray
nodes as on a cluster); sweeps go in as Ray Jobs through the job server (``supcon-sweep
submit``), and the best trial comes back over HTTP (``supcon-sweep best --tracking-uri
http://...``) with the same login. Faults: the MLflow server (and its database) restarting
mid-sweep, and the second node dying mid-trial. The sweep user's password is looked for
everywhere a sweep writes: it is nowhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import mlflow_server as srv
from orchestrator.cli import main
from orchestrator.engine import local_cluster as lc
from orchestrator.settings import DEFAULT_EXPERIMENT
from tests.helpers import data_overrides, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("cluster")
    assert (
        main(
            [
                "cluster",
                "local",
                "up",
                "--folder",
                str(folder),
                "--nodes",
                "1",
                "--head-cpus",
                "1",
                "--worker-cpus",
                "1",
                "--drivers",
                "2",
            ]
        )
        == 0
    )
    c = lc.Cluster.load(folder)
    # This process logs in as the researcher does: `set -a; . CREDENTIALS; set +a`.
    with srv.environ(srv.read_env_file(c.credentials)):
        yield c
    if (folder / lc.STATE).is_file():
        lc.down(folder)


def _submit(cluster: lc.Cluster, out: Path, space: Path, *extra: str) -> str:
    argv = [
        "submit",
        "--address",
        cluster.dashboard,
        "--space",
        str(space),
        "--tracking-uri",
        cluster.tracking_uri,
        "--out",
        str(out),
        "--scheduler",
        "none",
        "--workers-per-trial",
        "2",
        "--cpus-per-worker",
        "0.5",
        "--placement",
        "spread",
        "--max-concurrent",
        "2",
        *extra,
    ]
    cli = Path(sys.executable).parent / "supcon-sweep"
    done = subprocess.run(
        [str(cli), *argv], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _ray_job_submit(cluster: lc.Cluster, job_id: str, *sweep: str) -> str:
    """Submit ``supcon-sweep sweep SWEEP...`` as a Ray user would, with Ray's own CLI: no
    ``--address`` for the sweep, which joins the cluster through the job's RAY_ADDRESS."""
    ray_cli = Path(sys.executable).parent / "ray"
    cmd = [str(ray_cli), "job", "submit", "--address", cluster.dashboard, "--no-wait"]
    cmd += ["--submission-id", job_id, "--working-dir", ".", "--", "supcon-sweep", "sweep"]
    done = subprocess.run(
        [*cmd, *sweep], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return job_id


def _job_ended(cluster: lc.Cluster, job_id: str) -> bool:
    """Whether the job has ended; a job that ended in anything but success fails the test
    with the end of its logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    status = client.get_job_status(job_id)
    if status.is_terminal() and status != JobStatus.SUCCEEDED:
        pytest.fail(f"job {job_id} {status}:\n{client.get_job_logs(job_id)[-5000:]}")
    return status.is_terminal()


def _wait_job(cluster: lc.Cluster, job_id: str, timeout: float = 900) -> str:
    from ray.job_submission import JobSubmissionClient

    wait_for(lambda: _job_ended(cluster, job_id), timeout, f"job {job_id}")
    return JobSubmissionClient(cluster.dashboard).get_job_logs(job_id)


def _children(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    if exp is None:
        return []
    return [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]


def _logged_epochs(uri: str) -> int:
    try:
        runs = _children(uri)
        client = MlflowClient(uri)
        return max(
            (len(client.get_metric_history(r.info.run_id, "encoder/dev/eer")) for r in runs),
            default=0,
        )
    except Exception:  # the store may be mid-creation, or the server restarting
        return 0


def test_cluster_status_lists_the_nodes_and_mlflow(cluster: lc.Cluster, capsys) -> None:
    assert main(["cluster", "local", "status", "--folder", cluster.folder, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["processes"]) == {"head", "node1", "mlflow"}
    assert all(p["alive"] for p in info["processes"].values())
    assert info["tracking_uri"].startswith("http://127.0.0.1:")
    assert info["credentials"] == str(cluster.credentials)
    search = f"{cluster.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=10)  # no login
    assert refused.value.code == 401
    pg = [c for c in psutil.Process(cluster.proc("mlflow").pid).children(recursive=True)]
    assert any(p.name() == "postgres" for p in pg), "the MLflow store is a PostgreSQL server"


def _password_anywhere(cluster: lc.Cluster, out: Path, texts: list[str]) -> list[str]:
    """Where the sweep user's password appears: ``texts`` (console, job logs), every run's
    params and tags and every artifact, every file of the Ray session (the nodes' logs), the
    cluster's logs and the sweep's output folder."""
    password = srv.read_env_file(cluster.credentials)[srv.PASSWORD_VAR]
    found = [f"text {i}" for i, t in enumerate(texts) if password in t]
    client = MlflowClient(cluster.tracking_uri)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    for run in client.search_runs([exp.experiment_id]):
        if password in json.dumps([run.data.params, run.data.tags]):
            found.append(f"run {run.info.run_id} params/tags")
        folder = Path(client.download_artifacts(run.info.run_id, "", str(out / "artifacts")))
        texts_of = [p for p in folder.rglob("*") if p.is_file()]
        found += [f"artifact {p}" for p in texts_of if password.encode() in p.read_bytes()]
    roots = [Path(cluster.temp_dir), Path(cluster.folder) / "logs", out]
    roots += [Path(cluster.folder) / "mlflow" / "logs"]
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                if password.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue  # sockets, files Ray removed meanwhile
    return found


def test_submitted_sweep_survives_an_mlflow_restart(
    cluster: lc.Cluster, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """A real Ray Job, submitted with `ray job submit`, runs the 2-trial smoke sweep across
    both nodes (a sweep that started a private Ray inside the job instead could not place its
    trials on the other node); the MLflow server is stopped and restarted mid-sweep; every
    epoch still reaches MLflow and ``best`` answers over HTTP."""
    epochs = 8
    job = _ray_job_submit(
        cluster,
        f"e2e-{time.time_ns()}",
        "--space",
        "search_spaces/smoke.yaml",
        "--tracking-uri",
        cluster.tracking_uri,
        "--out",
        str(tmp_path / "out"),
        "--scheduler",
        "none",
        "--workers-per-trial",
        "2",
        "--cpus-per-worker",
        "0.5",
        "--placement",
        "spread",
        "--max-concurrent",
        "2",
        "--name",
        "e2e",
        *data_overrides(synth_root),
        f"stage1.epochs={epochs}",
    )
    uri = cluster.tracking_uri
    started = lambda: _logged_epochs(uri) >= 1 or _job_ended(cluster, job)  # noqa: E731
    wait_for(started, 300, "a first logged epoch")
    down_at = time.time()
    assert lc.stop(Path(cluster.folder), "mlflow")
    time.sleep(6)
    lc.up(Path(cluster.folder))  # restarts only what died: the MLflow server
    up_at = time.time()
    logs = _wait_job(cluster, job)
    assert "joining the Ray cluster at RAY_ADDRESS=" in logs  # not a private Ray in the job
    children = _children(uri)
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    client = MlflowClient(uri)
    stamps = []
    for run in children:
        history = client.get_metric_history(run.info.run_id, "encoder/dev/eer")
        # every epoch once, plus the trial's final summary at step `epochs`: nothing lost
        assert sorted(m.step for m in history) == list(range(epochs + 1))
        stamps += [m.timestamp / 1000 for m in history]
    assert any(down_at < t < up_at for t in stamps), "no epoch fell inside the outage"
    assert main(["best", "--tracking-uri", uri, "--metric", "eval/pooled_mean/eer", "--json"]) == 0
    console = capsys.readouterr()
    best = json.loads(console.out)
    assert [row["run_id"] for row in best][:1] == [
        min(children, key=lambda r: r.data.metrics["eval/pooled_mean/eer"]).info.run_id
    ]
    texts = [logs, console.out, console.err]
    assert _password_anywhere(cluster, tmp_path, texts) == []


def test_node_loss_resumes_the_trial_on_the_remaining_node(
    cluster: lc.Cluster, synth_root: Path, tmp_path: Path
) -> None:
    space = tmp_path / "one.yaml"
    space.write_text("loss.temperature: {grid: [0.2]}\n")
    out = tmp_path / "out"
    job = _submit(
        cluster,
        out,
        space,
        "--name",
        "nodeloss",
        "--max-failures",
        "3",
        *data_overrides(synth_root),
        "stage1.epochs=10",
    )
    snapshot = lambda: any((out / "train").glob("*/checkpoint_manager_snapshot.json"))  # noqa: E731
    wait_for(lambda: snapshot() or _job_ended(cluster, job), 300, "a registered checkpoint")
    assert lc.stop(Path(cluster.folder), "node1")  # one of the trial's two workers ran there
    logs = _wait_job(cluster, job)
    (run,) = [
        r
        for r in _children(cluster.tracking_uri)
        if r.data.tags["supcon.trial_id"] in {p.name for p in (out / "train").iterdir()}
    ]
    assert run.info.status == "FINISHED", logs[-3000:]
    assert run.data.tags["supcon.resumed_from"].startswith("checkpoint_")
    steps = [
        m.step
        for m in MlflowClient(cluster.tracking_uri).get_metric_history(
            run.info.run_id, "encoder/dev/eer"
        )
    ]
    assert steps.count(0) == 1 and 9 in steps


def test_down_stops_exactly_what_up_started(cluster: lc.Cluster) -> None:
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        folder = Path(cluster.folder)  # the state as it is now (earlier tests restart parts)
        running = lc.status(folder)["processes"]
        procs = lc.Cluster.load(folder).procs
        roots = [psutil.Process(p.pid) for p in procs if running[p.name]["alive"]]
        tree = roots + [c for r in roots for c in r.children(recursive=True)]
        assert main(["cluster", "local", "down", "--folder", cluster.folder]) == 0
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert alive == []
        assert bystander.poll() is None  # another process of ours is left alone
        assert not (Path(cluster.folder) / lc.STATE).exists()
        assert main(["cluster", "local", "status", "--folder", cluster.folder]) == 2
    finally:
        bystander.kill()
