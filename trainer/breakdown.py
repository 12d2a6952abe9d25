"""What an evaluation set's EER is over, and the breakdowns the field reports beside it.

An ASVspoof 2021 key lists every trial of three subsets (``eval``, ``progress``, ``hidden``). The
literature's figures use ``eval``; the authors of the paper this project reproduces scored every
trial (their loader never reads the subset column). One pass scores every trial, and the set's
EER (``eval/<set>/eer``) stays over its configured ``subset`` while ``eer_all`` and the
per-subset EERs come from the same scores. The conditions the 2021 keys name give the breakdowns
reported for 2021: LA per codec and transmission channel, DF per compression, source corpus and
vocoder family, as ``eer_<column>_<value>`` beside the per-attack ``eer_<attack>``.

EERs are the official ones (:func:`trainer.metrics.compute_eer`): a condition of the channel
(codec, transmission, compression, source) applies to both classes, so its EER compares the bona
fide and spoof trials under it; a vocoder is a property of spoofs, so its EER compares its
spoofs with every bona fide trial, as the per-attack EERs do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from trainer.data.config import DatasetConfig
from trainer.data.corpora import has_subsets
from trainer.data.records import Utterance
from trainer.metrics import compute_eer

# Corpus kind -> condition column -> which classes it applies to.
CONDITIONS: dict[str, dict[str, str]] = {
    "asvspoof2021-la": {"codec": "both", "transmission": "both"},
    "asvspoof2021-df": {"compression": "both", "source": "both", "vocoder": "spoof"},
}
SUBSETS = ("eval", "progress", "hidden")


def headline(cfg: DatasetConfig, utterances: Sequence[Utterance]) -> np.ndarray:
    """(N,) bool: the rows ``eval/<set>/eer`` is over, those of ``cfg.subset`` (every row of a
    set without subsets, or with ``subset: all``)."""
    if not has_subsets(cfg) or cfg.subset == "all":
        return np.ones(len(utterances), dtype=bool)
    return np.array([u.extra.get("subset") == cfg.subset for u in utterances], dtype=bool)


def _name(value: str) -> str:
    """A condition value as a metric-key part: '-' is 'none', other odd characters '_'."""
    return "none" if value in ("-", "") else re.sub(r"[^A-Za-z0-9_.-]", "_", value)


def _eer(bona: np.ndarray, spoof: np.ndarray) -> float | None:
    return compute_eer(bona, spoof)[0] if bona.size and spoof.size else None


def breakdown(
    cfg: DatasetConfig, utterances: Sequence[Utterance], scores: np.ndarray
) -> dict[str, float]:
    """``eer_all`` and ``eer_subset_<s>`` over the rows of each subset present (ASVspoof 2021
    only), and ``eer_<column>_<value>`` per condition over the headline rows; keys without
    the ``eval/<set>/`` prefix. A condition that lacks a class is left out."""
    if not has_subsets(cfg):
        return {}
    scores = np.asarray(scores, dtype=np.float64)  # (N,)
    is_bona = np.array([u.is_bonafide for u in utterances], dtype=bool)  # (N,)
    out: dict[str, float] = {}
    rows_of = {"all": np.ones(len(utterances), dtype=bool)}
    subset = np.array([u.extra.get("subset") for u in utterances])
    rows_of |= {f"subset_{s}": subset == s for s in SUBSETS}
    for name, rows in rows_of.items():
        eer = _eer(scores[rows & is_bona], scores[rows & ~is_bona])
        if eer is not None:
            out[f"eer_{name}"] = eer
    shown = headline(cfg, utterances)
    for column, applies in CONDITIONS.get(cfg.kind, {}).items():
        values = np.array([u.extra.get(column, "") for u in utterances])
        for value in sorted(set(values[shown & ~is_bona].tolist())):
            bona = shown & is_bona & ((values == value) if applies == "both" else True)
            spoof = shown & ~is_bona & (values == value)
            eer = _eer(scores[bona], scores[spoof])
            if eer is not None:
                out[f"eer_{column}_{_name(value)}"] = eer
    return out
