"""A trial's corpora as MLflow dataset inputs, so the UI says which corpus version each number
came from: one input per split (context ``training``, ``validation`` or ``evaluation``) named
``<role>:<kind>/<split>``, its digest the protocol or key file's SHA-256 (first 16 hex digits),
its profile the counts by label and attack, the subset, and the layout's root.

Only the protocol files are read (never the audio): the 2021 DF key (611k rows) takes about a
second. :func:`digest_mismatches` is what ``best`` warns with when the trials it ranks read
different versions of a corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from trainer.config import TrainerConfig
from trainer.data.config import DatasetConfig

_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """The first 16 hex digits of ``path``'s SHA-256."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def _roles(cfg: TrainerConfig) -> Iterable[tuple[str, str, DatasetConfig, bool]]:
    yield "training", "train", cfg.data.train, False
    yield "validation", "dev", cfg.data.dev, False
    for name, ds in cfg.data.eval.items():
        yield "evaluation", name, ds, True


def corpus_inputs(cfg: TrainerConfig) -> list[DatasetInput]:
    """The dataset inputs of ``cfg``'s corpora (reads their protocol files)."""
    from trainer.data.corpora import has_subsets, parse_protocol, scored_rows

    inputs = []
    for context, role, ds, scored in _roles(cfg):
        protocol, records = parse_protocol(scored_rows(ds) if scored else ds)
        profile: dict[str, Any] = {
            "rows": len(records),
            "labels": dict(sorted(Counter(r.label for r in records).items())),
            "attacks": dict(sorted(Counter(r.attack or "-" for r in records).items())),
            "kind": ds.kind,
            "split": ds.split,
            "root": str(ds.root),
            "protocol": protocol.name,
        }
        if has_subsets(ds):
            profile["subset"] = ds.subset
        dataset = Dataset(
            name=f"{role}:{ds.kind}/{ds.split}",
            digest=file_digest(protocol),
            source_type="local",
            source=json.dumps({"uri": str(protocol)}),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


def digest_mismatches(runs: Iterable[Any]) -> dict[str, set[str]]:
    """Dataset name -> the digests seen, for the names whose digest differs across ``runs``
    (MLflow runs with their ``inputs``)."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        inputs = getattr(run, "inputs", None)
        for item in getattr(inputs, "dataset_inputs", None) or []:
            seen.setdefault(item.dataset.name, set()).add(item.dataset.digest)
    return {name: digests for name, digests in seen.items() if len(digests) > 1}
