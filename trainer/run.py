"""One trial: stage 1, stage 2 and evaluation, in one process or as one rank of many."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer import checkpoint
from trainer import distributed as dist
from trainer.config import ConfigError, TrainerConfig, to_yaml
from trainer.data.corpora import CorpusSplit, read_corpus
from trainer.embed import embed
from trainer.metrics import SetResult, class_scores, evaluate, pooled_all, pooled_mean, write_scores
from trainer.model import SupConModel
from trainer.plots import curves_plot, det_plot
from trainer.reporting import JsonlReporter, Reporter
from trainer.runtime import Runtime, setup
from trainer.stage1 import Stage1
from trainer.stage2 import Stage2Result, freeze, train_classifier

log = logging.getLogger(__name__)


@dataclass
class TrialData:
    train: CorpusSplit
    dev: CorpusSplit
    eval: dict[str, CorpusSplit]


def load_data(cfg: TrainerConfig) -> TrialData:
    """Read every split once (missing files and bad protocols fail here, before any training)."""
    return TrialData(
        train=read_corpus(cfg.data.train),
        dev=read_corpus(cfg.data.dev),
        eval={name: read_corpus(ds) for name, ds in cfg.data.eval.items()},
    )


def _check_resumable(folder: Path, cfg: TrainerConfig) -> None:
    saved = torch.load(folder / checkpoint.STATE, map_location="cpu", weights_only=False)["config"]
    ours = cfg.model_dump(mode="json")
    differ = sorted(k for k in ours if k != "runtime" and saved.get(k) != ours[k])
    if differ:
        raise ConfigError(
            f"{folder} was written with a different config (sections {differ}); use another "
            "--out or the same config to resume"
        )


class Trial:
    def __init__(self, cfg: TrainerConfig, out_dir: Path, reporter: Reporter | None = None) -> None:
        self.started = time.monotonic()
        dist.init_from_env()
        self.cfg, self.out = cfg, out_dir
        self.rt: Runtime = setup(cfg.runtime, cfg.seed)
        if dist.is_main():
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        dist.barrier()
        self.reporter = reporter or JsonlReporter(out_dir, main=dist.is_main())
        self.data = load_data(cfg)
        self.model = SupConModel(cfg.model).to(self.rt.device)

    def _embed(self, split: CorpusSplit, desc: str) -> torch.Tensor:
        c = self.cfg
        return embed(
            self.model,
            split.utterances,
            c.data.eval_crop,
            device=self.rt.device,
            precision=self.rt.autocast(),
            batch_size=c.data.eval_batch_size,
            num_workers=c.data.num_workers,
            seed=c.seed,
            desc=desc,
            progress=self.rt.show_progress,
        )

    def run(self, resume: Path | None = None, resume_local: bool = True) -> dict[str, float]:
        """``resume`` names a checkpoint to continue from; without one, ``resume_local`` picks up
        the output folder's own last checkpoint (an orchestrator that keeps checkpoints in its
        own storage turns that off)."""
        stage1 = Stage1(self.cfg, self.model, self.data, self.rt, self.out, self.reporter)
        if resume is None and resume_local:
            resume = self.out / "checkpoints" / "last"
        if checkpoint.exists(resume):
            _check_resumable(resume, self.cfg)
            stage1.resume(resume)
            log.info("resumed from %s at epoch %d", resume, stage1.progress.epoch)
        self.model.load_state_dict(stage1.run())
        freeze(self.model)
        metrics = self._stage1_summary(stage1)
        stage2 = self._stage2()
        metrics |= {
            "classifier/dev/eer": stage2.dev_eer,
            "classifier/best_epoch": float(stage2.best_epoch),
        }
        metrics |= self._evaluate(stage2.classifier)
        first_step = stage1.first_step_at or time.monotonic()
        metrics |= {
            "time/setup_s": first_step - self.started,
            "time/trial_s": time.monotonic() - self.started,
        }
        artifacts = self._write(metrics, stage1, stage2)
        self.reporter.final(metrics, artifacts)
        return metrics

    def _stage1_summary(self, stage1: Stage1) -> dict[str, float]:
        p = stage1.progress
        best = next((h for h in p.history if h["epoch"] == p.best_epoch), p.history[-1])
        return {
            "encoder/dev/eer": best["encoder/dev/eer"],
            "encoder/dev/loss": best["encoder/dev/loss"],
            "encoder/best_epoch": float(p.best_epoch),
            "encoder/epochs": float(p.epoch),
        }

    def _stage2(self) -> Stage2Result:
        d = self.data
        train_z = self._embed(d.train, "embed train")
        dev_z = self._embed(d.dev, "embed dev")
        self.dev_z = dev_z
        target = lambda split: torch.tensor([u.target for u in split.utterances])  # noqa: E731
        return train_classifier(
            train_z, target(d.train), dev_z, target(d.dev), self.cfg.stage2, seed=self.cfg.seed
        )

    def _evaluate(self, classifier: torch.nn.Linear) -> dict[str, float]:
        self.scores: dict[str, np.ndarray] = {}
        with torch.no_grad():
            self.scores["dev"] = classifier(self.dev_z).squeeze(1).numpy()
            for name, split in self.data.eval.items():
                z = self._embed(split, f"eval {name}")
                self.scores[name] = classifier(z).squeeze(1).numpy()
        self.results: dict[str, SetResult] = {
            name: evaluate(split.utterances, self.scores[name], name)
            for name, split in self.data.eval.items()
        }
        metrics: dict[str, float] = {}
        for name, result in self.results.items():
            metrics |= result.metrics(f"eval/{name}")
        if self.results:
            metrics["eval/pooled_mean/eer"] = pooled_mean(list(self.results.values()))
            metrics["eval/pooled_all/eer"] = pooled_all(
                [class_scores(s.utterances, self.scores[n]) for n, s in self.data.eval.items()]
            )
        return metrics

    def _write(self, metrics: dict[str, float], stage1: Stage1, stage2: Stage2Result) -> list[Path]:
        if not dist.is_main():
            return []
        out = self.out
        scores_dir = out / "scores"
        scores_dir.mkdir(exist_ok=True)
        splits = {"dev": self.data.dev, **self.data.eval}
        files = [
            write_scores(scores_dir / f"{name}.tsv", split.utterances, self.scores[name])
            for name, split in splits.items()
        ]
        torch.save(stage2.classifier.state_dict(), out / "classifier.pt")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (out / "stage2_history.json").write_text(json.dumps(stage2.history) + "\n")
        plots = [
            curves_plot(
                stage1.progress.history,
                ["encoder/train/loss", "encoder/dev/loss", "encoder/dev/eer"],
                out / "stage1_curves.png",
            )
        ]
        if self.results:
            sets = {n: class_scores(s.utterances, self.scores[n]) for n, s in splits.items()}
            plots.append(det_plot(sets, out / "det.png"))
        return [out / "config.yaml", out / "metrics.json", *files, *plots]


def run_trial(
    cfg: TrainerConfig,
    out_dir: Path,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    resume_local: bool = True,
) -> dict[str, float]:
    """Run stage 1, stage 2 and evaluation; returns the final metrics (same on every rank)."""
    return Trial(cfg, out_dir, reporter).run(resume, resume_local)
