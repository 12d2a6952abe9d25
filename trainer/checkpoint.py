"""Checkpoints: one self-contained folder per save, written atomically.

A checkpoint holds the model (current and best-so-far weights), the optimiser and LR schedule, the
queue contents and pointer, the stage-1 progress (epoch, step, early-stopping state), every RNG
state (torch, CUDA, numpy, python) and the resolved config, so a killed run resumes where it
stopped and reproduces the uninterrupted run's numbers.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "state.pt"
MODEL = "model.pt"
BEST = "best_model.pt"


def rng_state() -> dict[str, Any]:
    """This process's torch, numpy, python (and CUDA, when present) RNG states."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned: the next draws repeat the ones made after it."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, *, state: dict[str, Any], model: dict, best_model: dict) -> Path:
    """Write the checkpoint to a fresh sibling folder, then swap it in for ``folder``.

    ``state`` holds the resolved config under ``"config"`` (see :func:`saved_config`). Atomic as
    :func:`write_folder` says.
    """
    return write_folder(folder, {STATE: state, MODEL: model, BEST: best_model})


def write_folder(folder: Path, files: dict[str, Any]) -> Path:
    """Write ``files`` (name -> a ``str``, written as UTF-8 text, or anything ``torch.save``
    takes) into a fresh sibling of ``folder``, then swap it in for ``folder``.

    A write that raises part-way (an unpicklable object, a full disk) leaves the previous
    ``folder`` as it was and removes its staging folder; so does a kill while the files are
    written (the hidden staging folder then stays). Only a kill between the two renames leaves no
    ``folder`` (the previous one is then ``.{name}.old``, removed by the next write).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, content in files.items():
            if isinstance(content, str):
                (staging / name).write_text(content, encoding="utf-8")
            else:
                torch.save(content, staging / name)
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)  # left by a run killed mid-swap; blocks the rename
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def exists(folder: Path | None) -> bool:
    """Whether ``folder`` holds a checkpoint (its state file is written)."""
    return folder is not None and (folder / STATE).is_file()


def load(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"state": ..., "model": ..., "best_model": ...}`` from a checkpoint folder."""
    return {
        "state": torch.load(folder / STATE, map_location=map_location, weights_only=False),
        "model": torch.load(folder / MODEL, map_location=map_location, weights_only=True),
        "best_model": torch.load(folder / BEST, map_location=map_location, weights_only=True),
    }


def saved_config(folder: Path) -> dict[str, Any]:
    """The resolved config (``TrainerConfig.model_dump(mode="json")``) a checkpoint was written
    with, without loading its weights."""
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    return state["config"]
