"""What makes runs one configuration: the method and what it is measured on, run on a world
size, whatever the seed, the machine or the runtime knobs. ``confirm`` groups a
configuration's seeds by :func:`config_id`, and ``best --by-config`` ranks them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainer.config import TrainerConfig, flatten

# Keys that change how a run runs, not what it trains and measures: runs that differ only in
# them are one configuration (the world size counts, through config_id's own argument).
RUNTIME_ONLY = frozenset(
    {
        "model.gradient_checkpointing",
        "model.attention",
        "data.eval_batch_size",
        "data.num_workers",
        "runtime.device",
        "runtime.threads",
        "runtime.progress",
        "runtime.resume_world_size",
        "runtime.world_size",
        "runtime.compile",
        "runtime.adamw",
        "runtime.sync_every",
        "runtime.gpu_memory_fraction",
        "runtime.system_metrics",
    }
)


def method_keys(cfg: TrainerConfig) -> dict[str, Any]:
    """The flattened config without its seed, the :data:`RUNTIME_ONLY` keys and the corpus
    roots (where the same corpus lives differs between machines): the method and what it is
    measured on."""
    return {
        k: v
        for k, v in flatten(cfg).items()
        if k != "seed"
        and k not in RUNTIME_ONLY
        and not (k.startswith("data.") and k.endswith(".root"))
    }


def config_id(cfg: TrainerConfig, world_size: int) -> str:
    """A stable 12-hex-digit id of ``cfg``'s method (:func:`method_keys`) run on
    ``world_size`` ranks (the global batch and the epoch's length depend on it): runs of one
    configuration under different seeds, threads or machines share it. A SHA-256 of the keys
    as sorted JSON, so it depends neither on the Python version, the host nor the order the
    keys were set in."""
    leaves = {**method_keys(cfg), "world_size": int(world_size)}
    text = json.dumps(leaves, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
