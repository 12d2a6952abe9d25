"""A trial's final model, and scoring it on the evaluation sets.

The final model folder (``OUT/model/``) holds what a later evaluation needs and nothing more:
the stage-1 best weights of encoder + head (``model.pt``), the stage-2 classifier
(``classifier.pt``) and the resolved trainer config (``config.yaml``). Optimiser state lives
only in the resume checkpoint.

Scoring embeds a set sharded over the ranks (every rank gets every score, see
:func:`trainer.embed.embed`), so one process and N processes run the same code. Each set's
metrics come from :func:`trainer.metrics.evaluate`; the pooled figures from every set scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer import checkpoint
from trainer.config import TrainerConfig, load_config, to_yaml
from trainer.data.corpora import CorpusSplit
from trainer.data.records import Utterance
from trainer.embed import embed
from trainer.memory import resolve_eval_batch
from trainer.metrics import (
    SetResult,
    bootstrap_eer_ci,
    class_scores,
    evaluate,
    pooled_all,
    pooled_mean,
    write_scores,
)
from trainer.model import SupConModel
from trainer.runtime import Runtime, loader_workers
from trainer.stage2 import freeze

MODEL_DIR = "model"
WEIGHTS = "model.pt"
CLASSIFIER = "classifier.pt"
CONFIG = "config.yaml"
MODEL_FILES = (WEIGHTS, CLASSIFIER, CONFIG)


class ModelNotFoundError(FileNotFoundError):
    """A folder does not hold a trained model; the message names the folder and what is missing."""


def embed_split(
    model: nn.Module, split: CorpusSplit, cfg: TrainerConfig, rt: Runtime, desc: str
) -> torch.Tensor:
    """(N, D) embeddings of ``split`` with the config's evaluation crop, batch size and loader
    workers (``auto`` resolved for this device, see :mod:`trainer.memory`)."""
    return embed(
        model,
        split.utterances,
        cfg.data.eval_crop,
        device=rt.device,
        precision=rt.autocast(),
        batch_size=resolve_eval_batch(cfg, model, rt),
        num_workers=loader_workers(cfg.data.num_workers, cfg.runtime, rt.device),
        seed=cfg.seed,
        desc=desc,
        progress=rt.show_progress,
        static_batches=cfg.runtime.compile,
        pad_multiple=cfg.data.pad_multiple,
    )


@dataclass(frozen=True, eq=False)
class FinalModel:
    """The frozen encoder + head and the linear classifier on top (on CPU); a higher score is
    more bona fide."""

    cfg: TrainerConfig
    model: SupConModel
    classifier: nn.Linear

    def save(self, folder: Path) -> Path:
        """Write the model folder atomically (see :func:`trainer.checkpoint.write_folder`)."""
        files = {
            WEIGHTS: self.model.state_dict(),
            CLASSIFIER: self.classifier.state_dict(),
            CONFIG: to_yaml(self.cfg),
        }
        return checkpoint.write_folder(folder, files)

    def scores(self, z: torch.Tensor) -> np.ndarray:
        """(N,) classifier logits of embeddings ``z`` (N, D)."""
        with torch.no_grad():
            return self.classifier(z).squeeze(1).numpy()

    def score_set(self, name: str, split: CorpusSplit, rt: Runtime) -> SetScores:
        z = embed_split(self.model, split, self.cfg, rt, f"eval {name}")  # (N, D)
        scores = self.scores(z)
        result = evaluate(split.utterances, scores, name)
        return SetScores(name, split, scores, result, eer_interval(split.utterances, scores))


def load_model(folder: Path, device: torch.device) -> FinalModel:
    """The model a trial saved in ``folder``, frozen, its encoder on ``device``.

    A pretrained encoder is built from ``model.pretrained`` as in training (the weights then
    replaced by the saved ones), so the node needs that source as training did.
    """
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"{folder}: no trained model (missing {', '.join(missing)})")
    cfg = load_config(folder / CONFIG, stored=True)
    model = SupConModel(cfg.model)
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    freeze(model)
    classifier = nn.Linear(cfg.model.embedding_dim, 1)
    classifier.load_state_dict(
        torch.load(folder / CLASSIFIER, map_location="cpu", weights_only=True)
    )
    classifier.requires_grad_(False)
    return FinalModel(cfg, model.to(device), classifier)


@dataclass(frozen=True)
class EerInterval:
    """The 95% bootstrap interval of a set's EER; ``speakers``: how many speakers a cluster
    bootstrap resampled (0: trials were resampled per class, the set has no speakers)."""

    low: float
    high: float
    speakers: int


def speaker_groups(utterances: Sequence[Utterance]) -> np.ndarray | None:
    """(N,) speaker of each utterance, or None when some utterance has none or there is one."""
    speakers = [u.speaker for u in utterances]
    if any(s is None for s in speakers) or len(set(speakers)) < 2:
        return None
    return np.array(speakers)


def eer_interval(utterances: Sequence[Utterance], scores: np.ndarray) -> EerInterval:
    """The EER's 95% percentile bootstrap interval (1000 resamples, seed 0): speakers resampled
    where the corpus has them (scores are correlated within a speaker: In-the-Wild has 58 for
    32k trials), else trials per class; also trials when too few speakers hold each class."""
    bona, spoof = class_scores(utterances, scores)
    groups = speaker_groups(utterances)
    if groups is not None:
        is_bona = np.array([u.is_bonafide for u in utterances])  # (N,)
        try:
            low, high = bootstrap_eer_ci(
                bona, spoof, bonafide_groups=groups[is_bona], spoof_groups=groups[~is_bona]
            )
            return EerInterval(low, high, len(set(groups.tolist())))
        except ValueError:
            pass  # too few speakers of each class for a cluster bootstrap
    return EerInterval(*bootstrap_eer_ci(bona, spoof), 0)


@dataclass(frozen=True, eq=False)
class SetScores:
    """One evaluation set scored: its scores (N,) in protocol order, its EERs and the EER's
    bootstrap interval."""

    name: str
    split: CorpusSplit
    scores: np.ndarray
    result: SetResult
    interval: EerInterval

    def metrics(self) -> dict[str, float]:
        """``eval/<set>/eer``, the per-attack ``eval/<set>/eer_<attack>``, and the set's counts:
        ``eval/<set>/n_bonafide`` and ``n_spoof`` trials scored, ``n_skipped`` trials dropped
        because their audio is missing (``on_missing: skip``), so an EER on a partial set shows;
        the EER's 95% interval ``eer_ci_low`` / ``eer_ci_high`` and ``eer_ci_speakers``, the
        speakers its cluster bootstrap resampled (0: trials)."""
        prefix = f"eval/{self.name}"
        return self.result.metrics(prefix) | {
            f"{prefix}/n_bonafide": float(self.result.n_bonafide),
            f"{prefix}/n_spoof": float(self.result.n_spoof),
            f"{prefix}/n_skipped": float(len(self.split.skipped)),
            f"{prefix}/eer_ci_low": self.interval.low,
            f"{prefix}/eer_ci_high": self.interval.high,
            f"{prefix}/eer_ci_speakers": float(self.interval.speakers),
        }

    def write(self, folder: Path) -> Path:
        """The score file ``folder/<set>.tsv`` (see :func:`trainer.metrics.write_scores`)."""
        folder.mkdir(parents=True, exist_ok=True)
        return write_scores(folder / f"{self.name}.tsv", self.split.utterances, self.scores)

    def by_class(self) -> tuple[np.ndarray, np.ndarray]:
        return class_scores(self.split.utterances, self.scores)


def pooled_metrics(sets: Sequence[SetScores]) -> dict[str, float]:
    """``eval/pooled_mean/eer`` (mean of the sets' EERs, the paper's figure) and
    ``eval/pooled_all/eer`` (one threshold over all scores) over ``sets``; {} for none."""
    if not sets:
        return {}
    return {
        "eval/pooled_mean/eer": pooled_mean([s.result for s in sets]),
        "eval/pooled_all/eer": pooled_all([s.by_class() for s in sets]),
    }
