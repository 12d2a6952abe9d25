"""Shared training prefixes at run time: which trial trains a prefix, which ones start from it,
and when its checkpoint goes.

Trials whose configurations differ only in :data:`trainer.prefix.LATE_KEYS` (on the same world
size) are one run until the earlier of their queue starts. One of them (a *producer*) trains that
prefix and *publishes* its checkpoint at each epoch another trial diverges at
(``PREFIXES_DIR/PREFIX/epoch-E.TRIAL``, with ``prefix.json`` written last); the others (*forks*)
start from it and train only their own epochs. The sweep's :class:`Ledger` (a named Ray actor,
:data:`PrefixLedger`) keeps account: each trial's driver asks it before launching any worker
(:func:`claim_prefix`), so a trial waiting for its prefix holds no GPU, only its driver slot.

The rules of :meth:`Ledger.claim`, for a trial diverging at epoch ``d``:

1. a published checkpoint of its prefix at ``d``: start from it;
2. else, one promised by a running producer: wait for it (polling), through that producer's
   Ray Train restarts (``--max-failures``) too;
3. else (nothing published or promised, or the producer ended without it, failed or stopped):
   train from the latest published checkpoint of the prefix before ``d``, or from scratch, and
   publish the epochs other trials want that nobody has promised.

A grid's trials are known in advance (:mod:`orchestrator.tune.prefix_tree`): a checkpoint is
deleted once every trial planned to start from it has started (its first report; a trial that
fell back to training its own prefix counts as started). In a sampled space a later suggestion
may still want one, so they stay until the sweep ends; :meth:`Ledger.cleanup` deletes what is
left either way. A new ledger (``resume``) finds the published checkpoints in storage.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.settings import ForkSource, PrefixPlan, SweepSettings
from orchestrator.storage import (
    SNAPSHOT,
    delete_folder,
    folder_bytes,
    missing_files,
    read_text,
    subfolders,
    upload_folder,
)
from orchestrator.storage import write_text as write_file
from trainer.config import apply_overrides
from trainer.prefix import divergence_epoch, point_key, prefix_id

log = logging.getLogger(__name__)

# On a fork's MLflow run: the run and epoch it started from (``RUN_ID@EPOCH``), that run's
# trial, and the epochs and seconds of training it did not repeat.
FORKED_FROM_TAG = "supcon.forked_from"
FORKED_TRIAL_TAG = "supcon.forked_from_trial"
SHARED_EPOCHS = "prefix/epochs_shared"
SHARED_SECONDS = "prefix/seconds_shared"
MARKER = "prefix.json"  # written last: a folder without it is an unfinished upload
POLL_S = 2.0
# How long a grid's fork waits for the trunk of its prefix to claim it: the trunk comes first
# in run order, so its driver starts within seconds; past this (a trunk that finished before
# a ``resume``, or will never run) the fork goes on with what is published.
TRUNK_GRACE_S = 60.0
Key = tuple[str, int]  # (prefix id, epoch)


@dataclass(frozen=True)
class Claim:
    """What :meth:`Ledger.claim` decided: start from ``fork`` (None: from scratch) and publish
    at ``publish``, or wait for ``wait_for`` (a trial id) to publish the prefix."""

    fork: ForkSource | None = None
    publish: tuple[int, ...] = ()
    wait_for: str | None = None


class Ledger:
    """The sweep's account of its prefixes (see the module). ``plan``: a grid's point key ->
    (prefix id, planned fork epoch, 0 for none); None for a sampled space, whose trials publish
    at ``candidates`` (the epochs a queue can start at) and keep every checkpoint to the end."""

    def __init__(
        self,
        store: str,
        plan: Mapping[str, tuple[str, int]] | None = None,
        candidates: frozenset[int] = frozenset(),
    ) -> None:
        self.store = store.rstrip("/")
        self.plan = dict(plan) if plan is not None else None
        self.candidates = frozenset(candidates)
        self.wanted: dict[Key, int] = {}
        for prefix, epoch in (self.plan or {}).values():
            if epoch > 0:
                self.wanted[(prefix, epoch)] = self.wanted.get((prefix, epoch), 0) + 1
        self.published: dict[Key, ForkSource] = {}
        self.sizes: dict[Key, int] = {}
        self.promised: dict[Key, str] = {}
        self.trained: set[str] = set()  # prefixes some trial trains (or trained) itself
        self.first_claim: dict[str, float] = {}
        self.forks: dict[str, Key] = {}  # trial -> the planned checkpoint it starts from
        self.stats = {"published": 0, "deleted": 0, "peak_count": 0, "peak_bytes": 0}
        self._scan()

    def _scan(self) -> None:
        """Checkpoints an earlier driver of this sweep published (``resume``)."""
        for prefix in subfolders(self.store):
            for name in subfolders(f"{self.store}/{prefix}"):
                try:
                    source = ForkSource.from_json(
                        read_text(f"{self.store}/{prefix}/{name}/{MARKER}")
                    )
                except (FileNotFoundError, ValueError, TypeError):
                    continue  # an upload killed part-way: never used, deleted at the end
                self.published.setdefault((prefix, source.epoch), source)

    def _epochs(self, prefix: str) -> set[int]:
        """The epochs of ``prefix`` some trial may still start from."""
        if self.plan is None:
            return set(self.candidates)
        return {e for (p, e), n in self.wanted.items() if p == prefix and n > 0}

    def claim(
        self, trial_id: str, key: str, prefix: str, diverges: int, resuming: bool = False
    ) -> Claim:
        """Where the trial ``trial_id`` (grid point ``key``) starts and what it publishes, or
        whom it waits for (the module's rules). ``resuming``: it continues from a checkpoint of
        its own, so it neither forks nor waits; it publishes what it passes that is wanted."""
        planned = self.plan.get(key, (prefix, 0))[1] if self.plan is not None else diverges
        if resuming:
            planned = 0
        own = (prefix, diverges)
        if diverges > 0 and own in self.published and planned > 0:
            self.forks[trial_id] = own
            return Claim(fork=self.published[own])
        owner = self.promised.get(own)
        if diverges > 0 and planned > 0 and owner not in (None, trial_id):
            return Claim(wait_for=owner)
        first = self.first_claim.setdefault(trial_id, time.monotonic())
        if (
            self.plan is not None
            and planned > 0
            and prefix not in self.trained
            and time.monotonic() - first < TRUNK_GRACE_S
        ):  # a grid's fork that asks before its trunk (they start side by side): let it go first
            return Claim(wait_for="the trial that trains this prefix")
        self.trained.add(prefix)
        if planned > 0 and own in self.wanted:  # planned to start from it: it trains it instead
            self.wanted[own] -= 1
        earlier = [e for (p, e) in self.published if p == prefix and 0 < e < diverges]
        start = max(earlier, default=0)
        publish = sorted(
            e
            for e in self._epochs(prefix)
            if start < e <= diverges
            and (prefix, e) not in self.published
            and self.promised.get((prefix, e), trial_id) == trial_id
        )
        for e in publish:
            self.promised[(prefix, e)] = trial_id
        return Claim(fork=self.published.get((prefix, start)), publish=tuple(publish))

    def wants(self, prefix: str, epoch: int) -> bool:
        """Whether a checkpoint of ``prefix`` at ``epoch`` is still worth uploading."""
        key = (prefix, epoch)
        return key not in self.published and (self.plan is None or self.wanted.get(key, 0) > 0)

    def publish(self, trial_id: str, prefix: str, source: ForkSource, size: int) -> bool:
        """Record an uploaded checkpoint; False (and it is deleted) when another trial's came
        first or nobody wants it any more."""
        key = (prefix, source.epoch)
        if self.promised.get(key) == trial_id:
            del self.promised[key]
        if not self.wants(prefix, source.epoch):
            delete_folder(source.uri)
            return False
        self.published[key] = source
        self.sizes[key] = size
        self.stats["published"] += 1
        self.stats["peak_count"] = max(self.stats["peak_count"], len(self.sizes))
        self.stats["peak_bytes"] = max(self.stats["peak_bytes"], sum(self.sizes.values()))
        return True

    def started(self, trial_id: str) -> None:
        """``trial_id`` started from the checkpoint it was planned to start from; the last
        such trial deletes it. (A fork from an earlier epoch, after its own was lost, was not
        planned there: it does not count.)"""
        key = self.forks.pop(trial_id, None)
        if self.plan is None or key is None or key not in self.wanted:
            return
        self.wanted[key] -= 1
        if self.wanted[key] <= 0 and key in self.published:
            self._delete(key)

    def ended(self, trial_id: str) -> None:
        """The trial ended (any way): what it promised and did not publish is free again."""
        for key in [k for k, owner in self.promised.items() if owner == trial_id]:
            del self.promised[key]

    def _delete(self, key: Key) -> None:
        delete_folder(self.published.pop(key).uri)
        self.sizes.pop(key, None)
        self.stats["deleted"] += 1

    def cleanup(self) -> dict[str, int]:
        """Delete every prefix checkpoint left (and unfinished uploads); returns the counts."""
        for key in list(self.published):
            self._delete(key)
        delete_folder(self.store)
        return dict(self.stats)


PrefixLedger = ray.remote(num_cpus=0)(Ledger)


def start_ledger(
    settings: SweepSettings,
    plan: Mapping[str, tuple[str, int]] | None,
    candidates: frozenset[int],
) -> Any:
    """The sweep's ledger actor, named :attr:`SweepSettings.ledger_name` so that trial drivers
    find it; it lives as long as the caller holds the handle. One left by a killed driver of
    the same sweep (``resume`` joining a cluster; Ray ends it soon anyway) is replaced: what it
    knew that matters is in storage.

    It runs on the driver's own node (the head, for a submitted sweep): a worker node that goes
    away must not take the sweep's account with it. Restarted there if its process dies, it
    finds the published checkpoints again (it forgets only promises, which their trials' ends
    would free, and how many forks started, so those checkpoints wait for the sweep's end)."""
    with contextlib.suppress(ValueError):  # none: the usual case
        ray.kill(ray.get_actor(settings.ledger_name))
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            return PrefixLedger.options(
                name=settings.ledger_name,
                scheduling_strategy=here,
                max_restarts=3,
                max_task_retries=3,
            ).remote(settings.prefixes_dir, plan, candidates)
        except ValueError:  # the old name is released once its actor is dead
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def claim_prefix(
    settings: SweepSettings, trial_id: str, params: Mapping[str, Any]
) -> PrefixPlan | None:
    """In a trial's driver, before any worker exists: where the trial starts from and what it
    publishes, waiting while another trial trains the prefix it starts from. None (it shares
    nothing) when the sweep has no ledger."""
    try:
        ledger = ray.get_actor(settings.ledger_name)
    except ValueError:
        log.warning(
            "trial %s: no prefix ledger %s; it shares nothing", trial_id, settings.ledger_name
        )
        return None
    cfg = apply_overrides(settings.base, dict(params))
    prefix = prefix_id(cfg, settings.workers_per_trial)
    diverges = divergence_epoch(cfg)
    key, waited, since = point_key(params), None, time.monotonic()
    resuming = not missing_files(f"{settings.train_dir}/{trial_id}", (SNAPSHOT,))
    while True:
        try:
            claim = ray.get(ledger.claim.remote(trial_id, key, prefix, diverges, resuming))
        except RayActorError as err:
            log.warning(
                "trial %s: the prefix ledger is gone (%s); it shares nothing", trial_id, err
            )
            return None
        if claim.wait_for is None:
            break
        if waited != claim.wait_for:
            waited = claim.wait_for
            log.warning(
                "trial %s waits for %s to train their shared prefix (epochs 0-%d); it holds "
                "no worker meanwhile",
                trial_id,
                waited if waited.startswith("the ") else f"trial {waited}",
                diverges - 1,
            )
        time.sleep(POLL_S)
    if waited is not None:
        log.info("trial %s waited %.0f s for its prefix", trial_id, time.monotonic() - since)
    return PrefixPlan(prefix, claim.fork, claim.publish, settings.prefixes_dir, ledger)


class Publisher:
    """Rank 0 of a trial that shares prefixes: uploads its checkpoint at the epochs of
    ``plan.publish`` and tells the ledger; after the first report of a fork, tells the ledger
    it started (every rank has loaded the prefix by then: the report is a barrier)."""

    def __init__(self, plan: PrefixPlan, trial_id: str, run_id: str) -> None:
        self.plan, self.trial_id, self.run_id = plan, trial_id, run_id
        self.created = time.monotonic()
        self.inherited = plan.fork.seconds if plan.fork is not None else 0.0
        self.forked_told = plan.fork is None

    def after_epoch(self, epoch: int, folder: Path | None, history: list[dict[str, float]]) -> None:
        """``epoch`` epochs are done and ``folder`` holds the state after them. A ledger gone
        (its node lost) only means nothing more is shared: the trial trains on."""
        try:
            self._publish(epoch, folder, history)
        except RayActorError as err:
            log.warning("trial %s: the prefix ledger is gone (%s)", self.trial_id, err)
            self.plan = replace(self.plan, publish=())

    def _publish(self, epoch: int, folder: Path | None, history: list[dict[str, float]]) -> None:
        plan = self.plan
        if folder is None or epoch not in plan.publish:
            return
        if not ray.get(plan.ledger.wants.remote(plan.prefix, epoch)):
            return
        uri = f"{plan.store}/{plan.prefix}/epoch-{epoch}.{self.trial_id}"
        source = ForkSource(
            uri=upload_folder(folder, uri),
            epoch=epoch,
            trial_id=self.trial_id,
            run_id=self.run_id,
            seconds=self.inherited + time.monotonic() - self.created,
            history=tuple(dict(h) for h in history),
        )
        write_file(f"{uri}/{MARKER}", source.to_json())
        size = folder_bytes(folder)
        kept = ray.get(plan.ledger.publish.remote(self.trial_id, plan.prefix, source, size))
        what = "published" if kept else "not needed any more (deleted)"
        log.info("trial %s: its prefix checkpoint at epoch %d %s", self.trial_id, epoch, what)

    def after_report(self) -> None:
        if not self.forked_told and self.plan.fork is not None:
            self.forked_told = True
            try:
                ray.get(self.plan.ledger.started.remote(self.trial_id))
            except RayActorError as err:  # its checkpoint then goes when the sweep ends
                log.warning("trial %s: the prefix ledger is gone (%s)", self.trial_id, err)
