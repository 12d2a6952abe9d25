"""Real sweeps on a local Ray instance: Optuna/grid over Ray Train DDP trials, MLflow tracking.

Each starts Ray Train runs (2 gloo workers for the smoke sweep, whose single MLflow writer is
rank 0; 1 where DDP is not the subject): tens of seconds to minutes apiece."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking import CONFIRM_TAG, ERROR_TAG, Tracking
from orchestrator.tracking.pyfunc import MLFLOW_FILES
from tests.helpers import checkpoint_dirs, data_overrides, sweep_args
from trainer.evaluate import FOLDER_FILES

PARENT_TAG = "mlflow.parentRunId"

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCHS = 3  # stage-1 epochs of the smoke sweep (data_overrides' default)


def _assert_one_point_per_epoch(client: MlflowClient, run_id: str, keys: list[str]) -> None:
    """Each metric the sweep logged (``keys``) has at most one point per step: epochs
    0..EPOCHS-1, and the final summary at step EPOCHS. A second rank logging would write every
    point twice. (A later ``evaluate --force`` may add points; it is not the sweep's.)"""
    per_epoch = [k for k in keys if k.startswith("encoder/train/")]
    assert per_epoch, f"no per-epoch training metric among {sorted(keys)}"
    for key in keys:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == sorted(set(steps)), f"{key} logged twice at a step: {steps}"
        assert set(steps) <= set(range(EPOCHS + 1)), f"{key}: {steps}"
    for key in [*per_epoch, "encoder/dev/eer"]:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert set(range(EPOCHS)) <= set(steps), f"{key} misses an epoch: {steps}"


def _sweep_parents(runs: list) -> list:
    """The sweeps' parent runs among ``runs`` (not a confirmation's: the confirm tests rerun
    the smoke sweep's best trial into the same store)."""
    return [r for r in runs if PARENT_TAG not in r.data.tags and CONFIRM_TAG not in r.data.tags]


def _children(out: Path) -> list:
    """The smoke sweep's trial runs."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = _sweep_parents(runs)
    return [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]


def test_sweep_tracks_parent_and_nested_trials(smoke_sweep: Path) -> None:
    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = _sweep_parents(runs)
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    after_sweep = json.loads((smoke_sweep / "after_sweep.json").read_text())
    temps = sorted(float(c.data.params["loss.temperature"]) for c in children)
    assert temps == [0.1, 0.3]
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "encoder/dev/eer")
        assert [m.step for m in history][:3] == [0, 1, 2]
        _assert_one_point_per_epoch(client, child.info.run_id, after_sweep[child.info.run_id])
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "classifier.pt", "scores"} <= artifacts
    assert parents[0].data.tags["supcon.eval_failures"] == "0"
    summary = parents[0].data.metrics
    assert (summary["sweep/trials_finished"], summary["sweep/trials_failed"]) == (2, 0)
    objectives = [c.data.metrics["sweep/objective"] for c in children]
    assert summary["sweep/best_objective"] == min(objectives)
    assert summary["sweep/trial_cpu_hours"] > 0
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")}
    # The grid over two temperatures gets the paper's heatmap besides Optuna's plots.
    assert {"plots/grid_heatmap.png", "plots/optimization_history.png"} <= plots


def test_only_the_best_trial_is_scored_on_the_test_sets(smoke_sweep: Path) -> None:
    """``--eval-top-k 1``: the best trial by the objective gets the test-set metrics, score
    files and DET plot in its own run, logged at the step of its final summary; the other has
    none, but its final model is in storage for a later ``evaluate``."""
    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    client = MlflowClient(uri)
    (best,) = Tracking.at(uri, DEFAULT_EXPERIMENT).best(
        "encoder/dev/eer", top=1, confirmations=False
    )
    children = {r.info.run_id: r for r in _children(smoke_sweep)}
    tested = children.pop(best["run_id"])
    (untested,) = children.values()
    for key in ("eval/asv19/eer", "eval/itw/eer", "eval/asv19/eer_A07", "eval/pooled_mean/eer"):
        assert 0.0 <= tested.data.metrics[key] <= 1.0, key
        (point,) = client.get_metric_history(tested.info.run_id, key)
        assert point.step == EPOCHS
    after_sweep = json.loads((smoke_sweep / "after_sweep.json").read_text())
    assert any(k.startswith("eval/") for k in after_sweep[tested.info.run_id])
    assert not any(k.startswith("eval/") for k in after_sweep[untested.info.run_id])
    scores = {a.path for a in client.list_artifacts(tested.info.run_id, "scores")}
    assert scores == {"scores/dev.tsv", "scores/asv19.tsv", "scores/itw.tsv"}
    assert "det.png" in {a.path for a in client.list_artifacts(tested.info.run_id)}
    for run in (tested, untested):
        model = Path(run.data.tags["supcon.model_uri"])
        assert model == smoke_sweep / "models" / run.data.tags["supcon.trial_id"]
        assert sorted(p.name for p in model.iterdir()) == sorted(FOLDER_FILES + MLFLOW_FILES)
        assert json.loads(run.data.tags["supcon.resources"])["workers"] == 2


def test_storage_keeps_one_checkpoint_per_trial(smoke_sweep: Path) -> None:
    """Ray Train keeps one reported checkpoint in storage; the trials' local copies are gone."""
    for run in _children(smoke_sweep):
        trial_id = run.data.tags["supcon.trial_id"]
        kept = [p for p in checkpoint_dirs(smoke_sweep / "train") if p.parent.name == trial_id]
        assert len(kept) == 1
        assert not (smoke_sweep / "trials" / trial_id / "checkpoints").exists()


def test_best_returns_the_lowest(smoke_sweep: Path, capsys) -> None:
    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    rows = Tracking.at(uri, DEFAULT_EXPERIMENT).best(
        metric="encoder/dev/eer", mode="min", top=2, confirmations=False
    )
    values = [r["metrics"]["encoder/dev/eer"] for r in rows]
    assert len(rows) == 2 and values == sorted(values)
    assert main(["best", "--out", str(smoke_sweep), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [r["run_id"] for r in rows]


def _tail(path: Path, offset: int) -> str:
    """What was written to ``path`` after its first ``offset`` bytes."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def test_sweep_with_an_active_mlflow_run(
    ray_session, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Inside a process that already has an active MLflow run (the normal state inside a Tune
    trial), the sweep logs to its own parent and child runs and leaves the active run alone.
    Each trial that ends prints one line: its id, params, objective and wall time; Ray Train's
    per-rank "Reporting training result" lines are off (they are kept only at --verbose), and
    so is Ray Train's preemption watcher, which logged an error-level line per trial."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    ours = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = tmp_path / "shared"  # --storage: Tune results and Train checkpoints go there
    logs = Path(ray_session._private.worker._global_node.get_logs_dir_path())
    # The session's worker logs hold earlier tests' output too (the confirm test's driver joins
    # it by address, as on a cluster, where Ray Train's preemption watcher stays on): only what
    # this sweep appends is read.
    written_before = {p: p.stat().st_size for p in logs.glob("worker-*")}
    with mlflow.start_run() as active:
        args = sweep_args(
            tmp_path, synth_root, "--tracking-uri", ours, "--storage", str(shared), workers=1
        )
        assert main([*args, "stage1.epochs=1"]) == 0
        assert mlflow.active_run().info.run_id == active.info.run_id
    assert MlflowClient(mlflow.get_tracking_uri()).get_run(active.info.run_id).data.metrics == {}
    rows = Tracking.at(ours, DEFAULT_EXPERIMENT).best(metric="encoder/dev/eer", top=5)
    assert len(rows) == 2
    assert (shared / "tune" / "smoke" / "sweep_settings.json").is_file()
    assert len(checkpoint_dirs(shared / "train")) == 2  # one per trial
    assert len(list((shared / "models").iterdir())) == 2
    assert not (tmp_path / "tune").exists() and not (tmp_path / "train").exists()
    out = capsys.readouterr().out
    experiment_id = MlflowClient(ours).get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    ui = f"/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert f"MLflow UI: mlflow ui --backend-store-uri {ours} --host 127.0.0.1" in out
    assert ui in out  # the runs page, not 3.17's GenAI overview
    ends = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(ends) == 2, ends
    assert all(
        " finished: loss.temperature=" in line and "sweep/objective=" in line for line in ends
    )
    appended = {p: _tail(p, written_before.get(p, 0)) for p in logs.glob("worker-*")}
    assert any(appended.values())  # the sweep's workers did write here
    noisy = [
        p.name
        for p, text in appended.items()
        if any(line in text for line in ("Reporting training result", "PreemptionWatcher"))
    ]
    assert not noisy, noisy


def test_failing_trial_is_marked_failed_while_the_sweep_goes_on(
    ray_session, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """A NaN loss in one trial (temperature 1e-40) fails that trial in Tune and in MLflow, with
    its cause on the run, on its console line and in the sweep's summary; the other trial of
    the grid still finishes. (NonFiniteLossError did not survive Ray's pickling before: the
    driver saw a TypeError, the run had no cause and the line said 0 s.)"""
    space = tmp_path / "space.yaml"
    space.write_text("loss.temperature: {grid: [1.0e-40, 0.3]}\n")
    args = sweep_args(tmp_path, synth_root, "--max-failures", "0", workers=1)
    args[args.index("--space") + 1] = str(space)
    assert main([*args, "stage1.epochs=1"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    children = {
        float(r.data.params["loss.temperature"]): r.info.status
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    }
    assert children == {1e-40: "FAILED", 0.3: "FINISHED"}
    runs = client.search_runs([exp.experiment_id])
    (failed,) = [r for r in runs if r.info.status == "FAILED" and PARENT_TAG in r.data.tags]
    cause = failed.data.tags[ERROR_TAG]
    assert cause.startswith("NonFiniteLossError: ") and "TypeError" not in cause
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("trial ") and " FAILED: " in x]
    assert not line.endswith(" 0 s")  # it ran for seconds
    assert f"  cause: {cause}" in out, [x for x in out.splitlines() if "cause" in x]
    summary = out[out.index("failed trials (1):") :]
    assert f"{failed.data.tags['supcon.trial_id']}: {cause}" in summary


def test_a_sweep_in_which_every_trial_fails_exits_1(
    ray_session, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """The work ran and failed: exit status 1 (not 2, which says nothing ran). The cause is a
    dev clip with a valid header and a truncated body (``data check`` reads only headers unless
    ``--decode``, and a sweep does not decode first): the run says which file, and the summary
    lists the trial with it.
    (Ray could not rebuild AudioDecodeError before: the driver saw a TypeError, no cause.)"""
    corpus = tmp_path / "corpus"
    shutil.copytree(synth_root, corpus)
    broken = sorted((corpus / "LA" / "ASVspoof2019_LA_dev" / "flac").glob("*.flac"))[0]
    with broken.open("r+b") as handle:
        handle.truncate(200)
    space = tmp_path / "space.yaml"
    space.write_text("loss.temperature: {grid: [0.3]}\n")
    args = sweep_args(tmp_path, corpus, "--max-failures", "0", workers=1)
    args[args.index("--space") + 1] = str(space)
    assert main([*args, "stage1.epochs=1"]) == 1
    out, err = capsys.readouterr()
    assert "every trial of sweep smoke failed" in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    statuses = {
        "parent" if "mlflow.parentRunId" not in r.data.tags else "trial": r.info.status
        for r in runs
    }
    assert statuses == {"parent": "FAILED", "trial": "FAILED"}
    (trial,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    cause = trial.data.tags[ERROR_TAG]
    assert cause.startswith(f"AudioDecodeError: cannot decode audio file {broken}"), cause
    assert f"  cause: {cause}" in out
    assert (
        f"{trial.data.tags['supcon.trial_id']}: {cause}" in out[out.index("failed trials (1):") :]
    )


def test_single_trial_through_ray_train(
    ray_session, synth_root: Path, tmp_path: Path, capsys
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "trial",
        "--ray",
        "--workers",
        "2",
        "--cpus-per-worker",
        "0.5",
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path),
        *data_overrides(synth_root),
        "stage1.epochs=1",
        "runtime.system_metrics=true",  # on by default only where the trial has GPUs
    ]
    assert main(argv) == 0
    assert "eval/asv19/eer" in capsys.readouterr().out
    rows = Tracking.at(uri, DEFAULT_EXPERIMENT).best(metric="eval/pooled_mean/eer")
    assert len(rows) == 1 and rows[0]["trial_id"].startswith("trial-")
    # rank 0 logged MLflow's system metrics into the trial's run while it trained
    system = [k for k in rows[0]["metrics"] if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system, sorted(rows[0]["metrics"])
    assert "system/system_memory_usage_megabytes" in system


@pytest.mark.slow
def test_a_trial_whose_workers_cannot_start_fails_naming_its_resources(
    ray_session, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """3 CPUs per worker on the session's 2: Ray Train retried the start every 60 s forever.
    The trial joins the session by address (as on a cluster, which is not checked before
    Ray), so it meets Ray Train's start-up timeout: one attempt with --start-timeout 1."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["trial", "--ray", "--workers", "1", "--cpus-per-worker", "3", "--start-timeout", "1"]
    address = ray_session.get_runtime_context().gcs_address
    argv += ["--address", address, "--tracking-uri", uri, "--out", str(tmp_path)]
    assert main([*argv, *data_overrides(synth_root), "stage1.epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "its 1 worker(s) did not start within 1 s: each asks for 3 CPU" in err
    assert "the cluster has 2 CPU in all" in err and "--start-timeout" in err
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id]
    )
    assert parent.info.status == "FAILED"


def test_best_registers_the_champion_that_scores_as_its_trial(
    smoke_sweep: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """``best --register``: the best trial's model becomes version 1 of NAME, alias champion,
    tagged with the sweep, config id and selection metric; again, nothing is created. Loaded
    by name it scores; ``score --model models:/...`` reproduces the trial's own test-set score
    file (the best trial is the one the sweep scored, ``--eval-top-k 1``)."""
    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    argv = ["best", "--out", str(smoke_sweep), "--register", "smoke-detector"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "registered trial" in out and "version 1, alias champion" in out
    assert main(argv) == 0
    assert "already registered (nothing created)" in capsys.readouterr().out
    client = MlflowClient(uri, uri)
    assert len(client.search_model_versions("name = 'smoke-detector'")) == 1
    version = client.get_model_version_by_alias("smoke-detector", "champion")
    (best,) = Tracking.at(uri, DEFAULT_EXPERIMENT).best(
        "sweep/objective", top=1, confirmations=False
    )
    assert version.run_id == best["run_id"]
    assert version.source == best["tags"]["supcon.model_uri"]
    assert version.tags["supcon.sweep"] == "smoke"
    assert version.tags["supcon.selected_by"] == "sweep/objective (min)"
    assert float(version.tags["supcon.selected_value"]) == best["metrics"]["sweep/objective"]
    assert version.tags["supcon.config_id"]

    scored = tmp_path / "asv19.tsv"
    spec = f"asvspoof2019:{synth_root / 'LA'}:eval"
    argv = ["score", "--model", "models:/smoke-detector@champion", "--tracking-uri", uri]
    assert main([*argv, "--corpus", spec, "--out", str(scored)]) == 0
    theirs = Path(client.download_artifacts(best["run_id"], "scores/asv19.tsv", str(tmp_path)))
    mine_rows = scored.read_text().splitlines()
    their_rows = theirs.read_text().splitlines()
    assert len(mine_rows) == len(their_rows) == 69
    for a, b in zip(mine_rows[1:], their_rows[1:], strict=True):
        (ua, sa, *ra), (ub, sb, *rb) = a.split("\t"), b.split("\t")
        assert ua == ub and ra == rb and abs(float(sa) - float(sb)) <= 1e-5
    eer = best["metrics"]["eval/asv19/eer"]
    assert f"EER {100 * eer:.2f} %" in capsys.readouterr().err


def test_trial_runs_record_their_corpora_and_best_warns_on_versions(
    smoke_sweep: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """Each trial run names the corpus versions its numbers came from (MLflow dataset inputs:
    the protocol's digest); ``best`` warns when the trials it ranks read different versions."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from orchestrator.tracking.datasets import file_digest

    la = synth_root / "LA" / "ASVspoof2019_LA_cm_protocols"
    expected = {
        "train:asvspoof2019/train": ("training", la / "ASVspoof2019.LA.cm.train.trn.txt"),
        "dev:asvspoof2019/dev": ("validation", la / "ASVspoof2019.LA.cm.dev.trl.txt"),
        "asv19:asvspoof2019/eval": ("evaluation", la / "ASVspoof2019.LA.cm.eval.trl.txt"),
    }
    client = MlflowClient(f"sqlite:///{smoke_sweep / 'mlflow.db'}")
    runs = _children(smoke_sweep)
    for run in runs:
        inputs = {i.dataset.name: i for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
        assert set(expected) < set(inputs), sorted(inputs)
        for name, (context, protocol) in expected.items():
            assert inputs[name].dataset.digest == file_digest(protocol)
            assert {t.key: t.value for t in inputs[name].tags}["mlflow.data.context"] == context
        profile = json.loads(inputs["dev:asvspoof2019/dev"].dataset.profile)
        assert sum(profile["labels"].values()) == profile["rows"] > 0
    assert main(["best", "--out", str(smoke_sweep)]) == 0
    assert "different versions" not in capsys.readouterr().err
    # the same store with one trial's training protocol edited: best says so
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(smoke_sweep / "mlflow.db", copy / "mlflow.db")
    edited = Dataset("train:asvspoof2019/train", "0123456789abcdef", "local", "{}")
    MlflowClient(f"sqlite:///{copy / 'mlflow.db'}").log_inputs(
        runs[0].info.run_id, [DatasetInput(edited, [InputTag("mlflow.data.context", "training")])]
    )
    assert main(["best", "--out", str(copy)]) == 0
    err = capsys.readouterr().err
    assert "read different versions of train:asvspoof2019/train" in err
    assert "0123456789abcdef" in err


def test_the_sweeps_study_lives_in_optuna_storage_and_the_dashboard_reads_it(
    smoke_sweep: Path, tmp_path: Path
) -> None:
    """The grid's trials are in the sweep's Optuna study (``OUT/optuna.db``, named after the
    sweep and its parent run), one per MLflow trial run, with the values MLflow holds as
    ``sweep/objective``; optuna-dashboard, started on 127.0.0.1, serves them."""
    import subprocess
    import sys
    import urllib.request

    import optuna

    from tests.helpers import free_port, wait_for

    storage = f"sqlite:///{smoke_sweep / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    client = MlflowClient(f"sqlite:///{smoke_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    (parent,) = _sweep_parents(client.search_runs([experiment]))
    assert summary.study_name == f"smoke-{parent.info.run_id[:8]}"
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    runs = _children(smoke_sweep)
    mlflow_values = sorted(r.data.metrics["sweep/objective"] for r in runs)
    assert sorted(t.value for t in study.trials) == pytest.approx(mlflow_values)
    assert {t.params["loss.temperature"] for t in study.trials} == {0.1, 0.3}

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "optuna-dashboard"), storage]
    log = (tmp_path / "dashboard.log").open("w")
    dashboard = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}/api/studies"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(base, timeout=2):
                return True
        except OSError:
            return dashboard.poll() is not None

    try:
        wait_for(answers, 60, "optuna-dashboard")
        with urllib.request.urlopen(base, timeout=5) as reply:
            (listed,) = json.load(reply)["study_summaries"]
        assert listed["study_name"] == summary.study_name
        with urllib.request.urlopen(f"{base}/{listed['study_id']}?after=0", timeout=5) as reply:
            trials = json.load(reply)["trials"]
        assert sorted(t["values"][0] for t in trials) == pytest.approx(mlflow_values)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
