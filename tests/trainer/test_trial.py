"""End-to-end trials on the synthetic corpus: CLI smoke run (``python -m trainer``, which is also
``supcon-sweep trial``), stage-2 freeze, resume after a kill, and a non-finite loss failing the
trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, free_port, micro
from trainer.cli import main
from trainer.config import load_config
from trainer.data.corpora import read_corpus
from trainer.evaluate import FOLDER_FILES, ModelNotFoundError, load_model
from trainer.reporting import EPOCH_METRICS, FINAL_METRICS
from trainer.run import prepare_trial, run_trial
from trainer.runtime import setup
from trainer.scores import read_scores


def test_cli_trial_writes_everything(synth_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "trial"
    assert main(["--out", str(out), *micro(synth_root)]) == 0
    table = capsys.readouterr().out
    assert "eval asv19" in table and "pooled (mean of sets)" in table
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "encoder/dev/eer",
        "classifier/dev/eer",
        "eval/asv19/eer",
        "eval/itw/eer",
        "eval/asv19/eer_A07",
        "eval/pooled_mean/eer",
        "eval/pooled_all/eer",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["eval/pooled_mean/eer"] == pytest.approx(
        (metrics["eval/asv19/eer"] + metrics["eval/itw/eer"]) / 2
    )
    assert len(read_scores(out / "scores" / "asv19.tsv")) == 68
    assert (out / "checkpoints" / "last" / "state.pt").is_file()
    assert (out / "det.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted(FOLDER_FILES)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert (
        epochs[0]["encoder/train/queue_fill"] == 0 and epochs[2]["encoder/train/queue_fill"] == 24
    )
    # The metric lists a sweep checks --metric against are what a trial reports.
    assert all(set(e) == {*EPOCH_METRICS, "epoch", "step"} for e in epochs)
    assert set(FINAL_METRICS) <= set(metrics)


def test_a_trial_scores_asvspoof_2021_both_ways(synth_root: Path, tmp_path: Path) -> None:
    """The 2021 sets of a trial: the literature's eval-subset EER, the authors' all-trials EER,
    the per-subset and per-condition EERs, and pooled figures of both kinds."""
    root = synth_root / "ASVspoof2021"
    sets = (
        f"data.eval={{asv21la: {{kind: asvspoof2021-la, root: {root}}}, "
        f"asv21df: {{kind: asvspoof2021-df, root: {root}}}}}"
    )
    metrics = run_trial(load_config(None, [*micro(synth_root, epochs=1), sets]), tmp_path / "t")
    for name in ("asv21la", "asv21df"):
        for key in ("eer", "eer_all", "eer_subset_eval", "eer_subset_progress"):
            assert 0.0 <= metrics[f"eval/{name}/{key}"] <= 1.0, (name, key)
        assert metrics[f"eval/{name}/eer_subset_eval"] == metrics[f"eval/{name}/eer"]
    assert any(k.startswith("eval/asv21la/eer_codec_") for k in metrics)
    assert any(k.startswith("eval/asv21la/eer_transmission_") for k in metrics)
    assert any(k.startswith("eval/asv21df/eer_vocoder_") for k in metrics)
    assert any(k.startswith("eval/asv21df/eer_source_") for k in metrics)
    assert metrics["eval/pooled_mean/eer_all"] == pytest.approx(
        (metrics["eval/asv21la/eer_all"] + metrics["eval/asv21df/eer_all"]) / 2
    )
    subsets = {
        line.split("\t")[4].split()[6]
        for line in (tmp_path / "t" / "scores" / "asv21la.tsv").read_text().splitlines()[1:]
    }
    assert subsets == {"eval", "progress", "hidden"}  # the score file holds every trial


def test_the_saved_model_scores_a_set_as_the_trial_did(synth_root: Path, tmp_path: Path) -> None:
    """A trial run without its evaluation sets (as a sweep runs it) saves a final model that
    scores them later exactly as an evaluating trial scores them, and stage 1's dev monitor
    on a fixed subset does not touch the stage-2 dev EER's whole dev set."""
    overrides = [*micro(synth_root, epochs=1), "stage1.monitor_subset=20"]
    cfg = load_config(None, overrides)
    evaluated = run_trial(cfg, tmp_path / "with")
    skipped = run_trial(cfg, tmp_path / "without", with_eval=False)
    assert not any(k.startswith("eval/") for k in skipped)
    assert skipped["classifier/dev/eer"] == evaluated["classifier/dev/eer"]
    assert len(read_scores(tmp_path / "without" / "scores" / "dev.tsv")) > 20
    final = load_model(tmp_path / "without" / "model", torch.device("cpu"))
    rt = setup(final.cfg.runtime, final.cfg.seed)
    split = read_corpus(final.cfg.data.eval["asv19"], scoring=True)
    later = final.score_set("asv19", split, rt)
    saved = read_scores(tmp_path / "with" / "scores" / "asv19.tsv")
    assert later.scores.tolist() == [saved[u.utt_id] for u in split.utterances]
    assert later.metrics() == {k: v for k, v in evaluated.items() if k.startswith("eval/asv19/")}
    (tmp_path / "without" / "model" / "model.pt").unlink()
    with pytest.raises(ModelNotFoundError, match=r"missing model\.pt"):
        load_model(tmp_path / "without" / "model", torch.device("cpu"))


def test_stage2_leaves_encoder_and_head_bit_identical(synth_root: Path, tmp_path: Path) -> None:
    cfg = load_config(None, micro(synth_root, epochs=1))
    trial = prepare_trial(cfg, tmp_path / "t")
    trial.run()
    best = torch.load(tmp_path / "t" / "checkpoints" / "last" / "best_model.pt")
    after = trial.model.state_dict()
    assert best.keys() == after.keys()
    assert all(torch.equal(best[k], after[k]) for k in best)
    assert not any(p.requires_grad for p in trial.model.parameters())


def _trial_cmd(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "trainer", "--out", str(out), *overrides]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(synth_root: Path, tmp_path: Path) -> None:
    overrides = micro(synth_root, epochs=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(
        _trial_cmd(straight, overrides), check=True, cwd=ROOT, env=env, capture_output=True
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _trial_cmd(killed, overrides),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    from trainer import checkpoint

    saved = checkpoint.load(killed / "checkpoints" / "last", map_location="cpu")
    earlier = saved["state"]["progress"]["elapsed_s"]  # stage 1's time before the kill
    assert earlier > 0
    done = subprocess.run(
        _trial_cmd(killed, overrides),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr

    def results(out: Path) -> dict[str, float]:  # wall-clock timings are not results
        metrics = json.loads((out / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if not k.startswith("time/")}

    assert results(killed) == results(straight)
    assert "eval/pooled_mean/eer" in results(killed)
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["time/trial_s"] > earlier + resumed["time/setup_s"]  # the time before counts


@pytest.mark.parametrize("sync_every", [1, 50])
def test_non_finite_loss_fails_the_trial(
    synth_root: Path, tmp_path: Path, capsys, sync_every: int
) -> None:
    """Checked every step or every 50 (runtime.sync_every), the trial fails naming the step."""
    code = main(
        [
            "--out",
            str(tmp_path / "nan"),
            *micro(synth_root, epochs=1),
            "loss.temperature=1e-40",
            f"runtime.sync_every={sync_every}",
        ]
    )
    assert code == 1
    assert "stage 1 loss is nan at epoch 0, step 0" in capsys.readouterr().err
    assert not (tmp_path / "nan" / "metrics.json").exists()


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_processes(synth_root: Path, tmp_path: Path) -> None:
    """The same trial as DDP over 2 gloo processes; rank 0 alone writes the outputs."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "trainer",
        "--out",
        str(out),
        *micro(synth_root),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pooled (mean of sets)") == 1
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    # 2 ranks x 8 clips: the queue holds the gathered global batches (capped at its size, 24).
    assert epochs[1]["encoder/train/queue_fill"] == 24
    assert len(read_scores(out / "scores" / "itw.tsv")) == 32
    # Its checkpoint resumes on 2 ranks only: 1 process would change the epoch's batches.
    again = subprocess.run(
        _trial_cmd(out, micro(synth_root)), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert again.returncode == 2, again.stderr[-2000:]
    assert "written by 2 rank(s) and this run has 1" in again.stderr
    allowed = [*micro(synth_root), "runtime.resume_world_size=any"]
    assert subprocess.run(_trial_cmd(out, allowed), cwd=ROOT, env=env).returncode == 0
