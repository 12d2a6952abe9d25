"""A trial's final model as a detector: give it audio, get scores and decisions.

:class:`Detector` loads a model folder (``model.pt``, ``classifier.pt``, ``config.yaml``,
``decision.json``) and scores clips given as file paths or 16 kHz mono float arrays (a list, a
pandas Series, or a DataFrame with a ``path`` or ``audio`` column): one row per clip, ``score``
(the classifier's logit, higher = bona fide) and ``bonafide`` (``score`` above the dev-EER
threshold). Clips are scored exactly as the trial scored its evaluation sets (same crop,
batching, precision where the device allows), so a folder reproduces the trial's own score
files. The orchestrator makes the folder an MLflow model around this class
(``orchestrator/tracking/pyfunc.py``); the trainer itself never imports MLflow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import load_config
from trainer.data.records import Utterance
from trainer.evaluate import CONFIG, Decision, embed_utterances, load_model

WEIGHTS_AT = "weights_at.txt"  # a pointer model's: the model folder that holds the weights
SAMPLE_RATE = 16_000


def _inputs(model_input: Any) -> list[str | np.ndarray]:
    """Clips from what ``predict`` accepts, in order."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        for column in ("path", "audio"):
            if column in model_input.columns:
                return list(model_input[column])
        if model_input.shape[1] == 1:
            return list(model_input.iloc[:, 0])
        columns = list(model_input.columns)
        raise ValueError(f"a DataFrame to score needs a 'path' or 'audio' column, got {columns}")
    if isinstance(model_input, (str, Path)) or (
        isinstance(model_input, np.ndarray) and model_input.ndim == 1
    ):
        return [model_input]
    return list(model_input)


class Detector:
    """The detector of one model folder; the weights are read by :meth:`load` (or at the
    first clip scored)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.final = None
        self.decision: Decision | None = None
        self.rt = None

    def load(self, *, progress: bool = False) -> Detector:
        """Read the weights onto the GPU when there is one (else the CPUs, in fp32)."""
        from trainer.runtime import setup

        overrides = [f"runtime.progress={str(progress).lower()}", "runtime.device=auto"]
        if not torch.cuda.is_available():
            overrides.append("runtime.precision=fp32")
        weights = self.weights_folder()
        cfg = load_config(weights / CONFIG, overrides, stored=True)
        self.rt = setup(cfg.runtime, cfg.seed)
        self.final = load_model(weights, self.rt.device)
        self.decision = Decision.read(self.folder)
        return self

    def weights_folder(self) -> Path:
        """This folder, or for a pointer model (:func:`write_pointer`) the folder it names."""
        pointer = self.folder / WEIGHTS_AT
        if not pointer.is_file():
            return self.folder
        where = Path(pointer.read_text(encoding="utf-8").strip())
        if not where.is_dir():
            raise FileNotFoundError(
                f"this model's weights are in {where}, which this machine cannot read (the "
                "sweep's storage): load it where that folder is mounted"
            )
        return where

    def score_utterances(
        self, utterances: Sequence[Utterance], *, progress: bool = False
    ) -> np.ndarray:
        """(N,) scores of ``utterances`` in order, as a trial scores an evaluation set."""
        from dataclasses import replace

        if not utterances:
            return np.zeros(0, dtype=np.float32)
        if self.final is None:
            self.load()
        rt = replace(self.rt, show_progress=progress)
        z = embed_utterances(self.final.model, utterances, self.final.cfg, rt, "score")  # (N, D)
        return self.final.scores(z)

    def frame(self, model_input: Any):
        """One row per clip: ``score`` (higher = bona fide) and ``bonafide`` (the decision)."""
        import pandas as pd
        import soundfile as sf

        clips = _inputs(model_input)
        with tempfile.TemporaryDirectory() as tmp:
            utterances = []
            for i, clip in enumerate(clips):
                if isinstance(clip, (str, Path)):
                    path = Path(clip)
                else:  # a 16 kHz waveform: through a lossless float file, as the trial read
                    wave = np.asarray(clip, dtype=np.float32)
                    if wave.ndim != 1:
                        raise ValueError(f"clip {i}: a waveform must be 1-D, got {wave.shape}")
                    path = Path(tmp) / f"clip{i}.wav"
                    sf.write(path, wave, SAMPLE_RATE, subtype="FLOAT")
                utterances.append(Utterance(f"clip{i}", path, "bonafide"))
            scores = self.score_utterances(utterances)
        frame = pd.DataFrame({"score": scores.astype(np.float64)})
        if self.decision is not None:
            frame["bonafide"] = frame["score"] > self.decision.threshold
        return frame
