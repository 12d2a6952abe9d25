"""Tune's decision about a trial, learned before its workers start the next epoch.

Ray Train's report is a barrier among a trial's ranks only: it returns as soon as every rank has
reported, while the result still travels to Tune (the Train controller's callback, the trial's
driver, Tune's controller) and ASHA decides. Without waiting, a trial ASHA stops trains (and logs,
and checkpoints) one more epoch Tune never sees; on XLS-R that is an epoch, a dev pass and a
5 GB checkpoint upload per stopped trial, and MLflow's last ``sweep/objective`` differs from what
the searcher was told.

So the trial's driver relays each result to Tune itself (:func:`relay`): ``tune.report`` in a
function trainable returns only when Tune asks for the next result, i.e. once it decided to go
on, and raises ``SystemExit`` when Tune stops the trial. At the epochs where ASHA can decide (its
rungs), the driver then tells the workers through a :class:`Decisions` actor, and every rank
waits for it (:meth:`RayReporter.report <orchestrator.train.worker.RayReporter.report>`); other
epochs do not wait. The wait is bounded: a decision that never comes lets the workers go on
after ``DECISION_TIMEOUT_S`` and says so; a driver gone (Tune tore the trial down) means stop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray import tune
from ray.exceptions import RayActorError
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from orchestrator.settings import DECISION_TIMEOUT_S

log = logging.getLogger(__name__)

CONTINUE, STOP = "continue", "stop"
CHECKPOINT_PATH_KEY = "checkpoint_path"  # as Ray's own TuneReportCallback names it


@ray.remote(num_cpus=0)
class Decisions:
    """Per epoch, what Tune decided (``continue`` or ``stop``); ranks wait for it."""

    def __init__(self) -> None:
        self._decided: dict[int, str] = {}
        self._events: dict[int, asyncio.Event] = {}

    def _event(self, epoch: int) -> asyncio.Event:
        return self._events.setdefault(epoch, asyncio.Event())

    async def decide(self, epoch: int, decision: str) -> None:
        self._decided[epoch] = decision
        self._event(epoch).set()

    async def wait(self, epoch: int, timeout: float) -> str | None:
        """The decision about ``epoch``, or None after ``timeout`` seconds without one."""
        try:
            await asyncio.wait_for(self._event(epoch).wait(), timeout)
        except TimeoutError:
            return None
        return self._decided[epoch]


def wait_for(decisions: Any, epoch: int, timeout: float = DECISION_TIMEOUT_S) -> bool:
    """On a worker: whether to go on after ``epoch`` (True when the decision was lost). The
    decisions' actor lives with the trial's driver, which Tune tears down when it stops the
    trial: if it is gone, so is the trial, and the answer is to stop."""
    try:
        decision = ray.get(decisions.wait.remote(epoch, timeout))
    except RayActorError:
        log.info("the trial's driver is gone after epoch %d: Tune ended the trial", epoch)
        return False
    if decision is None:
        log.warning(
            "no decision from Tune within %.0f s after epoch %d (an ASHA rung); going on",
            timeout,
            epoch,
        )
        return True
    return decision == CONTINUE


class ForwardReports(UserCallback):
    """Runs in the Train controller: puts each report that carries ``keep(metrics)`` on the
    trial driver's queue, with the checkpoint's path (the checkpoint itself is in storage)."""

    def __init__(self, results: Queue, keep: Callable[[dict[str, Any]], dict[str, Any] | None]):
        self.results = results
        self.keep = keep

    def after_report(self, run_context, metrics, checkpoint) -> None:
        shown = self.keep(metrics[0])
        if shown is None:
            return
        if checkpoint:
            shown[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.results.put(shown)


def relay(
    fit: Callable[[], None],
    results: Queue,
    decisions: Any | None,
    decision_epochs: Sequence[int],
) -> None:
    """In the trial's driver: run ``fit`` in a thread and hand each result it queues to Tune,
    telling ``decisions`` what Tune decided at ``decision_epochs``. Re-raises what ``fit``
    raised; lets Tune's stop (``SystemExit`` from ``tune.report``) through after telling."""
    failure: queue.Queue[BaseException] = queue.Queue()
    done = threading.Event()

    def run() -> None:
        try:
            fit()
        except BaseException as err:  # re-raised in the driver's thread below
            failure.put(err)
        finally:
            done.set()

    threading.Thread(target=run, name="trial-fit", daemon=True).start()
    epoch = None
    try:
        while not (done.is_set() and results.empty()):
            try:
                result = results.get(timeout=0.5)
            except Empty:
                continue
            epoch = int(result["epoch"])
            tune.report(result)  # returns once Tune asks for the next result: it goes on
            if decisions is not None and epoch in decision_epochs:
                decisions.decide.remote(epoch, CONTINUE)
    except BaseException:
        if decisions is not None and epoch is not None:
            try:
                ray.get(decisions.decide.remote(epoch, STOP), timeout=10)
            except Exception as err:  # the workers go on after their timeout, or end with us
                log.warning("could not tell the workers Tune stopped the trial: %s", err)
        raise
    if not failure.empty():
        raise failure.get()
