"""``supcon-sweep evaluate`` on the smoke sweep's trial that the sweep did not score: from its
stored model, into its own run, status unchanged; sets already scored are skipped; bad input
names the run, the set or the missing storage; a failing set leaves none of its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from orchestrator.tracking import Tracking
from trainer.evaluate import CONFIG

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _untested(out: Path):
    """The trial the sweep did not score on the test sets: the second by its objective."""
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    # the sweep's own trials: the confirm tests add reruns of the best one to this store
    _, second = Tracking.at(uri, DEFAULT_EXPERIMENT).best(
        "encoder/dev/eer", top=2, confirmations=False
    )
    return client, client.get_run(second["run_id"])


def _evaluate(out: Path, run_id: str, *extra: str) -> int:
    return main(["evaluate", "--run-id", run_id, "--out", str(out), *extra])


def _eval_keys(client: MlflowClient, run_id: str) -> set[str]:
    return {k for k in client.get_run(run_id).data.metrics if k.startswith("eval/")}


def test_evaluate_scores_a_trial_later_and_skips_what_it_has(
    smoke_sweep: Path, synth_root: Path, capsys
) -> None:
    client, run = _untested(smoke_sweep)
    run_id = run.info.run_id
    # The itw set (second in the config) cannot be read: the stored model's config points it
    # at a folder that does not exist (the shared corpus itself is left alone: tests beside
    # this one read it).
    stored = Path(run.data.tags["supcon.model_uri"]) / CONFIG
    kept = stored.read_text()
    assert str(synth_root / "itw") in kept
    stored.write_text(kept.replace(str(synth_root / "itw"), str(synth_root.parent / "itw-gone")))
    try:
        assert _evaluate(smoke_sweep, run_id) == 1
    finally:
        stored.write_text(kept)
    err = capsys.readouterr().err
    assert "evaluation set itw failed" in err and run_id in err
    keys = _eval_keys(client, run_id)
    assert "eval/asv19/eer" in keys and not any(k.startswith("eval/itw/") for k in keys)
    assert "eval/pooled_mean/eer" not in keys  # pooled figures need every set

    assert _evaluate(smoke_sweep, run_id) == 0  # every set again: the pooled figures need them
    out = capsys.readouterr().out
    assert "scoring asv19, itw" in out and "eval/pooled_mean/eer" in out
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED" and after.info.end_time == run.info.end_time
    for key in ("eval/asv19/eer", "eval/itw/eer", "eval/pooled_mean/eer", "eval/pooled_all/eer"):
        assert 0.0 <= after.data.metrics[key] <= 1.0, key
    scores = {a.path for a in client.list_artifacts(run_id, "scores")}
    assert {"scores/asv19.tsv", "scores/itw.tsv"} <= scores
    points = len(client.get_metric_history(run_id, "eval/itw/eer"))

    assert _evaluate(smoke_sweep, run_id) == 0
    assert "already has every asked set" in capsys.readouterr().out
    assert _evaluate(smoke_sweep, run_id, "--sets", "itw", "--force") == 0
    assert "scoring itw" in capsys.readouterr().out
    assert len(client.get_metric_history(run_id, "eval/itw/eer")) == points + 1


def test_evaluate_refuses_what_it_cannot_evaluate(smoke_sweep: Path, capsys) -> None:
    client, run = _untested(smoke_sweep)
    run_id = run.info.run_id
    assert _evaluate(smoke_sweep, "0" * 32) == 2
    assert f"no MLflow run {'0' * 32}" in capsys.readouterr().err
    assert _evaluate(smoke_sweep, run_id, "--sets", "asv19,asv21df") == 2
    assert "no evaluation set asv21df; its sets: asv19, itw" in capsys.readouterr().err

    uri = f"sqlite:///{smoke_sweep / 'mlflow.db'}"
    other = Tracking.at(uri, "elsewhere").start_sweep(
        "s", searcher="grid", params={}, tags={}, space_text=None
    )
    running = Tracking(other.target).open_trial("t_running", {"loss.temperature": 0.1})
    assert _evaluate(smoke_sweep, running.run_id, "--experiment", "elsewhere") == 2
    assert "is RUNNING: only a finished trial" in capsys.readouterr().err
    assert _evaluate(smoke_sweep, running.run_id) == 2
    assert "is in experiment 'elsewhere', not 'supcon-sweep'" in capsys.readouterr().err
    running.finish("FINISHED")
    assert _evaluate(smoke_sweep, running.run_id, "--experiment", "elsewhere") == 2
    assert "has no stored model" in capsys.readouterr().err

    model = Path(run.data.tags["supcon.model_uri"])
    moved = model.with_name(model.name + ".moved")
    model.rename(moved)
    try:
        assert _evaluate(smoke_sweep, run_id, "--force") == 2
    finally:
        moved.rename(model)
    err = capsys.readouterr().err
    assert f"its model storage {model} is gone" in err
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--run-id", run_id, "--out", str(smoke_sweep), "--sets", ","])
    assert done.value.code == 2 and "names separated by commas" in capsys.readouterr().err
    assert client.get_run(run_id).info.status == "FINISHED"


def test_eval_top_k_must_be_a_count_or_all(tmp_path: Path, capsys) -> None:
    for bad in ("-1", "three", "1.5"):
        with pytest.raises(SystemExit) as done:
            main(["sweep", "--out", str(tmp_path), "--eval-top-k", bad])
        assert done.value.code == 2
        assert "--eval-top-k" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
