"""A trial's model folder is an MLflow model: MLflow loads it and it scores audio as the trial
did; ``supcon-sweep score`` reproduces the trial's own score file and EER, and counts and lists
the clips it cannot read instead of dropping them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from orchestrator.cli import main as cli
from orchestrator.tracking.pyfunc import PyfuncDetector
from trainer.data.records import Utterance
from trainer.evaluate import DECISION
from trainer.metrics import compute_eer
from trainer.scores import read_scores


@pytest.fixture
def trial(micro_trial: Path) -> Path:
    return micro_trial


def _eval_flac(synth_root: Path, utt_id: str) -> Path:
    return synth_root / "LA" / "ASVspoof2019_LA_eval" / "flac" / f"{utt_id}.flac"


def test_the_folder_loads_with_mlflow_and_scores_as_the_trial(trial: Path, synth_root) -> None:
    mine = read_scores(trial / "scores" / "asv19.tsv")  # utt_id -> score
    ids = sorted(mine)[:6]
    paths = [str(_eval_flac(synth_root, u)) for u in ids]
    model = mlflow.pyfunc.load_model(str(trial / "model"))
    by_path = model.predict(paths)
    assert list(by_path.columns) == ["score", "bonafide"] and len(by_path) == 6
    np.testing.assert_allclose(by_path["score"], [mine[u] for u in ids], atol=1e-5)
    waves = [sf.read(p, dtype="float32")[0] for p in paths]  # 16 kHz arrays
    np.testing.assert_allclose(model.predict(waves)["score"], by_path["score"], atol=1e-5)
    frame = model.predict(pd.DataFrame({"path": paths}))
    np.testing.assert_allclose(frame["score"], by_path["score"], atol=1e-5)
    np.testing.assert_allclose(model.predict(pd.Series(paths))["score"], by_path["score"])
    # the decision is the dev EER point: the threshold the trial's dev scores give
    decision = json.loads((trial / "model" / DECISION).read_text())
    dev = pd.read_csv(trial / "scores" / "dev.tsv", sep="\t")
    bona = dev["label"] == "bonafide"
    eer, threshold = compute_eer(dev["score"][bona], dev["score"][~bona])
    assert decision["threshold"] == pytest.approx(threshold)
    assert decision["dev_eer"] == pytest.approx(eer)
    assert (by_path["bonafide"] == (by_path["score"] > threshold)).all()


def test_a_bad_input_to_predict_names_what_it_wanted(trial: Path) -> None:
    model = mlflow.pyfunc.load_model(str(trial / "model"))
    with pytest.raises(ValueError, match="'path' or 'audio' column"):
        model.predict(pd.DataFrame({"a": [1], "b": [2]}))
    detector = PyfuncDetector(trial / "model").load()
    with pytest.raises(ValueError, match="must be 1-D"):
        detector.predict(None, [np.zeros((2, 100), dtype=np.float32)])
    assert len(detector.score_utterances([Utterance("x", Path("/nope.flac"), "spoof")][:0])) == 0


def test_score_reproduces_the_trials_score_file_and_eer(
    trial: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "asv19.tsv"
    spec = f"asvspoof2019:{synth_root / 'LA'}:eval"
    assert cli(["score", "--model", str(trial / "model"), "--corpus", spec, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    theirs = pd.read_csv(trial / "scores" / "asv19.tsv", sep="\t")
    mine = pd.read_csv(out, sep="\t")
    assert list(mine.columns) == list(theirs.columns)
    assert (mine["utt_id"] == theirs["utt_id"]).all() and (mine["label"] == theirs["label"]).all()
    assert (mine["score"] - theirs["score"]).abs().max() <= 1e-5
    eer = json.loads((trial / "metrics.json").read_text())["eval/asv19/eer"]
    assert f"EER {100 * eer:.2f} %" in err
    assert "clips/s" in err and "scored 68 clip(s)" in err


def test_score_counts_and_lists_unreadable_clips(
    trial: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    flacs = sorted((synth_root / "LA" / "ASVspoof2019_LA_eval" / "flac").glob("*.flac"))[:4]
    for flac in flacs:
        shutil.copy(flac, clips)
    (clips / "truncated.flac").write_bytes(flacs[0].read_bytes()[:200])
    out = tmp_path / "scores.tsv"
    code = cli(
        ["score", "--model", str(trial / "model"), str(clips), str(tmp_path / "gone.wav"),
         "--out", str(out)]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "2 of 6 clip(s) could not be read" in err
    assert "truncated.flac: cannot decode audio file" in err and "gone.wav: no such file" in err
    rows = pd.read_csv(out, sep="\t")
    assert sorted(rows["utt_id"]) == sorted(f.stem for f in flacs)
    assert set(rows["decision"]) <= {"bonafide", "spoof"}
    side = (tmp_path / "scores.tsv.unreadable.tsv").read_text().splitlines()
    assert len(side) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/nowhere", "x.flac"], "not an MLflow model folder"),
        (["--corpus", "asvspoof2019"], "expected KIND:ROOT[:SPLIT]"),
        (["--corpus", "asvspoof2019:/nowhere:nope"], "is not a split of asvspoof2019"),
        (["--corpus", "asvspoof2019:/nowhere"], "root not found"),
        (["--list", "/nowhere.txt"], "--list /nowhere.txt: no such file"),
    ],
)
def test_score_refuses_bad_input(
    trial: Path, tmp_path: Path, argv: list[str], message: str, capsys
) -> None:
    if "--model" not in argv:
        argv = ["--model", str(trial / "model"), *argv]
    assert cli(["score", *argv, "--out", str(tmp_path / "s.tsv")]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
