"""The synthetic corpus: official layouts, determinism, no trivial cue, a learnable artefact."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.data.synth as synth
from trainer.data.audio import load_audio
from trainer.data.cli import main
from trainer.data.config import DatasetConfig
from trainer.data.corpora import read_corpus
from trainer.metrics import compute_eer

SETS = {
    "train": ("asvspoof2019", "LA", "train"),
    "dev": ("asvspoof2019", "LA", "dev"),
    "eval": ("asvspoof2019", "LA", "eval"),
    "la21": ("asvspoof2021-la", "ASVspoof2021", "eval"),
    "df21": ("asvspoof2021-df", "ASVspoof2021", "eval"),
    "itw": ("itw", "itw", "eval"),
}


def _load(root: Path, name: str):
    kind, sub, split = SETS[name]
    corpus = read_corpus(DatasetConfig(kind=kind, root=root / sub, split=split))
    waves = [load_audio(u.path).astype(np.float64) for u in corpus.utterances]
    return waves, np.array([u.target for u in corpus.utterances])


def _chance_distance(values, target) -> float:
    """How far a one-number scorer gets from chance: 0.5 - min(EER, 1 - EER)."""
    values = np.asarray(values)
    eer = compute_eer(values[target == 1], values[target == 0])[0]
    return 0.5 - min(eer, 1 - eer)


@pytest.mark.parametrize("name", ["train", "dev", "eval"])
def test_no_trivial_cue(synth_root: Path, name: str) -> None:
    waves, target = _load(synth_root, name)
    cues = {
        "loudness": [np.sqrt(np.mean(w**2)) for w in waves],
        "duration": [len(w) for w in waves],
        "dc offset": [w.mean() for w in waves],
        "peak": [np.abs(w).max() for w in waves],
    }
    for cue, values in cues.items():
        assert _chance_distance(values, target) < 0.2, cue


def _spectral_stats(wave: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(wave)
    log_mag = (
        torch.stft(
            x, 512, 128, window=torch.hann_window(512, dtype=x.dtype), return_complex=True
        ).abs()
        + 1e-6
    ).log()  # (F, frames)
    flux = (log_mag[:, 1:] - log_mag[:, :-1]).abs().mean(1)
    return torch.cat([log_mag.mean(1), log_mag.std(1), flux]).numpy()


@pytest.mark.slow
def test_artefact_is_learnable_and_eval_sets_are_harder(synth_root: Path) -> None:
    """A linear model on frame statistics, trained on train, separates dev; unseen attacks and
    channels make the evaluation sets harder on average, as on the real benchmark."""
    feats = {}
    for name in SETS:
        waves, target = _load(synth_root, name)
        feats[name] = (np.stack([_spectral_stats(w) for w in waves]), target)
    x_train, y_train = feats["train"]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x = torch.tensor((x_train - mean) / std)
    y = torch.tensor(y_train, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 1e-2 * w.square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    eer = {}
    for name, (feat, target) in feats.items():
        scores = (torch.tensor((feat - mean) / std) @ w).detach().numpy()
        eer[name] = compute_eer(scores[target == 1], scores[target == 0])[0]
    assert eer["dev"] < 0.35, eer
    assert np.mean([eer[n] for n in ("eval", "la21", "df21", "itw")]) > eer["dev"], eer


def test_deterministic_for_a_seed() -> None:
    size = synth.SIZES["tiny"]
    clips_a, protocols_a = synth.plan(3, size)
    clips_b, protocols_b = synth.plan(3, size)
    assert protocols_a == protocols_b and clips_a == clips_b
    assert synth.plan(4, size)[1] != protocols_a
    for index in (1, 70, 250):
        a = synth.render(clips_a[index - 1], 3, index, size)
        b = synth.render(clips_b[index - 1], 3, index, size)
        np.testing.assert_array_equal(a, b)


def test_the_local_default_scores_every_set_on_100_clips_per_class() -> None:
    """The tiny corpus (make sweep's) has >= 100 bona fide and >= 100 spoof clips in every set a
    trial scores (dev, and the eval subset of 2021), so one error moves an EER by at most 1%."""
    _, protocols = synth.plan(0, synth.SIZES["tiny"])
    counts = {}
    for rel, lines in protocols.items():
        for line in lines[1:] if rel.endswith(".csv") else lines:
            fields = line.replace(",", " ").split()
            if "trial_metadata" in rel and fields[7] != "eval":
                continue  # 2021's progress and hidden subsets are not scored
            label = "spoof" if "spoof" in fields else "bonafide"
            counts[(rel, label)] = counts.get((rel, label), 0) + 1
    scored = {rel for rel, _ in counts if "train" not in rel}
    assert len(scored) == 5, scored  # 2019 dev and eval, 2021 LA and DF, In-the-Wild
    assert all(counts[(rel, label)] >= 100 for rel in scored for label in ("bonafide", "spoof"))


@pytest.mark.slow
def test_the_artifact_knob_leaves_part_of_the_natural_wave_in_a_spoof() -> None:
    """At artifact 0.5 a spoof is half natural, half vocoded: it correlates with the natural
    utterance far more than the fully vocoded spoof (artifact 1.0, the micro corpus) does."""
    full = synth.SIZES["micro"]
    half = dataclasses.replace(full, artifact=0.5)
    clips, _ = synth.plan(0, full)
    i = next(i for i, c in enumerate(clips) if c.spoof and not c.channel)
    natural = synth.render(dataclasses.replace(clips[i], spoof=False), 0, i + 1, full)

    def corr(size: synth.Size) -> float:
        return float(np.corrcoef(natural, synth.render(clips[i], 0, i + 1, size))[0, 1])

    assert corr(half) > 0.6 and corr(half) > corr(full) + 0.3, (corr(half), corr(full))


def test_existing_output_is_reused_or_refused(synth_root: Path, tmp_path: Path) -> None:
    assert synth.generate(synth_root, seed=0, size="micro") == synth_root
    with pytest.raises(FileExistsError, match="seed=1"):
        synth.generate(synth_root, seed=1, size="micro")
    with pytest.raises(FileExistsError, match="size=tiny"):
        synth.generate(synth_root, seed=0, size="tiny")
    old = tmp_path / "old"
    shutil.copytree(synth_root, old)
    (old / synth.STAMP).write_text(json.dumps({"seed": 0, "size": "micro", "version": 1}))
    with pytest.raises(FileExistsError, match=r"older generator .*delete it"):
        synth.generate(old, seed=0, size="micro")
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        synth.generate(tmp_path, seed=0, size="tiny")
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_a_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_write = synth.sf.write

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(synth.sf, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        synth.generate(tmp_path / "corpus", seed=0, size="tiny", progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_clip_failing_in_a_worker_process_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    real_plan = synth.plan

    def plan_with_a_bad_clip(seed, size):
        clips, protocols = real_plan(seed, size)
        clips[40] = dataclasses.replace(clips[40], fmt="NO-SUCH-FORMAT")
        return clips, protocols

    monkeypatch.setattr(synth, "plan", plan_with_a_bad_clip)
    with pytest.raises(ValueError, match="NO-SUCH-FORMAT"):
        synth.generate(tmp_path / "corpus", seed=0, size="micro", progress=False, workers=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_files_do_not_depend_on_the_number_of_processes(
    synth_root: Path, tmp_path: Path
) -> None:
    """The session corpus (micro: one process) and the same corpus made by a pool of two."""
    pooled = synth.generate(tmp_path / "pooled", seed=0, size="micro", progress=False, workers=2)
    files = sorted(p.relative_to(synth_root) for p in synth_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pooled) for p in pooled.rglob("*") if p.is_file())
    assert all((synth_root / f).read_bytes() == (pooled / f).read_bytes() for f in files)


def test_cli_synth_then_check_json(synth_root: Path, capsys) -> None:
    assert main(["synth", "--out", str(synth_root), "--size", "micro"]) == 0
    assert f"--root {synth_root / 'LA'}" in capsys.readouterr().out
    assert (
        main(
            [
                "check",
                "--kind",
                "asvspoof2021-la",
                "--root",
                str(synth_root / "ASVspoof2021"),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    split = report["splits"]["eval"]
    assert report["usable"] is True
    assert split["bonafide"] > 0 and split["spoof"] > 0
    assert sum(split["attacks"].values()) == split["spoof"]
    assert (split["missing"], split["unreadable"]) == (0, 0)
    assert split["sample_rates"] == {"16000": split["bonafide"] + split["spoof"]}
