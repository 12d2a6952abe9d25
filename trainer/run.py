"""One trial: stage 1, stage 2 and evaluation, in one process or as one rank of many.

:func:`prepare_trial` does the side effects (process group, seeding, output folder, reading the
corpora, building the model); :class:`Trial` holds what it built and runs the stages, each
returning what it computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from trainer import checkpoint, distributed
from trainer.config import ConfigError, TrainerConfig, to_yaml, upgrade_stored
from trainer.data.corpora import CorpusSplit, read_corpus
from trainer.evaluate import (
    CLASSIFIER,
    MODEL_DIR,
    Decision,
    FinalModel,
    SetScores,
    embed_split,
    pooled_metrics,
)
from trainer.metrics import class_scores, compute_eer
from trainer.model import SupConModel
from trainer.plots import curves_plot, det_plot
from trainer.reporting import JsonlReporter, Reporter
from trainer.runtime import Runtime, setup
from trainer.scores import write_scores
from trainer.stage1 import Progress, Stage1
from trainer.stage2 import Stage2Result, freeze, train_classifier


@dataclass(frozen=True)
class TrialData:
    train: CorpusSplit
    dev: CorpusSplit
    eval: dict[str, CorpusSplit]


def load_data(cfg: TrainerConfig, with_eval: bool = True, check_files: bool = True) -> TrialData:
    """Read every split once (missing files and bad protocols fail here, before any training);
    the evaluation sets only ``with_eval``. ``check_files=False``: the files were checked
    before the trial (by a sweep's driver), so their existence is not checked again."""
    sets = cfg.data.eval.items() if with_eval else ()
    return TrialData(
        train=read_corpus(cfg.data.train, check_files=check_files),
        dev=read_corpus(cfg.data.dev, check_files=check_files),
        eval={name: read_corpus(ds, check_files=check_files, scoring=True) for name, ds in sets},
    )


def check_world_size(cfg: TrainerConfig) -> None:
    """ConfigError when ``runtime.world_size`` is set and this run has another number of ranks:
    the global batch and the epoch's length would silently differ from the recipe's."""
    expected, now = cfg.runtime.world_size, distributed.world_size()
    if expected is not None and expected != now:
        raise ConfigError(
            f"runtime.world_size is {expected} but this run has {now} rank(s): the global batch "
            f"would be {now * cfg.data.sampler.batch_size} instead of "
            f"{expected * cfg.data.sampler.batch_size}. Run it with torchrun --nproc_per_node "
            f"{expected} or `supcon-sweep trial --ray --workers-per-trial {expected}`, or set "
            "runtime.world_size=null to accept the change"
        )


def _check_resumable(folder: Path, cfg: TrainerConfig) -> None:
    saved = upgrade_stored(checkpoint.saved_config(folder))
    ours = cfg.model_dump(mode="json")
    differ = sorted(k for k in ours if k != "runtime" and saved.get(k) != ours[k])
    if differ:
        raise ConfigError(
            f"{folder} was written with a different config (sections {differ}); use another "
            "--out or the same config to resume"
        )


def _stage1_summary(progress: Progress) -> dict[str, float]:
    history = progress.history
    best = next((h for h in history if h["epoch"] == progress.best_epoch), history[-1])
    return {
        "encoder/dev/eer": best["encoder/dev/eer"],
        "encoder/dev/loss": best["encoder/dev/loss"],
        "encoder/best_epoch": float(progress.best_epoch),
        "encoder/epochs": float(progress.epoch),
    }


def _targets(split: CorpusSplit) -> torch.Tensor:
    return torch.tensor([u.target for u in split.utterances])  # (N,), 1 = bona fide


@dataclass(frozen=True, eq=False)
class Trial:
    """What one trial needs, built by :func:`prepare_trial`; :meth:`run` runs the stages."""

    cfg: TrainerConfig
    out: Path
    rt: Runtime
    data: TrialData
    model: SupConModel
    reporter: Reporter
    started: float  # time.monotonic() when the trial began

    def _resume_from(self, resume: Path | None, resume_local: bool) -> Path | None:
        if resume is None and resume_local:
            resume = self.out / "checkpoints" / "last"
        if not checkpoint.exists(resume):
            return None
        _check_resumable(resume, self.cfg)
        return resume

    def run(
        self, resume: Path | None = None, resume_local: bool = True, fork: Path | None = None
    ) -> dict[str, float] | None:
        """``resume`` names a checkpoint to continue from; without one, ``resume_local`` picks up
        the output folder's own last checkpoint (an orchestrator that keeps checkpoints in its
        own storage turns that off). ``fork``, used only when there is nothing to resume: the
        checkpoint of another run at the end of the prefix the two share
        (:mod:`trainer.prefix`). Returns the final metrics (the same on every rank), or None
        when the reporter stopped the trial in stage 1 (nothing after that epoch runs)."""
        stage1 = Stage1(
            self.cfg,
            self.model,
            self.rt,
            train=self.data.train,
            dev=self.data.dev,
            out_dir=self.out,
            reporter=self.reporter,
        )
        resume = self._resume_from(resume, resume_local)
        if resume is None and checkpoint.exists(fork):
            encoder = stage1.run(fork, fork=True)
        else:
            encoder = stage1.run(resume)
        if encoder.stopped:
            return None
        self.model.load_state_dict(encoder.best_state)
        freeze(self.model)
        c, d, rt = self.cfg, self.data, self.rt
        train_z = embed_split(self.model, d.train, c, rt, "embed train")  # (N_train, D)
        dev_z = embed_split(self.model, d.dev, c, rt, "embed dev")  # (N_dev, D)
        stage2 = self._stage2(train_z, dev_z)
        final = FinalModel(c, self.model, stage2.classifier)
        evaluated = [final.score_set(name, split, rt) for name, split in d.eval.items()]
        metrics = _stage1_summary(encoder.progress)
        metrics |= {
            "classifier/dev/eer": stage2.dev_eer,
            "classifier/best_epoch": float(stage2.best_epoch),
        }
        for scored in evaluated:
            metrics |= scored.metrics()
        metrics |= pooled_metrics(evaluated)
        first_step = encoder.first_step_at or time.monotonic()
        metrics |= {
            "time/setup_s": first_step - self.started,
            # a resumed trial counts its time before the interruption too
            "time/trial_s": time.monotonic() - self.started + encoder.earlier_s,
        }
        dev_scores = final.scores(dev_z)  # (N_dev,)
        dev_eer, threshold = compute_eer(*class_scores(d.dev.utterances, dev_scores))
        final = replace(final, decision=Decision(threshold, dev_eer))
        artifacts = self._write(metrics, encoder.progress, stage2, final, dev_scores, evaluated)
        self.reporter.final(metrics, artifacts, history=encoder.progress.history)
        return metrics

    def _stage2(self, train_z: torch.Tensor, dev_z: torch.Tensor) -> Stage2Result:
        d, c = self.data, self.cfg
        return train_classifier(
            train_z, _targets(d.train), dev_z, _targets(d.dev), c.stage2, seed=c.seed
        )

    def _write(
        self,
        metrics: dict[str, float],
        progress: Progress,
        stage2: Stage2Result,
        final: FinalModel,
        dev_scores: np.ndarray,
        evaluated: list[SetScores],
    ) -> list[Path]:
        """Rank 0 writes the final model (``model/``), the score files, ``metrics.json`` and the
        plots; returns the files to log as artifacts (the classifier, not the encoder: that
        stays in the model folder)."""
        if not distributed.is_main():
            return []
        out = self.out
        model_dir = final.save(out / MODEL_DIR)
        scores_dir = out / "scores"
        scores_dir.mkdir(exist_ok=True)
        files = [write_scores(scores_dir / "dev.tsv", self.data.dev.utterances, dev_scores)]
        files += [scored.write(scores_dir) for scored in evaluated]
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (out / "stage2_history.json").write_text(json.dumps(stage2.history) + "\n")
        plots = [
            curves_plot(
                progress.history,
                ["encoder/train/loss", "encoder/dev/loss", "encoder/dev/eer"],
                out / "stage1_curves.png",
            )
        ]
        if evaluated:
            sets = {"dev": class_scores(self.data.dev.utterances, dev_scores)}
            sets |= {scored.name: scored.by_class() for scored in evaluated}
            plots.append(det_plot(sets, out / "det.png"))
        return [
            out / "config.yaml",
            out / "metrics.json",
            model_dir / CLASSIFIER,
            *files,
            *plots,
        ]


def prepare_trial(
    cfg: TrainerConfig,
    out_dir: Path,
    reporter: Reporter | None = None,
    with_eval: bool = True,
    check_files: bool = True,
) -> Trial:
    """Everything before training, in order: join the launcher's process group, resolve the
    device and seed every RNG, create ``out_dir`` and write ``config.yaml`` (rank 0), read every
    corpus (bad corpora fail here; the evaluation sets only ``with_eval``) and build the model.
    ``reporter`` defaults to a :class:`~trainer.reporting.JsonlReporter` on ``out_dir``."""
    started = time.monotonic()
    distributed.init_from_env()
    check_world_size(cfg)
    rt = setup(cfg.runtime, cfg.seed)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    distributed.barrier()
    reporter = reporter or JsonlReporter(out_dir, main=distributed.is_main())
    data = load_data(cfg, with_eval, check_files)
    model = SupConModel(cfg.model).to(rt.device)
    return Trial(cfg, out_dir, rt, data, model, reporter, started)


def run_trial(
    cfg: TrainerConfig,
    out_dir: Path,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    resume_local: bool = True,
    with_eval: bool = True,
    check_files: bool = True,
    fork: Path | None = None,
) -> dict[str, float] | None:
    """Run stage 1, stage 2 and the dev evaluation, then (``with_eval``) score every evaluation
    set; returns the final metrics (same on every rank), None when the reporter stopped it.
    The final model is saved in ``out_dir/model`` either way, so :mod:`trainer.evaluate` can
    score the sets later.
    ``check_files=False`` skips the audio files' existence check (already made by a sweep's
    driver). ``fork``: see :meth:`Trial.run`."""
    trial = prepare_trial(cfg, out_dir, reporter, with_eval, check_files)
    return trial.run(resume, resume_local, fork)
