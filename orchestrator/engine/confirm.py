"""``supcon-sweep confirm``: a finished sweep's top configurations, rerun under new seeds.

A sweep ranks one seed of each configuration, and seed spread on In-the-Wild (several EER
points) is larger than most differences it ranks. Confirmation reruns the top K configurations
(by the sweep's objective) with S new seeds each. Every rerun is a Ray Train trial built as the
sweep's are (:func:`~orchestrator.train.trainer.torch_trainer`): the sweep's resources, storage,
failure restarts, and a Train run named ``confirm-<config_id>-s<seed>`` that resumes from its
checkpoint when confirm runs again. The reruns score every evaluation set themselves. The
statistics are over the fresh seeds; the sweep trial, selected as a winner on the metric that
ranks it, is scored on the evaluation sets when the sweep did not and shown apart, unless
``include_sweep_trial`` counts it as one more seed (see :mod:`orchestrator.reports.confirm`).

MLflow: one parent run ``confirm-<sweep>`` (tagged with the sweep's parent run id), one nested
run per (configuration, seed) tagged ``supcon.config_id`` and ``supcon.seed``. Running confirm
again finds both by name and tags: what finished is kept, the rest runs or resumes."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.train import TrainingFailedError

from orchestrator.engine.evaluate import evaluate_rows
from orchestrator.reports.confirm import (
    POOLED,
    ConfigRuns,
    ScoreReader,
    SeedRun,
    Summary,
    parent_metrics,
    summarise,
)
from orchestrator.reports.confirm_output import format_table, markdown, plot, table_rows, to_json
from orchestrator.settings import SweepSettings, TrackingTarget
from orchestrator.tracking import (
    CONFIG_ID_TAG,
    CONFIRM_TAG,
    SEED_TAG,
    SweepRun,
    Tracking,
    row_config_id,
)
from orchestrator.tracking.store import TRIAL_TAG
from orchestrator.tracking.sweeps import SweepRef
from orchestrator.train.resources import DRIVER_RESOURCE, moved_share
from orchestrator.train.trainer import failure_line, fit_trial, torch_trainer
from trainer.config import config_from_params
from trainer.data.corpora import read_corpus
from trainer.data.records import Utterance
from trainer.scores import read_scores

log = logging.getLogger(__name__)

# New seeds are the sweep trial's seed + 1000 i: rank r of a run seeds seed + r, so seeds closer
# than the world size would share ranks' random streams.
SEED_STRIDE = 1000


def _seed_run(row: dict[str, Any]) -> SeedRun | None:
    """A run row as a :class:`SeedRun`; None when it lacks an evaluation set."""
    if POOLED not in row["metrics"]:
        return None
    return SeedRun(row["run_id"], int(row["params"].get("seed", 0)), row["metrics"])


class ConfirmError(ValueError):
    """Confirmation cannot run as asked (bad input); the message names what is wrong."""


@dataclass(frozen=True)
class Candidate:
    """One configuration to confirm: the sweep trial that found it (a :func:`query_best` row),
    its rank in the sweep, its configuration id and the seed it ran with."""

    rank: int
    row: dict[str, Any]
    config_id: str
    seed: int


@dataclass(frozen=True)
class ConfirmJob:
    """One rerun: ``candidate``'s configuration under ``seed``."""

    candidate: Candidate
    seed: int

    @property
    def trial_id(self) -> str:
        return f"confirm-{self.candidate.config_id}-s{self.seed}"

    @property
    def params(self) -> dict[str, Any]:
        return {**self.candidate.row["params"], "seed": self.seed}

    def tags(self, sweep: SweepRef) -> dict[str, str]:
        return {
            CONFIG_ID_TAG: self.candidate.config_id,
            SEED_TAG: str(self.seed),
            CONFIRM_TAG: sweep.run_id,
        }


def candidates(
    tracking: Tracking, sweep: SweepRef, metric: str, mode: str, top: int
) -> tuple[list[Candidate], int]:
    """The sweep's best ``top`` distinct configurations by ``metric`` (best first), and how
    many finished trials have the metric. ConfirmError when none has."""
    rows = tracking.best(metric, mode, 10**6, sweep.run_id, confirmations=False)
    if not rows:
        raise ConfirmError(
            f"sweep {sweep.name} has no finished trial with the metric {metric} "
            f"(its parent run {sweep.run_id} is {sweep.status})"
        )
    chosen: dict[str, Candidate] = {}
    for row in rows:
        cid = row_config_id(row)
        if cid not in chosen and len(chosen) < top:
            chosen[cid] = Candidate(len(chosen) + 1, row, cid, int(row["params"].get("seed", 0)))
    return list(chosen.values()), len(rows)


def plan_jobs(
    chosen: Sequence[Candidate], seeds: Sequence[int] | None, count: int
) -> list[ConfirmJob]:
    """The reruns: each candidate under ``seeds`` (or ``count`` new seeds, its own seed +
    1000 i), except its own seed, which its sweep trial already ran."""
    jobs = []
    for cand in chosen:
        own = (
            seeds
            if seeds is not None
            else [cand.seed + SEED_STRIDE * i for i in range(1, count + 1)]
        )
        jobs += [ConfirmJob(cand, s) for s in own if s != cand.seed]
    return jobs


def finished_jobs(tracking: Tracking, parent_run_id: str) -> dict[str, dict[str, Any]]:
    """The confirmation's finished reruns that scored every evaluation set: trial id -> row."""
    rows = tracking.finished_trials(parent_run_id)
    return {r["trial_id"]: r for r in rows if POOLED in r["metrics"]}


def tag_originals(tracking: Tracking, chosen: Sequence[Candidate]) -> None:
    """Tag each candidate's sweep trial with its configuration id and seed, as the reruns are,
    so ``best --by-config`` groups them."""
    for cand in chosen:
        tags = {CONFIG_ID_TAG: cand.config_id, SEED_TAG: str(cand.seed)}
        tracking.tag_run(cand.row["run_id"], tags)


@ray.remote(num_cpus=0, resources={DRIVER_RESOURCE: 1})
def _run_job(
    settings: SweepSettings, job: ConfirmJob, params: dict[str, Any], tags: dict[str, str]
) -> str | None:
    """One rerun's Train run of ``params`` (resumed from its checkpoint if one is in storage);
    None or the error that failed it."""
    trainer = torch_trainer(
        settings,
        job.trial_id,
        params,
        [],
        with_eval=True,
        corpora_checked=True,
        run_tags=tags,
    )
    try:
        fit_trial(trainer, settings, job.trial_id)
    except TrainingFailedError as err:
        return failure_line(err)
    return None


def run_jobs(
    settings: SweepSettings,
    sweep_settings: SweepSettings,
    sweep: SweepRef,
    jobs: Sequence[ConfirmJob],
) -> dict[str, str]:
    """Run ``jobs`` on the connected cluster, ``settings.max_concurrent`` at a time, on
    ``settings``' resources where the sweep ran them on ``sweep_settings``' own; returns trial
    id -> error for those that failed."""
    pending, running, failures = list(jobs), {}, {}
    done = 0
    while pending or running:
        while pending and len(running) < settings.max_concurrent:
            job = pending.pop(0)
            was, now = sweep_settings.gpus_per_trial, settings.gpus_per_trial
            params = moved_share(job.params, was, now)
            running[_run_job.remote(settings, job, params, job.tags(sweep))] = job
            print(f"confirm: started {job.trial_id}", file=sys.stderr)
        ready, _ = ray.wait(list(running), num_returns=1)
        job = running.pop(ready[0])
        error = ray.get(ready[0])
        done += 1
        if error:
            failures[job.trial_id] = error
        state = f"failed: {error}" if error else "finished"
        print(f"confirm: {job.trial_id} {state} ({done}/{len(jobs)})", file=sys.stderr)
    return failures


def confirm_settings(
    sweep_settings: SweepSettings,
    target: TrackingTarget,
    storage: str | None,
    resources: dict[str, Any],
) -> SweepSettings:
    """The sweep's settings with the confirmation's tracking target and, where given, its own
    storage and trial resources."""
    changes: dict[str, Any] = {k: v for k, v in resources.items() if v is not None}
    if storage:
        changes["storage"] = storage
    return replace(sweep_settings, tracking=target, **changes)


@dataclass(frozen=True)
class Confirmation:
    """One ``confirm`` invocation, its inputs checked (see :mod:`orchestrator.commands.confirm`)."""

    tracking: Tracking
    sweep: SweepRef
    sweep_settings: SweepSettings
    chosen: Sequence[Candidate]
    seeds: Sequence[int] | None
    count: int
    metric: str
    mode: str
    storage: str | None
    resources: dict[str, Any]
    n_boot: int = 1000
    include_sweep_trial: bool = False
    register: tuple[str, str] | None = None  # (model name, alias) for --register

    def _parent(self) -> SweepRun:
        parent = self.tracking.start_sweep(
            f"confirm-{self.sweep.name}",
            searcher="confirm",
            params={
                "sweep": self.sweep.name,
                "metric": self.metric,
                "mode": self.mode,
                "workers_per_trial": self.resources["workers_per_trial"],
                "gpus_per_trial": self.resources["gpus_per_trial"],
            },
            tags={CONFIRM_TAG: self.sweep.run_id},
            space_text=None,
        )
        seeds = ",".join(map(str, self.seeds)) if self.seeds is not None else f"{self.count} new"
        parent.tag("supcon.top", str(len(self.chosen)))
        parent.tag("supcon.seeds", seeds)
        parent.tag("supcon.include_sweep_trial", str(self.include_sweep_trial).lower())
        return parent

    def run(self, scratch: Path) -> dict[str, str]:
        """Rerun what is missing, summarise, log; returns trial id -> error of what failed.
        The parent run ends FINISHED, FAILED when something failed, KILLED when interrupted."""
        parent = self._parent()
        try:
            failures = self._work(parent, scratch)
        except BaseException:
            parent.finish("KILLED")
            raise
        parent.tag("supcon.failures", str(len(failures)))
        parent.finish("FAILED" if failures else "FINISHED")
        return failures

    def _work(self, parent: SweepRun, scratch: Path) -> dict[str, str]:
        settings = confirm_settings(
            self.sweep_settings, parent.target, self.storage, self.resources
        )
        tag_originals(self.tracking, self.chosen)
        failures = evaluate_rows(self.tracking, [cand.row for cand in self.chosen])
        jobs = plan_jobs(self.chosen, self.seeds, self.count)
        done = finished_jobs(self.tracking, parent.run_id)
        todo = [j for j in jobs if j.trial_id not in done]
        print(
            f"confirm: {len(self.chosen)} configuration(s), {len(jobs)} rerun(s): "
            f"{len(jobs) - len(todo)} already finished, {len(todo)} to run",
            file=sys.stderr,
        )
        failures |= run_jobs(settings, self.sweep_settings, self.sweep, todo)
        done = finished_jobs(self.tracking, parent.run_id)
        self._report(parent, jobs, done, scratch)
        return failures

    def _configs(
        self, jobs: Sequence[ConfirmJob], done: dict[str, dict[str, Any]]
    ) -> list[ConfigRuns]:
        """Each candidate's runs that have every evaluation set: its finished reruns, and its
        sweep trial (read again, now scored), shown apart unless ``include_sweep_trial``."""
        trials = self.tracking.finished_trials(self.sweep.run_id)
        originals = {r["run_id"]: r for r in trials}
        configs = []
        for cand in self.chosen:
            original = _seed_run(originals.get(cand.row["run_id"], cand.row))
            reruns = [done[j.trial_id] for j in jobs if j.candidate is cand and j.trial_id in done]
            runs = [run for run in map(_seed_run, reruns) if run is not None]
            if self.include_sweep_trial and original is not None:
                runs, original = [original, *runs], None
            if runs or original is not None:
                configs.append(
                    ConfigRuns(cand.config_id, cand.rank, cand.row["params"], tuple(runs), original)
                )
        return configs

    def _report(
        self,
        parent: SweepRun,
        jobs: Sequence[ConfirmJob],
        done: dict[str, dict[str, Any]],
        scratch: Path,
    ) -> None:
        """Summarise every configuration's scored runs; log the summary on the parent run and
        print its table."""
        configs = self._configs(jobs, done)
        if not configs:
            print("confirm: no configuration has a run scored on every set", file=sys.stderr)
            return
        sets = _eval_sets(self.chosen[0])
        read = _score_reader(self.tracking, scratch / "scores")
        summary = summarise(configs, sets, read, self.metric, self.mode, n_boot=self.n_boot)
        files = [scratch / "confirm.md", scratch / "confirm.json"]
        files[0].write_text(markdown(summary, self.sweep.name), encoding="utf-8")
        files[1].write_text(to_json(summary, self.sweep.name), encoding="utf-8")
        files.append(plot(summary, list(sets), scratch / "confirm.png"))
        self.tracking.log_summary(parent.run_id, parent_metrics(summary), files)
        print(f"\nconfirmation of sweep {self.sweep.name} (MLflow run {parent.run_id}):")
        print(format_table(*table_rows(summary)))
        if self.register is not None:
            self._register(summary)

    def _register(self, summary: Summary) -> None:
        """``--register``: the confirmed-best configuration's median seed run's model."""
        from orchestrator.tracking.registry import register

        best = summary.best
        runs = sorted(best.runs, key=lambda r: r.metrics.get(self.metric, math.inf))
        chosen = runs[(len(runs) - 1) // 2]  # the lower median: a representative seed
        run = self.tracking.reader.get_run(chosen.run_id)
        row = {"run_id": chosen.run_id, "trial_id": run.data.tags.get(TRIAL_TAG, chosen.run_id)}
        row["tags"] = dict(run.data.tags)
        pooled = summary.intervals.get(best.config_id, {}).get(POOLED)
        tags = {
            "supcon.sweep": self.sweep.name,
            "supcon.trial_id": row["trial_id"],
            "supcon.config_id": best.config_id,
            "supcon.selected_by": f"confirm: mean {self.metric} over seeds ({self.mode})",
            "supcon.seeds": str(len(best.runs)),
            "supcon.seed": str(chosen.seed),
        }
        if pooled is not None:
            tags["supcon.pooled_eer_mean"] = repr(pooled.mean)
            tags["supcon.pooled_eer_interval"] = f"[{pooled.low!r}, {pooled.high!r}]"
        name, alias = self.register
        done = register(self.tracking.uri, row, name, alias, tags)
        what = "registered" if done.created else "already registered (nothing created):"
        print(
            f"{what} configuration {best.config_id} (seed {chosen.seed}, the median of "
            f"{len(best.runs)}) as {name} version {done.version}, alias {alias}: {done.uri}"
        )


def _eval_sets(cand: Candidate) -> dict[str, list[Utterance]]:
    """The evaluation sets of the candidates' config: name -> utterances in protocol order (the
    files were checked before the reruns started)."""
    cfg = config_from_params(cand.row["params"])
    return {
        name: read_corpus(ds, check_files=False).utterances for name, ds in cfg.data.eval.items()
    }


def _score_reader(tracking: Tracking, folder: Path) -> ScoreReader:
    """Reads a run's score file of a set from MLflow, through ``folder`` (the file is deleted
    once read: 4 sets of ~30 MB per run at the real scale)."""

    def read(run_id: str, set_name: str) -> dict[str, float]:
        path = tracking.download_scores(run_id, set_name, folder / run_id)
        try:
            return read_scores(path)
        finally:
            path.unlink(missing_ok=True)

    return read
