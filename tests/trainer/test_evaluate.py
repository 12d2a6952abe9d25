"""Scoring evaluation sets with a final model: each set's metrics carry how many trials of each
class were scored and how many were skipped for missing audio; the pooled figures stay EERs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.config import load_config
from trainer.data.config import DatasetConfig
from trainer.data.corpora import read_corpus
from trainer.evaluate import FinalModel, SetScores, pooled_metrics
from trainer.model import SupConModel
from trainer.runtime import setup

PROTOCOL = "ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.eval.trl.txt"
FLAC = "ASVspoof2019_LA_eval/flac"


@pytest.fixture(scope="module")
def final() -> FinalModel:
    """A random tiny model and classifier: the counts do not depend on what it learned."""
    cfg = load_config(None, ["data.eval_crop.seconds=0.5", "runtime.progress=false"])
    torch.manual_seed(0)
    model = SupConModel(cfg.model).eval()
    classifier = nn.Linear(cfg.model.embedding_dim, 1).requires_grad_(False)
    return FinalModel(cfg, model, classifier)


def _score(final: FinalModel, name: str, cfg: DatasetConfig) -> SetScores:
    rt = setup(final.cfg.runtime, final.cfg.seed)
    return final.score_set(name, read_corpus(cfg), rt)


def _copy_without(synth_root: Path, root: Path, n_bonafide: int, n_spoof: int) -> None:
    """The synthetic ASVspoof 2019 LA eval split under ``root``, minus the audio of the first
    ``n_bonafide`` bona fide and the first ``n_spoof`` spoof trials of its protocol."""
    shutil.copytree(synth_root / "LA" / FLAC, root / FLAC)
    (root / PROTOCOL).parent.mkdir(parents=True)
    shutil.copy(synth_root / "LA" / PROTOCOL, root / PROTOCOL)
    rows = [line.split() for line in (root / PROTOCOL).read_text().splitlines()]
    bonafide = [r[1] for r in rows if r[4] == "bonafide"][:n_bonafide]
    spoof = [r[1] for r in rows if r[4] == "spoof"][:n_spoof]
    for utt_id in bonafide + spoof:
        (root / FLAC / f"{utt_id}.flac").unlink()


def test_set_metrics_count_scored_and_skipped_trials(
    final: FinalModel, synth_root: Path, tmp_path: Path
) -> None:
    full_cfg = DatasetConfig(kind="asvspoof2019", root=synth_root / "LA", split="eval")
    full = _score(final, "asv19", full_cfg)
    _copy_without(synth_root, tmp_path / "LA", n_bonafide=2, n_spoof=3)
    partial_cfg = full_cfg.model_copy(update={"root": tmp_path / "LA", "on_missing": "skip"})
    partial = _score(final, "partial", partial_cfg)

    # The tiny corpus's eval split: 16 bona fide and 52 spoof trials.
    assert full.metrics()["eval/asv19/n_bonafide"] == 16
    assert full.metrics()["eval/asv19/n_spoof"] == 52
    assert full.metrics()["eval/asv19/n_skipped"] == 0
    metrics = partial.metrics()
    assert metrics["eval/partial/n_bonafide"] == 14
    assert metrics["eval/partial/n_spoof"] == 49
    assert metrics["eval/partial/n_skipped"] == 5
    assert len(partial.scores) == 63
    assert 0.0 <= metrics["eval/partial/eer"] <= 1.0
    assert "eval/partial/eer_A07" in metrics

    # The counts do not leak into the pooled figures, which stay EERs.
    pooled = pooled_metrics([full, partial])
    assert set(pooled) == {"eval/pooled_mean/eer", "eval/pooled_all/eer"}
    assert pooled["eval/pooled_mean/eer"] == pytest.approx(
        (full.result.eer + partial.result.eer) / 2
    )


def test_each_set_gets_an_eer_interval_over_its_speakers(final: FinalModel, synth_root: Path):
    """The tiny eval split has 4 speakers, each with both classes: the interval resamples them
    (a cluster bootstrap) and holds the set's EER."""
    scored = _score(
        final, "asv19", DatasetConfig(kind="asvspoof2019", root=synth_root / "LA", split="eval")
    )
    metrics = scored.metrics()
    assert metrics["eval/asv19/eer_ci_speakers"] == 4
    low, high = metrics["eval/asv19/eer_ci_low"], metrics["eval/asv19/eer_ci_high"]
    assert 0.0 <= low <= metrics["eval/asv19/eer"] <= high <= 1.0
    assert high - low > 0.0
