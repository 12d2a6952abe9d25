"""Embedding extraction (one process): the rows follow the input order, each row is the clip's
embedding on its own, eval mode is used, and the model's train/eval mode is restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import ModelConfig
from trainer.data.config import CropConfig, DatasetConfig
from trainer.data.corpora import read_corpus
from trainer.data.records import Utterance
from trainer.embed import embed
from trainer.model import SupConModel

CROP = CropConfig(policy="head", seconds=0.5)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clips(synth_root: Path) -> list[Utterance]:
    """Seven dev clips of both classes (batches of 3 leave a short last batch)."""
    dev = read_corpus(DatasetConfig(kind="asvspoof2019", root=synth_root / "LA", split="dev"))
    return list(dev.utterances[:7])


@pytest.fixture(scope="module")
def model() -> SupConModel:
    torch.manual_seed(0)
    return SupConModel(ModelConfig(preset="tiny"))


def test_rows_follow_the_input_and_match_each_clip_alone(clips, model) -> None:
    z = embed(model, clips, CROP, device=CPU, batch_size=3)  # (7, D)
    assert z.shape == (7, model.cfg.embedding_dim) and z.dtype == torch.float32
    alone = torch.cat([embed(model, [clip], CROP, device=CPU, batch_size=1) for clip in clips])
    torch.testing.assert_close(z, alone, atol=1e-5, rtol=0)
    reversed_z = embed(model, clips[::-1], CROP, device=CPU, batch_size=3)
    torch.testing.assert_close(reversed_z, z.flip(0), atol=1e-5, rtol=0)
    # The negative control: distinct clips give distinct rows, so a wrong order would show.
    assert torch.cdist(z, z)[~torch.eye(7, dtype=torch.bool)].min() > 1e-3


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_is_used_and_the_mode_restored(clips, model, training: bool) -> None:
    model.eval()
    reference = embed(model, clips[:4], CROP, device=CPU, batch_size=2)
    model.train(training)
    z = embed(model, clips[:4], CROP, device=CPU, batch_size=2)
    torch.testing.assert_close(z, reference, atol=0, rtol=0)  # dropout (p=0.1) off
    assert all(m.training == training for m in model.modules())
