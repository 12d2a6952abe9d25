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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer import checkpoint
from trainer.bootstrap import bootstrap_eer_ci
from trainer.breakdown import breakdown, headline
from trainer.config import TrainerConfig, load_config, to_yaml
from trainer.data.corpora import CorpusSplit
from trainer.data.records import Utterance
from trainer.embed import embed
from trainer.memory import resolve_eval_batch
from trainer.metrics import (
    SetResult,
    class_scores,
    compute_eer,
    evaluate,
    pooled_all,
    pooled_mean,
)
from trainer.model import SupConModel
from trainer.runtime import Runtime, loader_workers
from trainer.scores import write_scores
from trainer.stage2 import freeze

MODEL_DIR = "model"
WEIGHTS = "model.pt"
CLASSIFIER = "classifier.pt"
CONFIG = "config.yaml"
MODEL_FILES = (WEIGHTS, CLASSIFIER, CONFIG)  # what loading the model needs
DECISION = "decision.json"
FOLDER_FILES = (*MODEL_FILES, DECISION)  # what a trial writes (the orchestrator adds MLflow's)


@dataclass(frozen=True)
class Decision:
    """Stage 2's operating point: a clip is bona fide when its score is above ``threshold``
    (the dev set's EER point, where the official DET walk rejects scores at or below it)."""

    threshold: float
    dev_eer: float

    def text(self) -> str:
        rule = "bona fide when score > threshold (the dev EER point)"
        return json.dumps({**self.__dict__, "rule": rule}, indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> Decision | None:
        """The folder's decision; None for a folder written before decisions were kept."""
        path = folder / DECISION
        if not path.is_file():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(float(raw["threshold"]), float(raw["dev_eer"]))


class ModelNotFoundError(FileNotFoundError):
    """A folder does not hold a trained model; the message names the folder and what is missing."""


def embed_split(
    model: nn.Module, split: CorpusSplit, cfg: TrainerConfig, rt: Runtime, desc: str
) -> torch.Tensor:
    """(N, D) embeddings of ``split`` with the config's evaluation crop, batch size and loader
    workers (``auto`` resolved for this device, see :mod:`trainer.memory`)."""
    return embed_utterances(model, split.utterances, cfg, rt, desc)


def embed_utterances(
    model: nn.Module, utterances: Sequence[Utterance], cfg: TrainerConfig, rt: Runtime, desc: str
) -> torch.Tensor:
    """:func:`embed_split` of any clips (a model scoring audio outside a corpus)."""
    return embed(
        model,
        utterances,
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
        mask=cfg.data.attention_mask,
    )


@dataclass(frozen=True, eq=False)
class FinalModel:
    """The frozen encoder + head and the linear classifier on top (on CPU); a higher score is
    more bona fide."""

    cfg: TrainerConfig
    model: SupConModel
    classifier: nn.Linear
    decision: Decision | None = None

    def save(self, folder: Path) -> Path:
        """Write the model folder atomically (see :func:`trainer.checkpoint.write_folder`): the
        weights, the config and the decision threshold."""
        files = {
            WEIGHTS: self.model.state_dict(),
            CLASSIFIER: self.classifier.state_dict(),
            CONFIG: to_yaml(self.cfg),
        }
        if self.decision is not None:
            files[DECISION] = self.decision.text()
        return checkpoint.write_folder(folder, files)

    def scores(self, z: torch.Tensor) -> np.ndarray:
        """(N,) classifier logits of embeddings ``z`` (N, D)."""
        with torch.no_grad():
            return self.classifier(z).squeeze(1).numpy()

    def score_set(self, name: str, split: CorpusSplit, rt: Runtime) -> SetScores:
        """Score every row of ``split`` (read with ``scoring=True``: every subset of an
        ASVspoof 2021 key) in one pass; see :class:`SetScores` for what the EERs are over."""
        z = embed_split(self.model, split, self.cfg, rt, f"eval {name}")  # (N, D)
        return SetScores.of(name, split, self.scores(z))


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
    """One evaluation set scored: its scores (N,) for every row read, in protocol order, the EER
    over the headline rows (the configured ``subset`` of an ASVspoof 2021 key, every row of
    another set) with its bootstrap interval, and the breakdowns (:mod:`trainer.breakdown`)."""

    name: str
    split: CorpusSplit
    scores: np.ndarray
    result: SetResult
    interval: EerInterval
    shown: np.ndarray  # (N,) bool: the headline rows
    breakdown: dict[str, float]  # eer_all, eer_subset_*, eer_<condition>_* (no prefix)

    @classmethod
    def of(cls, name: str, split: CorpusSplit, scores: np.ndarray) -> SetScores:
        """Every figure of the set, computed once (a 2021 DF key has ~611k trials)."""
        shown = headline(split.config, split.utterances)  # (N,)
        utterances = [u for u, keep in zip(split.utterances, shown, strict=True) if keep]
        result = evaluate(utterances, scores[shown], name)
        interval = eer_interval(utterances, scores[shown])
        extra = breakdown(split.config, split.utterances, scores)
        return cls(name, split, scores, result, interval, shown, extra)

    def metrics(self) -> dict[str, float]:
        """``eval/<set>/eer``, the per-attack ``eval/<set>/eer_<attack>``, and the set's counts:
        ``eval/<set>/n_bonafide`` and ``n_spoof`` trials scored, ``n_skipped`` trials dropped
        because their audio is missing (``on_missing: skip``), so an EER on a partial set shows;
        the EER's 95% interval ``eer_ci_low`` / ``eer_ci_high`` and ``eer_ci_speakers``, the
        speakers its cluster bootstrap resampled (0: trials). ASVspoof 2021 sets add
        ``eer_all``, ``eer_subset_<s>`` and ``eer_<condition>_<value>``
        (:func:`trainer.breakdown.breakdown`). The counts and intervals are those of the
        headline rows."""
        prefix = f"eval/{self.name}"
        return (
            self.result.metrics(prefix)
            | {f"{prefix}/{key}": value for key, value in self.breakdown.items()}
            | {
                f"{prefix}/n_bonafide": float(self.result.n_bonafide),
                f"{prefix}/n_spoof": float(self.result.n_spoof),
                f"{prefix}/n_skipped": float(len(self.split.skipped)),
                f"{prefix}/eer_ci_low": self.interval.low,
                f"{prefix}/eer_ci_high": self.interval.high,
                f"{prefix}/eer_ci_speakers": float(self.interval.speakers),
            }
        )

    def write(self, folder: Path) -> Path:
        """The score file ``folder/<set>.tsv`` of every row scored (see
        :func:`trainer.scores.write_scores`; an ASVspoof 2021 row's key holds its subset)."""
        folder.mkdir(parents=True, exist_ok=True)
        return write_scores(folder / f"{self.name}.tsv", self.split.utterances, self.scores)

    def by_class(self, rows: str = "headline") -> tuple[np.ndarray, np.ndarray]:
        """(bona fide, spoof) scores of the headline rows, or of every row (``rows="all"``)."""
        if rows == "all":
            return class_scores(self.split.utterances, self.scores)
        kept = [u for u, keep in zip(self.split.utterances, self.shown, strict=True) if keep]
        return class_scores(kept, self.scores[self.shown])


def pooled_metrics(sets: Sequence[SetScores]) -> dict[str, float]:
    """The pooled figures over ``sets``, {} for none: ``eval/pooled_mean/eer`` (the mean of the
    sets' EERs, the paper's "pooled" column) and ``eval/pooled_all/eer`` (one threshold over all
    scores), with ASVspoof 2021 on its configured subset (``eval``: the literature's); and the
    same two as ``.../eer_all`` with ASVspoof 2021 over every trial of its key (the authors')."""
    if not sets:
        return {}
    every = [s.by_class("all") for s in sets]
    return {
        "eval/pooled_mean/eer": pooled_mean([s.result for s in sets]),
        "eval/pooled_all/eer": pooled_all([s.by_class() for s in sets]),
        "eval/pooled_mean/eer_all": float(np.mean([compute_eer(*b)[0] for b in every])),
        "eval/pooled_all/eer_all": pooled_all(every),
    }
