"""MLflow tracking on a real SQLite store: parent and nested trial runs, resume, best-run queries,
the ``best`` command, and logging while another MLflow run is active in the process."""

from __future__ import annotations

import http.server
import json
import logging
import math
import socket
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking import (
    SweepRun,
    Tracking,
    TrackingError,
    artifact_root,
    check_reachable,
    resolve_tracking_uri,
)
from trainer.config import flatten, load_config

METRIC = "eval/pooled_mean/eer"
SPACE = "loss.temperature: {loguniform: [0.03, 1.0]}\n"


def _config(temperature: float, weight_decay: float = 1e-4) -> dict:
    overrides = [f"loss.temperature={temperature}", f"stage1.weight_decay={weight_decay}"]
    return flatten(load_config(overrides=overrides))


def _final(eer: float) -> dict[str, float]:
    return {
        METRIC: eer,
        "eval/pooled_all/eer": eer + 0.01,
        "eval/asv19/eer": eer,
        "eval/asv19/eer_A07": 0.5,
        "eval/itw/eer": eer + 0.02,
        "classifier/dev/eer": 0.05,
    }


def _trial(parent: SweepRun, trial_id: str, temperature: float, eer: float, **kw) -> str:
    status = kw.pop("status", "FINISHED")
    tracker = Tracking(parent.target).open_trial(trial_id, _config(temperature, **kw))
    for epoch in range(2):
        tracker.log_metrics({"encoder/dev/eer": eer + 0.1 * (2 - epoch)}, step=epoch)
    tracker.log_metrics(_final(eer), step=2)
    if status != "RUNNING":
        tracker.finish(status)
    return tracker.run_id


def _sweep(uri: str, name: str, experiment: str = DEFAULT_EXPERIMENT) -> SweepRun:
    params = {
        "space": "default.yaml",
        "num_samples": 3,
        "scheduler": "asha",
        "metric": "encoder/dev/eer",
        "mode": "min",
    }
    return Tracking.at(uri, experiment).start_sweep(
        name, searcher="optuna-tpe", params=params, tags={}, space_text=SPACE
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``OUT/mlflow.db``: sweep ``s1`` with three finished trials (ranked t_b < t_a < t_c by
    EER), one failed, one running, one whose EER was NaN; sweep ``s2`` with one trial."""
    out = tmp_path_factory.mktemp("out")
    uri = resolve_tracking_uri(f"sqlite:///{out / 'mlflow.db'}", out)
    s1 = _sweep(uri, "s1")
    _trial(s1, "t_a", 0.1, 0.20)
    _trial(s1, "t_b", 0.3, 0.10, weight_decay=1e-5)
    _trial(s1, "t_c", 0.5, 0.30)
    _trial(s1, "t_failed", 0.05, 0.01, status="FAILED")
    _trial(s1, "t_running", 0.07, 0.02, status="RUNNING")
    _trial(s1, "t_nan", 0.9, math.nan)
    s1.finish()
    s2 = _sweep(uri, "s2")
    _trial(s2, "t_other", 0.2, 0.25)
    s2.finish()
    return out


def _uri(out: Path) -> str:
    return f"sqlite:///{out / 'mlflow.db'}"


def test_query_best_orders_filters_and_parses(store: Path) -> None:
    uri = _uri(store)
    rows = Tracking.at(uri, DEFAULT_EXPERIMENT).best(METRIC, "min", top=10)
    assert [r["trial_id"] for r in rows] == ["t_b", "t_a", "t_other", "t_c"]
    assert [r["metrics"][METRIC] for r in rows] == pytest.approx([0.10, 0.20, 0.25, 0.30])
    worst = Tracking.at(uri, DEFAULT_EXPERIMENT).best(METRIC, "max", top=2)
    assert [r["trial_id"] for r in worst] == ["t_c", "t_other"]
    one_sweep = Tracking.at(uri, DEFAULT_EXPERIMENT).best(
        METRIC, top=2, parent_run_id=_sweep(uri, "s1").run_id
    )
    assert [r["trial_id"] for r in one_sweep] == ["t_b", "t_a"]
    params = rows[0]["params"]
    assert params["loss.temperature"] == 0.3 and params["queue.size"] == 64
    assert params["stage1.weight_decay"] == 1e-5 and isinstance(
        params["stage1.weight_decay"], float
    )
    assert params["model.pretrained"] is None and params["queue.same_label"] == "exclude"
    assert params["data.train.kind"] == "asvspoof2019"


def test_parent_and_child_runs(store: Path) -> None:
    client = MlflowClient(_uri(store))
    parent = _sweep(_uri(store), "s1")
    run = client.get_run(parent.run_id)
    assert run.info.run_name == "s1" and run.data.params["num_samples"] == "3"
    assert run.data.params["searcher"] == "optuna-tpe" == parent.target.searcher
    assert (parent.target.uri, parent.target.experiment) == (_uri(store), DEFAULT_EXPERIMENT)
    assert run.data.tags["supcon.code_version"]
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["search_space.yaml"]
    assert (store / "mlartifacts").is_dir()  # the embedded store's artifacts live beside it
    children = client.search_runs(
        [parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
    )
    assert len(children) == 6
    b = next(r for r in children if r.info.run_name == "t_b")
    assert b.data.tags["supcon.status"] == "FINISHED" and b.info.status == "FINISHED"
    assert b.data.params["stage1.weight_decay"] == "1.0e-05"
    history = client.get_metric_history(b.info.run_id, "encoder/dev/eer")
    assert [m.step for m in history] == [0, 1]
    nan = next(r for r in children if r.info.run_name == "t_nan")
    assert METRIC not in nan.data.metrics and "classifier/dev/eer" in nan.data.metrics


def test_resume_continues_the_same_runs(store: Path, tmp_path: Path, caplog) -> None:
    uri = _uri(store)
    first = _sweep(uri, "resumed", experiment="resume")
    second = _sweep(uri, "resumed", experiment="resume")
    assert second.run_id == first.run_id
    assert _sweep(uri, "another", experiment="resume").run_id != first.run_id
    params = _config(0.2)
    tracker = Tracking(first.target).open_trial("t1", params)
    tracker.log_metrics({"encoder/dev/eer": 0.4}, step=0)
    tracker.finish("FAILED")
    again = Tracking(second.target).open_trial("t1", params)
    assert again.run_id == tracker.run_id
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        again.log_metrics({"encoder/dev/eer": 0.3, "encoder/dev/loss": math.inf}, step=1)
    assert "encoder/dev/loss" in caplog.text
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "det.png").write_bytes(b"png")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    again.log_artifacts([tmp_path / "config.yaml", tmp_path / "plots", tmp_path / "missing"])
    again.finish("FINISHED")
    client = MlflowClient(uri)
    run = client.get_run(again.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["supcon.status"] == "FINISHED"
    history = client.get_metric_history(again.run_id, "encoder/dev/eer")
    assert [(m.step, m.value) for m in history] == [(0, 0.4), (1, 0.3)]
    assert "encoder/dev/loss" not in run.data.metrics
    assert {a.path for a in client.list_artifacts(again.run_id)} == {"config.yaml", "plots"}
    siblings = client.search_runs([first.experiment_id], "tags.`supcon.trial_id` = 't1'")
    assert len(siblings) == 1


@pytest.fixture
def fluent_uri(monkeypatch: pytest.MonkeyPatch):
    """Leave MLflow's global tracking URI unset afterwards (``set_tracking_uri`` also sets the
    env var, which monkeypatch restores)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None: back to "not set"


def test_logging_with_an_active_run(store: Path, fluent_uri) -> None:
    uri = _uri(store)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name="outer") as active:
        parent = _sweep(uri, "inside", experiment="active")
        tracker = Tracking(parent.target).open_trial("t9", _config(0.1))
        tracker.log_metrics({"encoder/dev/eer": 0.25}, step=0)
        tracker.finish("FINISHED")
        parent.finish("FINISHED")
        assert mlflow.active_run().info.run_id == active.info.run_id
    client = MlflowClient(uri)
    outer = client.get_run(active.info.run_id)
    assert outer.data.metrics == {} and outer.data.params == {}
    assert outer.info.status == "FINISHED"  # ended by its own `with`, not by the tracker
    child = client.get_run(tracker.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.metrics == {"encoder/dev/eer": 0.25}


def test_check_reachable_fails_fast_without_credentials() -> None:
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9"):
        check_reachable("http://127.0.0.1:9")
    with pytest.raises(TrackingError) as err:
        check_reachable("http://alice:secret@127.0.0.1:9/mlflow")
    assert time.monotonic() - start < 10
    assert "secret" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_check_reachable_accepts_an_answering_server(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_address[1]}")  # a 501 is an answer
    finally:
        server.shutdown()
    check_reachable(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    assert (tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(TrackingError, match="cannot create"):
        check_reachable(f"sqlite:///{tmp_path / 'file' / 'sub' / 'mlflow.db'}")


def test_best_table(store: Path, capsys) -> None:
    assert main(["best", "--tracking-uri", _uri(store), "--metric", "encoder/dev/eer"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:2] == ["#", "trial"] and "loss.temperature" in header
    assert "stage1.weight_decay" in header  # differs among the shown runs
    assert {"asv19", "itw", "pooled_mean", "pooled_all"} <= set(header)
    assert "eer_A07" not in out
    assert lines[1].split()[:2] == ["1", "t_b"] and "10.00" in lines[1].split()
    assert "test-set" not in err


def test_best_json_and_export(store: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = tmp_path / "cfg" / "best.yaml"
    argv = ["best", "--out", str(store), "--json", "--top", "3", "--export", str(target)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [r["trial_id"] for r in rows] == ["t_b", "t_a", "t_other"]
    assert "test-set" not in err and str(target.resolve()) in err  # the sweeps' dev objective
    assert main(["best", "--out", str(store), "--json", "--metric", METRIC]) == 0
    assert "test-set" in capsys.readouterr().err
    cfg = load_config(target)
    assert cfg.loss.temperature == rows[0]["params"]["loss.temperature"] == 0.3
    assert cfg.stage1.weight_decay == 1e-5


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("a folder", "is a directory; name the YAML file to write"),
        ("/proc/best.yaml", "cannot write --export /proc/best.yaml: "),
    ],
)
def test_an_export_that_cannot_be_written_is_a_clear_error(
    store: Path, tmp_path: Path, capsys, where: str, said: str
) -> None:
    target = tmp_path if where == "a folder" else Path(where)
    assert main(["best", "--out", str(store), "--export", str(target)]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_best_on_a_missing_store_creates_nothing(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-sweep-here"
    for argv in (["best"], ["best", "--by-config"]):
        assert main([*argv, "--out", str(missing)]) == 2
        assert f"no MLflow store at {missing / 'mlflow.db'}" in capsys.readouterr().err
    assert not missing.exists()


def test_best_ranks_by_the_sweep_objective_and_marks_untested_trials(
    tmp_path: Path, capsys
) -> None:
    """A sweep that selected on classifier/dev/eer and scored only its best trial on the test
    sets: ``best`` ranks by that objective and marks the other trial's test columns n/e."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"metric": "classifier/dev/eer", "mode": "min"}
    sweep = Tracking.at(uri, DEFAULT_EXPERIMENT).start_sweep(
        "s", searcher="grid", params=params, tags={}, space_text=None
    )
    for trial_id, dev, tested in (("t_tested", 0.05, True), ("t_untested", 0.08, False)):
        tracker = Tracking(sweep.target).open_trial(trial_id, _config(0.1))
        # the encoder's dev EER ranks the other way round: it is not the objective here
        tracker.log_metrics({"classifier/dev/eer": dev, "encoder/dev/eer": 0.3 - dev}, step=0)
        if tested:
            tracker.log_metrics({"eval/asv19/eer": 0.12, "eval/itw/eer": 0.3}, step=0)
        tracker.finish()
    sweep.finish()
    assert main(["best", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["1", "t_tested"] and "12.00" in out[1].split()
    assert out[2].split()[:2] == ["2", "t_untested"] and out[2].split().count("n/e") == 2
    assert out[-1].startswith("n/e: not scored on the evaluation sets")


def test_best_errors(store: Path, tmp_path: Path, capsys) -> None:
    """What ``best`` is asked for does not exist: bad input, exit status 2."""
    uri = _uri(store)
    assert main(["best", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and DEFAULT_EXPERIMENT in err and str(store / "mlflow.db") in err
    assert main(["best", "--tracking-uri", uri, "--metric", "eval/absent/eer"]) == 2
    assert "no finished trial" in capsys.readouterr().err
    assert main(["best", "--out", str(tmp_path), "--tracking-uri", _uri(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri(None, Path("runs"))
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" and uri.startswith("sqlite:////")
    assert resolve_tracking_uri("sqlite:///rel.db", Path("x")) == f"sqlite:///{tmp_path / 'rel.db'}"
    assert artifact_root(Path("runs")) == (tmp_path / "runs" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, Path("runs")) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://other:5000", Path("runs")) == "http://other:5000"


def test_trial_metrics_survive_an_mlflow_outage(store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nobody listens on: the server is down
        s.bind(("127.0.0.1", 0))
        down = MlflowClient(f"http://127.0.0.1:{s.getsockname()[1]}")
    parent = _sweep(_uri(store), "s_outage")
    tracker = Tracking(parent.target).open_trial(
        "t_outage", {}, spool=tmp_path / "unsent.jsonl", patience=1.0
    )
    up = tracker.client
    tracker.log_metrics({"encoder/dev/eer": 0.3}, step=0)
    tracker.client = down
    start = time.monotonic()
    tracker.log_metrics({"encoder/dev/eer": 0.2}, step=1)  # buffered, training goes on
    tracker.log_metrics({"encoder/dev/eer": 0.1}, step=2)
    assert time.monotonic() - start < 5
    tracker.client = up  # the server is back: the next log sends the backlog in order
    tracker.log_metrics({"encoder/dev/eer": 0.05}, step=3)
    history = up.get_metric_history(tracker.run_id, "encoder/dev/eer")
    assert [(m.step, m.value) for m in history] == [(0, 0.3), (1, 0.2), (2, 0.1), (3, 0.05)]
    # An outage outlasting the patience fails the trial clearly and keeps what was not sent.
    tracker.client = down
    tracker.log_metrics({"eval/asv19/eer": 0.07}, step=4)
    with pytest.raises(TrackingError, match=r"1 metric points not logged, kept in .*unsent"):
        tracker.finish()
    row = json.loads((tmp_path / "unsent.jsonl").read_text())
    assert (row["key"], row["value"], row["step"]) == ("eval/asv19/eer", 0.07, 4)
    assert up.get_run(tracker.run_id).info.status == "RUNNING"  # not marked as finished


def test_experiments_open_on_their_runs_in_the_mlflow_ui(store: Path, tmp_path: Path) -> None:
    """A new experiment is marked as model training (the UI then opens on its runs, not on GenAI
    traces); an existing unmarked one is marked; a kind someone chose is kept."""
    client = MlflowClient(_uri(store))
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    other = MlflowClient(uri)
    plain = other.create_experiment("plain")
    chosen = other.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("plain", "chosen"):
        Tracking.at(uri, name).start_sweep(
            "s", searcher="grid", params={}, tags={}, space_text=None
        )
    assert other.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"
    assert other.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_the_ui_link_opens_the_runs_without_credentials() -> None:
    """MLflow 3.17's UI opens experiments on its GenAI pages unless the URL asks for the
    model-training view; the link a sweep prints asks for it and hides a password."""
    from orchestrator.tracking.store import ui_link

    remote = ui_link("https://bob:s3cret@mlflow.example.com/", "7")
    assert remote == "https://***@mlflow.example.com/#/experiments/7?workflowType=machine_learning"
    local = ui_link("sqlite:///runs/mlflow.db", "1")
    assert local.startswith(
        "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1"
    )
    assert local.endswith("http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning")


def test_a_runs_configuration_id_is_recomputed_from_its_params_and_world_size() -> None:
    """best --by-config groups by this: stores tagged by an older version (whose id hashed the
    runtime keys and not the world size) group as today's; without resources the tag stays."""
    import json as _json

    from orchestrator.tracking.query import row_config_id
    from trainer.config import flatten, load_config
    from trainer.identity import config_id

    cfg = load_config()
    params = flatten(cfg)
    resources = _json.dumps({"workers": 2, "gpus": 0, "cpus_per_worker": 1.0})
    row = {
        "params": params,
        "tags": {"supcon.config_id": "old0ld0ld0l", "supcon.resources": resources},
    }
    assert row_config_id(row) == config_id(cfg, 2)
    threads = {**row, "params": {**params, "runtime.threads": 7}}
    assert row_config_id(threads) == row_config_id(row)
    old = {**params, "queue.positives": True}
    del old["queue.same_label"]
    assert row_config_id({**row, "params": old}) == config_id(
        cfg.model_copy(update={"queue": cfg.queue.model_copy(update={"same_label": "positive"})}), 2
    )
    assert row_config_id({"params": params, "tags": {"supcon.config_id": "abc"}}) == "abc"


def test_a_run_the_sweeps_driver_closed_keeps_its_status(store: Path) -> None:
    """A trial Tune stopped is closed KILLED by the driver; workers torn down around it and
    failing on the way must not turn it FAILED (nor move its end time)."""
    sweep = _sweep(_uri(store), "closed", experiment="closed")
    tracker = Tracking(sweep.target).open_trial("t9", _config(0.2))
    assert Tracking(sweep.target).close_trial("t9", "KILLED", "stopped early by the scheduler")
    client = MlflowClient(_uri(store))
    ended = client.get_run(tracker.run_id).info
    tracker.finish("FAILED")
    after = client.get_run(tracker.run_id)
    assert after.info.status == "KILLED" and after.info.end_time == ended.end_time
    assert after.data.tags["supcon.end_reason"] == "stopped early by the scheduler"


def test_a_failure_is_recorded_as_its_class_and_first_line_without_credentials() -> None:
    from orchestrator.tracking import error_text
    from trainer.data.errors import AudioDecodeError

    err = AudioDecodeError(Path("/c/LA_T_1.flac"), "truncated body\nmore detail")
    assert (
        error_text(err)
        == "AudioDecodeError: cannot decode audio file /c/LA_T_1.flac: truncated body"
    )
    leaky = RuntimeError("cannot reach http://alice:s3cret@mlflow:5000/api (refused)")
    assert error_text(leaky) == "RuntimeError: cannot reach http://***@mlflow:5000/api (refused)"
    assert len(error_text(ValueError("x" * 2000))) == 500


def test_a_failed_trial_s_cause_is_tagged_even_when_its_workers_closed_the_run(
    tmp_path: Path,
) -> None:
    """The driver tags the cause it saw unless rank 0 tagged one; it never reopens the run."""
    from orchestrator.tracking import ERROR_TAG

    tracking = Tracking.at(f"sqlite:///{tmp_path / 'mlflow.db'}", "e")
    parent = tracking.start_sweep("s", searcher="grid", params={}, tags={}, space_text=None)
    client = MlflowClient(parent.target.uri)
    for trial_id, worker_cause in (("a", None), ("b", "NonFiniteLossError: loss is nan")):
        run = client.create_run(
            parent.target.experiment_id,
            tags={"mlflow.parentRunId": parent.run_id, "supcon.trial_id": trial_id},
        )
        if worker_cause:
            client.set_tag(run.info.run_id, ERROR_TAG, worker_cause)
        client.set_terminated(run.info.run_id, "FAILED")
    closing = Tracking(parent.target)
    assert not closing.close_trial("a", "FAILED", "trial errored", error="TrialStartError: x")
    assert not closing.close_trial("b", "FAILED", "trial errored", error="RayTaskError: y")
    tags = {r.data.tags["supcon.trial_id"]: r.data.tags[ERROR_TAG] for r in closing.trial_runs()}
    assert tags == {"a": "TrialStartError: x", "b": "NonFiniteLossError: loss is nan"}
