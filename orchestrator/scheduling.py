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

from dataclasses import dataclass

from search_spaces import SearchSpace
from trainer.config import TrainerConfig

QUEUE_EPOCHS_BEFORE_RUNG = 2
DEFAULT_GRACE = 2  # epochs 0, 1, 2 trained before the first rung when no trial has a queue


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
    """The latest 0-based epoch at which a trial's queue can turn on (``queue.start_epoch``, or
    the epoch holding ``queue.start_step`` when that is later); None when no trial has one."""
    if space.largest("queue.size", base) <= 0:
        return None
    epoch = space.largest("queue.start_epoch", base)
    start_step = space.largest("queue.start_step", base)
    if start_step > 0:
        if not steps_per_epoch:
            raise ValueError("queue.start_step is set: the epoch length is needed")
        epoch = max(epoch, start_step // steps_per_epoch)
    return int(epoch)


def asha_rungs(
    space: SearchSpace, base: TrainerConfig, steps_per_epoch: int | None = None
) -> Rungs:
    """The first rung for a sweep of ``space`` over ``base`` (see the module's rule)."""
    start = latest_queue_epoch(space, base, steps_per_epoch)
    grace = DEFAULT_GRACE if start is None else start + QUEUE_EPOCHS_BEFORE_RUNG - 1
    return Rungs(max(1, grace), start, base.stage1.epochs)
