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
from trainer.metrics import compute_eer
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
    assert set(pooled) == {
        "eval/pooled_mean/eer",
        "eval/pooled_all/eer",
        "eval/pooled_mean/eer_all",
        "eval/pooled_all/eer_all",
    }
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


def _key_rows(root: Path, track: str) -> list[list[str]]:
    """The synthetic ASVspoof 2021 key, read here with a plain split (not the project's reader)."""
    key = root / "ASVspoof2021" / "keys" / track / "CM" / "trial_metadata.txt"
    return [line.split() for line in key.read_text().splitlines() if line.strip()]


def _eer_of(rows: list[list[str]], scores: dict[str, float]) -> float:
    bona = [scores[r[1]] for r in rows if r[5] == "bonafide"]
    spoof = [scores[r[1]] for r in rows if r[5] == "spoof"]
    return compute_eer(bona, spoof)[0]


@pytest.mark.parametrize(
    ("kind", "track", "both", "spoof_only"),
    [
        ("asvspoof2021-la", "LA", {"codec": 2, "transmission": 3}, {}),
        ("asvspoof2021-df", "DF", {"compression": 2, "source": 3}, {"vocoder": 8}),
    ],
)
def test_2021_sets_are_scored_once_both_ways_with_their_conditions(
    final: FinalModel, synth_root: Path, kind: str, track: str, both: dict, spoof_only: dict
) -> None:
    """One pass over every trial of the key: ``eer`` over the ``eval`` subset (the literature),
    ``eer_all`` over every trial (the authors'), each subset's, and per condition column, each
    equal to the EER recomputed here from the key's columns."""
    name = track.lower()
    cfg = DatasetConfig(kind=kind, root=synth_root / "ASVspoof2021")
    rt = setup(final.cfg.runtime, final.cfg.seed)
    scored = final.score_set(name, read_corpus(cfg, scoring=True), rt)
    rows = _key_rows(synth_root, track)
    scores = dict(zip((u.utt_id for u in scored.split.utterances), scored.scores, strict=True))
    assert set(scores) == {r[1] for r in rows}  # every subset scored, once
    metrics = scored.metrics()
    subset_rows = {s: [r for r in rows if r[7] == s] for s in ("eval", "progress", "hidden")}
    prefix = f"eval/{name}"
    assert metrics[f"{prefix}/eer"] == _eer_of(subset_rows["eval"], scores)
    assert metrics[f"{prefix}/eer_all"] == _eer_of(rows, scores)
    for subset, kept in subset_rows.items():
        assert metrics[f"{prefix}/eer_subset_{subset}"] == _eer_of(kept, scores)
    assert metrics[f"{prefix}/n_bonafide"] + metrics[f"{prefix}/n_spoof"] == len(
        subset_rows["eval"]
    )
    eval_rows = subset_rows["eval"]
    checked = 0
    for column, index in {**both, **spoof_only}.items():
        for value in {r[index] for r in eval_rows if r[5] == "spoof"}:
            spoofs = [r for r in eval_rows if r[5] == "spoof" and r[index] == value]
            bona = [r for r in eval_rows if r[5] == "bonafide"]
            if column in both:
                bona = [r for r in bona if r[index] == value]
            key = f"{prefix}/eer_{column}_{value}"
            if not bona:
                assert key not in metrics
                continue
            assert metrics[key] == _eer_of(bona + spoofs, scores), key
            checked += 1
    assert checked >= 5


def test_the_pooled_figures_come_both_ways(final: FinalModel, synth_root: Path) -> None:
    rt = setup(final.cfg.runtime, final.cfg.seed)
    sets = [
        final.score_set(name, read_corpus(DatasetConfig(kind=kind, root=root), scoring=True), rt)
        for name, kind, root in [
            ("la", "asvspoof2021-la", synth_root / "ASVspoof2021"),
            ("itw", "itw", synth_root / "itw"),
        ]
    ]
    la, itw = (s.metrics() for s in sets)
    pooled = pooled_metrics(sets)
    assert pooled["eval/pooled_mean/eer"] == pytest.approx(
        (la["eval/la/eer"] + itw["eval/itw/eer"]) / 2
    )
    assert pooled["eval/pooled_mean/eer_all"] == pytest.approx(
        (la["eval/la/eer_all"] + itw["eval/itw/eer"]) / 2
    )
    assert "eval/itw/eer_all" not in itw  # a set without subsets is one figure
