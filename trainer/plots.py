"""DET curves on probit axes and training curves, as PNG files (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import norm

from trainer.metrics import det_curve

_TICKS = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95]


def det_plot(sets: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """One DET curve per set (bona fide scores, spoof scores); FAR and FRR on a probit scale."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    clip = (1e-4, 1 - 1e-4)
    for name, (bona, spoof) in sets.items():
        curve = det_curve(bona, spoof)
        ax.plot(
            norm.ppf(np.clip(curve.far, *clip)), norm.ppf(np.clip(curve.frr, *clip)), label=name
        )
    ticks = norm.ppf(_TICKS)
    labels = [f"{100 * t:g}" for t in _TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.plot(ticks[[0, -1]], ticks[[0, -1]], color="grey", lw=0.5, ls="--")
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("false rejection rate (%)")
    ax.set_title("DET curves (EER on the diagonal)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_plot(history: Sequence[Mapping[str, float]], keys: Sequence[str], path: Path) -> Path:
    """Per-epoch metrics, one panel per key."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        ax.plot([h[key] for h in history if key in h], marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
