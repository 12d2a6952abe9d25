"""Shared training prefixes: which config keys act late, and until when two configs are one run.

Stage 1 reads the queue's keys only once the queue is on: before ``queue.start_epoch`` nothing is
enqueued or read (:meth:`trainer.stage1.Stage1._queue_on`), the buffer is zeros, and no random
number is drawn for it. So two configurations that agree on every key except :data:`LATE_KEYS`
(same seed, data, model, loss, schedule, runtime) and run on the same number of ranks train the
same weights, optimiser state, RNG states and per-epoch metrics until the earlier of their
:func:`divergence_epoch`. A trial can then start from the other's checkpoint at that epoch
(:func:`check_fork`) and end bit-identical, on CPU, to a run from scratch.

``queue.start_step`` can only delay the queue past ``start_epoch`` (both must be reached), so
``start_epoch`` is a safe divergence epoch whatever ``start_step`` says; a ``start_step`` space
shares less than it could, never wrongly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from trainer.config import ConfigError, TrainerConfig, flatten

# Every key that acts only once the queue is on. Anything else changes the run from step 0.
LATE_KEYS = frozenset({"queue.size", "queue.start_epoch", "queue.start_step", "queue.same_label"})
# Keys that never change a number (a progress bar, a sampler of system metrics, how often the
# host checks the loss, what a resume accepts): not part of a prefix either.
NEUTRAL_KEYS = frozenset(
    {
        "runtime.progress",
        "runtime.system_metrics",
        "runtime.sync_every",
        "runtime.resume_world_size",
        "runtime.world_size",
    }
)


def divergence_epoch(cfg: TrainerConfig) -> int:
    """The first 0-based epoch in which a late key can change anything: ``queue.start_epoch``,
    or ``stage1.epochs`` when the queue is off (``queue.size: 0``) or starts after the last
    epoch. The run's state after epochs ``0 .. divergence - 1`` is its prefix's."""
    if cfg.queue.size == 0:
        return cfg.stage1.epochs
    return min(cfg.queue.start_epoch, cfg.stage1.epochs)


def prefix_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flattened config without its late and neutral keys: what its prefix is made of."""
    return {k: v for k, v in flat.items() if k not in LATE_KEYS and k not in NEUTRAL_KEYS}


def prefix_id(cfg: TrainerConfig, world_size: int) -> str:
    """A 12-hex-digit id of the prefix ``cfg`` trains on ``world_size`` ranks: every key but
    :data:`LATE_KEYS` and :data:`NEUTRAL_KEYS` (the seed, corpus roots and runtime keys
    included: a thread count or a precision can change the numbers) and the world size (the
    epoch's batches depend on it)."""
    leaves = {**prefix_keys(flatten(cfg)), "world_size": int(world_size)}
    text = json.dumps(leaves, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def point_key(overrides: Mapping[str, Any]) -> str:
    """A search point's identity (its dotted overrides as sorted JSON)."""
    return json.dumps(dict(overrides), sort_keys=True, default=str)


def check_fork(saved: Mapping[str, Any], cfg: TrainerConfig, epoch: int, where: str) -> None:
    """ConfigError unless a checkpoint written at ``epoch`` by a run of the config ``saved``
    (``model_dump(mode="json")``) is a valid start for ``cfg``: the same prefix keys, and
    ``epoch`` within both runs' shared prefix."""
    theirs = TrainerConfig.model_validate(dict(saved))
    saved_keys = prefix_keys(flatten(theirs))
    differ = sorted(k for k, v in prefix_keys(flatten(cfg)).items() if saved_keys.get(k) != v)
    if differ:
        raise ConfigError(
            f"{where} is not a prefix of this trial: it differs in {', '.join(differ)} (only "
            f"{', '.join(sorted(LATE_KEYS))} may differ)"
        )
    last = min(divergence_epoch(theirs), divergence_epoch(cfg))
    if epoch > last:
        raise ConfigError(
            f"{where} holds epoch {epoch}, past the shared prefix (the queue of one of the two "
            f"runs acts from epoch {last})"
        )
