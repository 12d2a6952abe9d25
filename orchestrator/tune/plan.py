"""``supcon-sweep sweep --dry-run``: what a sweep would run, from the checks the real sweep makes,
with nothing started.

The plan holds the trials of a grid in the order they would run (each one's values of the keys
that vary), or the searcher and the space's domains; the resources of a trial; what is compared
and ASHA's first rung; and the most stage-1 epochs the sweep can train (trials x
``stage1.epochs``: early stopping and ASHA only lower it). Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.settings import SweepSettings
from orchestrator.tune.prefix_tree import PrefixTree, build_tree, searched_candidates
from orchestrator.tune.preflight import steps_per_epoch
from orchestrator.tune.scheduling import Rungs, asha_rungs, run_order
from search_spaces import SearchSpace
from search_spaces.space import Param
from trainer.data.check import SplitReport


@dataclass(frozen=True)
class SweepPlan:
    """What :func:`plan` found; :meth:`to_json` is ``--dry-run --json``'s object."""

    settings: SweepSettings
    space: SearchSpace
    trials: list[dict[str, Any]] | None  # a grid's points in run order; None for TPE
    rungs: Rungs | None  # None: no ASHA (--scheduler none), or its rung is unknown
    rung_note: str = ""
    steps_per_epoch: int | None = None  # per rank; None without the data check
    corpora: dict[str, dict[str, int]] = field(default_factory=dict)
    tree: PrefixTree | None = None  # a grid's shared-prefix tree (None: not shared, or TPE)
    prefix_note: str = ""  # how a sampled space shares, or that sharing is off

    @property
    def n_trials(self) -> int:
        return len(self.trials) if self.trials is not None else self.settings.num_samples

    @property
    def max_trial_epochs(self) -> int:
        return self.n_trials * self.settings.base.stage1.epochs

    def varying(self) -> list[str]:
        """The keys whose value differs between a grid's trials."""
        trials = self.trials or []
        keys = list(trials[0]) if trials else []
        return [k for k in keys if len({repr(t[k]) for t in trials}) > 1]

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {
            "searcher": "grid" if self.trials is not None else "optuna-tpe",
            "space": s.space_path,
            "num_trials": self.n_trials,
            "fixed": self.space.fixed(),
            "metric": s.metric,
            "mode": s.mode,
            "read_at": f"the best epoch of {s.objective.monitor}"
            if s.objective.per_epoch
            else "the trial's end",
            "scheduler": s.scheduler,
            "asha_first_rung": self.rungs.grace if self.rungs and self.rungs.stops else None,
            "asha_note": self.rung_note or (self.rungs.describe() if self.rungs else ""),
            "resources": {
                "workers_per_trial": s.workers_per_trial,
                "cpus_per_worker": s.cpus_per_worker,
                "gpus_per_trial": s.gpus_per_trial,
                "backend": "nccl" if s.gpus_per_trial else "gloo",
                "placement": s.placement,
                "max_concurrent": s.max_concurrent,
                "max_failures": s.max_failures,
            },
            "stage1_epochs_per_trial": s.base.stage1.epochs,
            "stage1_trial_epochs_max": self.max_trial_epochs,
            "steps_per_epoch_per_rank": self.steps_per_epoch,
            "corpora": self.corpora or None,
            "eval_top_k": "all" if s.eval_top_k is None else s.eval_top_k,
            "share_prefix": s.share_prefix,
            "trial_epochs_saved": self.tree.trial_epochs_saved if self.tree else None,
            "tree": self.tree.to_json() if self.tree else None,
            "prefix_note": self.prefix_note or None,
        }
        if self.trials is not None:
            out["trials"] = self.trials
        else:
            out["seed"] = s.seed
            out["domains"] = {k: _domain_json(p) for k, p in self.space.params.items() if p.sampled}
        return out

    def describe(self) -> str:
        """The plan as a user reads it (``--dry-run`` without ``--json``)."""
        s, lines = self.settings, []
        if self.trials is not None:
            keys = self.varying()
            order = (
                f"in a permutation seeded by --seed {s.seed} (ASHA judges a trial against those "
                "that reached its rung first)"
                if s.scheduler == "asha" and self.rungs is not None and self.rungs.stops
                else "in the file's order"
            )
            lines.append(
                f"grid over {', '.join(keys) or '(one point)'}: {self.n_trials} trial(s), {order}"
            )
            lines += [
                f"  {i:>3}  " + "  ".join(f"{k}={t[k]}" for k in keys)
                for i, t in enumerate(self.trials, start=1)
            ]
        else:
            lines.append(f"Optuna TPE (seed {s.seed}): {self.n_trials} trial(s) over")
            lines += [f"  {k}: {_domain(p)}" for k, p in self.space.params.items() if p.sampled]
        fixed = self.space.fixed()
        if fixed:
            lines.append("fixed: " + "  ".join(f"{k}={v}" for k, v in fixed.items()))
        if self.tree is not None:
            lines += self.tree.describe(self.varying())
        elif self.prefix_note:
            lines.append(f"shared prefixes: {self.prefix_note}")
        lines += self._resources() + self._budget()
        return "\n".join(lines)

    def _resources(self) -> list[str]:
        s = self.settings
        gpus = f"{s.gpus_per_trial:g} GPU(s), NCCL" if s.gpus_per_trial else "no GPU, gloo"
        return [
            f"per trial: {s.workers_per_trial} DDP worker(s) x {s.cpus_per_worker:g} CPU, {gpus}, "
            f"{s.placement.lower()} placement; {s.max_concurrent} trial(s) at once, "
            f"{s.max_failures} restart(s) each"
        ]

    def _budget(self) -> list[str]:
        s = self.settings
        lines = [f"compared on: {s.metric} ({s.mode}), logged as sweep/objective"]
        if s.objective.differs():
            lines.append(s.objective.differs())
        if s.scheduler == "none":
            lines.append("ASHA: off (--scheduler none)")
        else:
            lines.append(
                "ASHA: " + (self.rung_note or (self.rungs.describe() if self.rungs else ""))
            )
        epochs = s.base.stage1.epochs
        bound = f"at most {self.max_trial_epochs} stage-1 trial-epochs ({self.n_trials} x {epochs})"
        if self.tree is not None and self.tree.trial_epochs_saved:
            trained = self.max_trial_epochs - self.tree.trial_epochs_saved
            bound = f"{bound}, {trained} of them trained with shared prefixes"
        if self.steps_per_epoch is not None:
            bound += (
                f", {self.steps_per_epoch} step(s) per rank per epoch: at most "
                f"{self.max_trial_epochs * self.steps_per_epoch} steps per rank in all"
            )
        lines.append(bound)
        for name, counts in self.corpora.items():
            lines.append(f"  {name}: {counts['bonafide']} bona fide, {counts['spoof']} spoof")
        if not self.corpora:
            lines.append("corpora: not checked (--no-data-check)")
        k = "every finished trial" if s.eval_top_k is None else f"the best {s.eval_top_k}"
        lines.append(f"test sets scored afterwards for {k} (by the objective)")
        return lines


def _domain_json(param: Param) -> dict[str, Any]:
    if param.kind in ("categorical", "grid"):
        return {"kind": param.kind, "choices": list(param.values)}
    out = {"kind": param.kind, "low": param.values[0], "high": param.values[1]}
    return out | ({"step": param.step} if param.kind == "int" else {})


def _domain(param: Param) -> str:
    if param.kind in ("categorical", "grid"):
        return f"{param.kind} {list(param.values)}"
    lo, hi = param.values
    step = f" step {param.step}" if param.kind == "int" and param.step != 1 else ""
    return f"{param.kind} [{lo}, {hi}]{step}"


def plan(
    settings: SweepSettings, space: SearchSpace, reports: dict[str, SplitReport] | None = None
) -> SweepPlan:
    """The plan of a sweep of ``space`` under ``settings``; ``reports``: the corpora's check
    (:func:`orchestrator.tune.preflight.check_corpora`), None when it was skipped (then ASHA's rung
    is unknown only for a ``queue.start_step`` space, which needs the epoch's length)."""
    steps = None
    if reports is not None:
        steps = steps_per_epoch(settings.base, reports["train"], settings.workers_per_trial)
    rungs, note = None, ""
    try:
        rungs = asha_rungs(space, settings.base, steps)
    except ValueError as err:
        note = f"ASHA's first rung is unknown without the data check ({err})"
    corpora = {
        name: {"bonafide": r.bonafide, "spoof": r.spoof} for name, r in (reports or {}).items()
    }
    trials = run_order(space, settings.scheduler, rungs, settings.seed) if space.is_grid else None
    tree, sharing = None, ""
    if not settings.share_prefix:
        sharing = "off (--no-share-prefix): every trial trains from scratch"
    elif trials is not None:
        tree = build_tree(trials, settings.base, settings.workers_per_trial)
        trials = tree.points
    else:
        sharing = searched_candidates(space, settings.base)[1]
    return SweepPlan(settings, space, trials, rungs, note, steps, corpora, tree, sharing)
