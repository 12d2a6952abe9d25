"""The per-worker function of a trial's Ray Train run: a thin adapter around the trainer.

It rebuilds the typed trainer config from the trial's :class:`~orchestrator.settings.TrialSpec`,
resumes from ``ray.train.get_checkpoint()``, and runs :func:`trainer.run.run_trial` with a
reporter that calls ``ray.train.report`` on every rank at the same points (it is a barrier) and
logs to MLflow from rank 0 only (:func:`make_reporter` makes that choice).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import ray.train
import torch

from orchestrator.objective import MONITOR_KEYS, OBJECTIVE, Objective
from orchestrator.settings import ForkSource, TrialSpec
from orchestrator.storage import local_folder, upload_folder
from orchestrator.tracking import (
    ERROR_TAG,
    MODEL_TAG,
    RESOURCES_TAG,
    REVISION_TAG,
    Tracking,
    TrialTracker,
    error_text,
)
from orchestrator.tracking.datasets import corpus_inputs
from orchestrator.tracking.pyfunc import make_mlflow_model
from orchestrator.train.decisions import wait_for
from orchestrator.train.prefixes import (
    FORKED_FROM_TAG,
    FORKED_TRIAL_TAG,
    SHARED_EPOCHS,
    SHARED_SECONDS,
    Publisher,
)
from trainer.config import TrainerConfig, flatten
from trainer.data.errors import CorpusError
from trainer.evaluate import MODEL_DIR
from trainer.model import pretrained_revision
from trainer.run import run_trial

log = logging.getLogger(__name__)

SPEC_KEY = "trial"  # the one entry of train_loop_config: the trial's TrialSpec
Send = Callable[..., None]  # ray.train.report's signature: (metrics, checkpoint=None)
Decide = Callable[[int], bool]  # epoch -> whether to train on


class RayReporter:
    """Forwards the trainer's reports to Ray Train from every rank (``send``, a barrier) and to
    MLflow through ``tracker``, which only rank 0 holds. With an ``objective`` (a sweep's
    trial), each report that knows the objective's value carries it as :data:`OBJECTIVE`, and
    MLflow logs it: the best epoch so far for a per-epoch metric, the final value otherwise."""

    def __init__(
        self,
        tracker: TrialTracker | None,
        launch_s: float,
        send: Send = ray.train.report,
        objective: Objective | None = None,
        decide: Decide | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.tracker = tracker
        self.launch_s = launch_s
        self.send = send
        self.objective = objective
        self.decide = decide
        self.publisher = publisher  # rank 0 of a sweep trial that shares prefixes
        self.epoch = 0

    def forked(self, source: ForkSource) -> None:
        """Rank 0 of a trial started from a shared prefix: its run gets the prefix's epochs (as
        the trial that trained them logged them, the objective so far included), so its curves
        and objective are whole, and tags naming the run and epoch it forked from."""
        if self.tracker is None:
            return
        history = [dict(h) for h in source.history]
        logged = self.tracker.steps_of("encoder/dev/eer")  # a fork restarted before its first
        for i, metrics in enumerate(history):  # checkpoint replays into the same run: once
            if int(metrics["epoch"]) in logged:
                continue
            if self.objective is not None and self.objective.per_epoch:
                metrics[OBJECTIVE] = self.objective.so_far(history[: i + 1])
            self.tracker.log_metrics(metrics, step=int(metrics["epoch"]))
        self.tracker.set_tag(FORKED_FROM_TAG, f"{source.run_id}@{source.epoch}")
        self.tracker.set_tag(FORKED_TRIAL_TAG, source.trial_id)
        shared = {SHARED_EPOCHS: float(source.epoch), SHARED_SECONDS: source.seconds}
        self.tracker.log_metrics(shared, step=0)

    def report(
        self,
        metrics: Mapping[str, float],
        *,
        epoch: int,
        step: int,
        checkpoint: Path | None,
        history: Sequence[Mapping[str, float]] = (),
    ) -> bool:
        """Send the epoch's report (rank 0 logs it first) and answer whether to train on:
        ``decide(epoch)``, which waits for Tune's decision where ASHA can stop the trial."""
        self.epoch = epoch
        metrics = dict(metrics)
        if self.objective is not None and self.objective.per_epoch:
            metrics[OBJECTIVE] = self.objective.so_far(history or [metrics])
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=epoch)
        if self.publisher is not None:  # before the report: the next epoch may overwrite it
            self.publisher.after_epoch(epoch + 1, checkpoint, [dict(h) for h in history])
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        # A monotonic epoch: after a restore Tune's training_iteration restarts, the epoch does not.
        self.send({**metrics, "epoch": epoch, "step": step}, checkpoint=ckpt)
        if self.publisher is not None:
            self.publisher.after_report()
        return self.decide(epoch) if self.decide is not None else True

    def final(
        self,
        metrics: Mapping[str, float],
        artifacts: Sequence[Path],
        history: Sequence[Mapping[str, float]] = (),
    ) -> None:
        # From the trial driver's start to this worker's start: Ray's share of the latency.
        metrics = {**metrics, "time/launch_s": self.launch_s}
        if self.objective is not None:
            metrics[OBJECTIVE] = self.objective.final(metrics, history)
        # The step after the last epoch, also in a resumed worker that trained no epoch itself
        # (its history comes from the checkpoint): not on top of an epoch's points.
        last = max([self.epoch, *(int(h["epoch"]) for h in history if "epoch" in h)])
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=last + 1)
            self.tracker.log_artifacts([p for p in artifacts if p.suffix != ".tsv"])
            self.tracker.log_artifacts([p for p in artifacts if p.suffix == ".tsv"], "scores")
        # The objective stays even when NaN (no finite epoch): Tune's strict metric check, the
        # searcher and ASHA then see the trial's value instead of a result without it.
        finite = {k: v for k, v in metrics.items() if math.isfinite(v) or k == OBJECTIVE}
        # No Tune-reserved key (``done`` above all): Tune would end the trial at this report,
        # tearing the workers down before rank 0 marks the run FINISHED. The trial ends when its
        # driver's fit() returns, after every worker has returned.
        self.send({**finite, "epoch": self.epoch})

    def tag(self, key: str, value: str) -> None:
        if self.tracker is not None:
            self.tracker.set_tag(key, value)

    def finish(self, status: str) -> None:
        """End the trial's MLflow run with ``status`` (rank 0; nothing on other ranks)."""
        if self.tracker is not None:
            self.tracker.finish(status)

    def fail(self, err: BaseException) -> None:
        """End the trial's run FAILED with its cause (:data:`ERROR_TAG`; rank 0 only)."""
        if self.tracker is not None:
            self.tracker.set_tag(ERROR_TAG, error_text(err))
            self.tracker.finish("FAILED")

    def stopped(self) -> None:
        """A trial Tune stopped early ends here: its metrics are sent, and its run is left for
        the sweep's driver to close (``CloseTrialRuns``: KILLED, stopped early), the one writer
        of its end whichever way the workers go (they may be torn down before this)."""
        if self.tracker is not None:
            self.tracker.stop_system_metrics()
            self.tracker.flush()


def make_reporter(
    spec: TrialSpec,
    cfg: TrainerConfig,
    world_rank: int,
    launch_s: float,
    send: Send = ray.train.report,
) -> RayReporter:
    """The reporter of rank ``world_rank``: every rank reports to Ray, rank 0 alone opens the
    trial's MLflow run (and logs the flattened config to it); other ranks never touch MLflow.
    The objective reads the epoch this trial's own ``stage1.monitor`` keeps."""
    objective = spec.objective
    if objective is not None:
        objective = replace(objective, monitor=MONITOR_KEYS[cfg.stage1.monitor])
    decide = _decider(spec)
    if world_rank != 0:
        return RayReporter(None, launch_s, send, objective, decide)
    # Fail fast on an MLflow outage (MLflow's client retries for minutes by default, holding
    # every rank at the next report barrier); the tracker buffers and retries instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    tracker = Tracking(spec.tracking).open_trial(
        spec.trial_id,
        flatten(cfg),
        spool=spec.out_dir / "mlflow_unsent.jsonl",
        tags=spec.run_tags,
    )
    _describe_run(tracker, cfg, spec)
    publisher = None
    if spec.prefix is not None:
        publisher = Publisher(spec.prefix, spec.trial_id, tracker.run_id)
    return RayReporter(tracker, launch_s, send, objective, decide, publisher)


def _describe_run(tracker: TrialTracker, cfg: TrainerConfig, spec: TrialSpec) -> None:
    """Rank 0: the run's dataset inputs (which corpus version each number came from) and,
    when ``runtime.system_metrics`` says so (by default where the trial has GPUs), MLflow's
    system metrics until the run ends."""
    try:
        tracker.log_datasets(corpus_inputs(cfg))
    except (CorpusError, OSError) as err:  # the trainer fails on it next, naming it
        log.warning("trial %s: its corpora could not be described: %s", spec.trial_id, err)
    wanted = cfg.runtime.system_metrics
    if wanted is None:
        wanted = torch.cuda.is_available() and cfg.runtime.device != "cpu"
    if wanted:
        tracker.start_system_metrics()


def _decider(spec: TrialSpec) -> Decide | None:
    """Whether to go on after an epoch: at ``spec.decision_epochs``, once Tune decided."""
    if spec.decisions is None or not spec.decision_epochs:
        return None
    epochs = set(spec.decision_epochs)

    def decide(epoch: int) -> bool:
        if epoch not in epochs:
            return True
        return wait_for(spec.decisions, epoch, spec.decision_timeout_s)

    return decide


def _restore(out_dir: Path, world_rank: int) -> tuple[Path | None, str | None]:
    """The local copy of Ray's latest checkpoint of this run and that checkpoint's name, or
    (None, None). Only Ray's checkpoint (in the run's storage, reachable from any node) is
    resumed from: a restarted worker group may land on another node than the one that wrote
    the last one."""
    restored = ray.train.get_checkpoint()
    if restored is None:
        return None, None
    local = out_dir / "checkpoints" / f"restored-r{world_rank}"
    log.info("rank %d resumes from %s", world_rank, restored.path)
    return Path(restored.to_directory(str(local))), Path(restored.path).name


def _fork_source(spec: TrialSpec, world_rank: int) -> tuple[Path | None, ForkSource | None]:
    """The local copy of the shared prefix this trial starts from, and where it came from;
    (None, None) when it starts from scratch."""
    source = spec.prefix.fork if spec.prefix is not None else None
    if source is None:
        return None, None
    scratch = spec.out_dir / "checkpoints" / f"prefix-r{world_rank}"
    return local_folder(source.uri, scratch), source


def _publish_model(spec: TrialSpec, reporter: RayReporter) -> None:
    """Rank 0: make the final model an MLflow model, copy it to the sweep's storage, then tag
    the run with where it is (a run tagged so always has the whole model there)."""
    make_mlflow_model(spec.out_dir / MODEL_DIR)
    uri = upload_folder(spec.out_dir / MODEL_DIR, spec.model_uri)
    reporter.tag(MODEL_TAG, uri)
    log.info("trial %s: final model in %s", spec.trial_id, uri)


def _quiet_report_lines() -> None:
    """Silence Ray Train's "Reporting training result ..." INFO line (one per rank per report).

    Ray 2.60 logs it through ``logging.getLogger(__file__)`` in its train context module: a logger
    named by a file path, outside ``ray.train``, so RunConfig's LoggingConfig does not reach it and
    it propagates to the worker's root logger at INFO.
    """
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: nothing of ours to silence
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_worker(config: dict[str, TrialSpec]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``config[SPEC_KEY]`` comes from the trial driver."""
    spec = config[SPEC_KEY]
    launch_s = time.time() - spec.driver_started
    if not spec.verbose:
        _quiet_report_lines()
    world_rank = ray.train.get_context().get_world_rank()
    cfg = spec.config()
    resume, resumed_from = _restore(spec.out_dir, world_rank)
    fork, source = _fork_source(spec, world_rank) if resume is None else (None, None)
    reporter = make_reporter(spec, cfg, world_rank, launch_s)
    if source is not None:
        reporter.forked(source)
    reporter.tag(RESOURCES_TAG, spec.resources.to_json())
    revision = pretrained_revision(cfg.model)
    if revision is not None:
        reporter.tag(REVISION_TAG, revision)
    if resumed_from is not None:
        reporter.tag("supcon.resumed_from", resumed_from)
    try:
        metrics = run_trial(
            cfg,
            spec.out_dir,
            reporter,
            resume=resume,
            resume_local=False,
            with_eval=spec.with_eval,
            check_files=not spec.corpora_checked,
            fork=fork,
        )
        if world_rank == 0 and metrics is not None:
            _publish_model(spec, reporter)
    except BaseException as err:
        reporter.fail(err)
        raise
    # Ray's storage keeps the one checkpoint resume needs; this node's copies (rank 0's last
    # save, each rank's restored copy) are several GB apiece for XLS-R and nothing reads them.
    shutil.rmtree(spec.out_dir / "checkpoints", ignore_errors=True)
    if metrics is None:
        reporter.stopped()
    else:
        reporter.finish("FINISHED")
