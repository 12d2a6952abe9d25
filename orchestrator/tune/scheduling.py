"""When ASHA may first stop a trial: not before the queue it is meant to judge has run.

Trials that share (similarity, temperature) are the same run, under one seed, until their queue
turns on; an ASHA rung before that compares them on nothing the queue changed. So the first rung
(ASHA's ``grace_period``, in the 0-based ``epoch`` every report carries) is the epoch by which
every trial's queue has been on for :data:`QUEUE_EPOCHS_BEFORE_RUNG` whole epochs: a trial
stopped at the report of epoch ``e`` has trained epochs ``0..e``, and one whose queue starts at
epoch ``s`` has had it for ``e - s + 1`` of them. The space's latest queue start bounds every
trial's, so trials without a queue wait as long as the latest-starting one. A space in which no
trial has a queue keeps :data:`DEFAULT_GRACE`. Nothing here imports Ray.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from search_spaces import SearchSpace
from trainer.config import TrainerConfig

QUEUE_EPOCHS_BEFORE_RUNG = 2
DEFAULT_GRACE = 2  # epochs 0, 1, 2 trained before the first rung when no trial has a queue
REDUCTION_FACTOR = 2


@dataclass(frozen=True)
class Rungs:
    """ASHA's first rung (``grace``, a 0-based epoch) and why; ``stops`` is False when that
    rung is at or past the last epoch, so ASHA can stop nothing."""

    grace: int
    latest_queue_epoch: int | None
    epochs: int

    @property
    def stops(self) -> bool:
        return self.grace < self.epochs - 1

    def milestones(self) -> tuple[int, ...]:
        """The epochs at which ASHA compares a trial with the others (and may stop it): the
        first rung times each power of the reduction factor, as Ray's ``ASHAScheduler``
        (``max_t`` = the epochs, one bracket) lays them out; () when it stops nothing."""
        if not self.stops:
            return ()
        count = int(math.log(self.epochs / self.grace) / math.log(REDUCTION_FACTOR) + 1)
        return tuple(self.grace * REDUCTION_FACTOR**k for k in range(count))

    def describe(self) -> str:
        if self.latest_queue_epoch is None:
            why = "no trial has a queue"
        else:
            why = (
                f"the latest queue start is epoch {self.latest_queue_epoch}, plus "
                f"{QUEUE_EPOCHS_BEFORE_RUNG} epochs with the queue on"
            )
        text = f"ASHA's first rung is after epoch {self.grace} (0-based; {why})"
        if not self.stops:
            text += f": with {self.epochs} epochs per trial it can stop no trial"
        return text


def latest_queue_epoch(
    space: SearchSpace, base: TrainerConfig, steps_per_epoch: int | None
) -> int | None:
    """The latest 0-based epoch from which a trial's queue is on for whole epochs
    (``queue.start_epoch``, or the first epoch after ``queue.start_step`` begins, rounded up,
    when that is later); None when no trial has one."""
    if space.largest("queue.size", base) <= 0:
        return None
    epoch = space.largest("queue.start_epoch", base)
    start_step = space.largest("queue.start_step", base)
    if start_step > 0:
        if not steps_per_epoch:
            raise ValueError("queue.start_step is set: the epoch length is needed")
        # The first whole epoch with the queue on: a queue starting mid-epoch has less than it.
        epoch = max(epoch, -(-start_step // steps_per_epoch))
    return int(epoch)


def asha_rungs(
    space: SearchSpace, base: TrainerConfig, steps_per_epoch: int | None = None
) -> Rungs:
    """The first rung for a sweep of ``space`` over ``base`` (see the module's rule)."""
    start = latest_queue_epoch(space, base, steps_per_epoch)
    grace = DEFAULT_GRACE if start is None else start + QUEUE_EPOCHS_BEFORE_RUNG - 1
    return Rungs(max(1, grace), start, base.stage1.epochs)


def run_order(
    space: SearchSpace, scheduler: str, rungs: Rungs | None, seed: int
) -> list[dict[str, Any]]:
    """A grid's points in the order its trials start: the file's order, or, when ASHA can stop
    trials, a permutation seeded by the sweep's seed. Asynchronous successive halving judges a
    trial only against those that reached its rung before it: in the file's order
    (similarity-major) every angular trial would be judged against cosine ones, and the first
    trial could never be stopped."""
    points = space.grid_points()
    if scheduler == "asha" and rungs is not None and rungs.stops:
        random.Random(seed).shuffle(points)
    return points


def decision_epochs(scheduler: str, rungs: Rungs | None) -> tuple[int, ...]:
    """The epochs after which a trial's ranks wait for Tune's decision: ASHA's milestones."""
    return rungs.milestones() if scheduler == "asha" and rungs is not None else ()
