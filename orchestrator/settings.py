"""The orchestrator's typed state: where a sweep tracks to, the sweep's settings, one trial's spec.

All three are frozen. A value that learns something (the sweep's MLflow parent run, once it
exists) becomes a new value through ``dataclasses.replace``, never a dict that grows keys on the
way. They cross the Ray boundary as themselves (Ray pickles them into the trial drivers and the
Train workers). ``SweepSettings`` is also saved as JSON beside the Tune experiment, which is what
``supcon-sweep resume`` reads back.

Nothing here imports Ray, MLflow or torch: the CLI builds these before starting anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from orchestrator.objective import MONITOR_KEYS, Objective
from orchestrator.storage import read_text, write_text
from trainer.config import TrainerConfig, apply_overrides, upgrade_stored, validate_tree

DEFAULT_EXPERIMENT = "supcon-sweep"
SETTINGS_FILE = "sweep_settings.json"
# How long a trial's ranks wait for Tune's decision at an ASHA rung before going on anyway.
DECISION_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TrackingTarget:
    """Where a sweep's trials log: the MLflow store and experiment, and the sweep's parent run.

    Before the parent run exists only ``uri`` and ``experiment`` are set; the parent-run step
    (:meth:`orchestrator.tracking.Tracking.start_sweep`) makes the full target. ``searcher`` is
    the label logged on the parent run, which ``resume`` logs again unchanged.
    """

    uri: str
    experiment: str
    experiment_id: str = ""
    parent_run_id: str = ""
    searcher: str = ""


@dataclass(frozen=True)
class TrialResources:
    """What one trial's Ray Train run holds: ``workers`` DDP ranks of ``cpus_per_worker`` CPUs
    each, and ``gpus`` GPUs in all (0: gloo on CPUs; below 1, a one-rank trial's share of one
    GPU). Recorded on the trial's MLflow run, so a
    later evaluation of the trial runs on the same resources."""

    workers: int
    gpus: float
    cpus_per_worker: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialResources:
        return cls(**json.loads(text))


OPTUNA_STORAGE_VAR = "SUPCON_OPTUNA_STORAGE"  # the default of sweep --optuna-storage


@dataclass(frozen=True)
class ForkSource:
    """A published prefix checkpoint (:mod:`trainer.prefix`): the state after epochs
    ``0 .. epoch - 1`` of a run whose queue had not acted yet, at ``uri``. ``trial_id`` and
    ``run_id`` name the trial (and its MLflow run) that trained it, ``seconds`` the wall time
    that prefix took (its own forks' included), ``history`` its per-epoch metrics."""

    uri: str
    epoch: int
    trial_id: str
    run_id: str
    seconds: float
    history: tuple[dict[str, float], ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ForkSource:
        raw = json.loads(text)
        raw["history"] = tuple(raw.get("history") or ())
        return cls(**raw)


@dataclass(frozen=True)
class PrefixPlan:
    """A sweep trial's part in sharing prefixes (:mod:`orchestrator.train.prefixes`): its
    prefix id, the checkpoint it starts from (``fork``; None: from scratch), the epochs at which
    it publishes its own state for others (``publish``: after epoch ``e - 1``), where published
    checkpoints go (``store``) and the sweep's ledger actor that keeps account."""

    prefix: str
    fork: ForkSource | None
    publish: tuple[int, ...]
    store: str
    ledger: Any = None


@dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep's trial drivers need, saved beside the Tune experiment for ``resume``.

    ``tracking`` names the MLflow store and experiment; once the sweep's parent run exists it
    is that run's full :class:`TrackingTarget` (``replace(settings, tracking=target)``).
    ``searcher``: the searcher's name (:mod:`orchestrator.tune.searcher`).
    ``base`` is the trainer config every trial starts from, the space's fixed keys applied.
    ``eval_top_k``: how many of the best finished trials are scored on the evaluation sets
    once the search ends (``None``: every finished trial; 0: none).
    """

    name: str
    base: TrainerConfig
    space_path: str
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    scheduler: str
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_trial: float
    max_failures: int
    seed: int
    out_dir: str
    tracking: TrackingTarget
    searcher: str = ""  # "": the space's default (grid for a grid space, else tpe)
    storage: str = ""  # Tune results and Train checkpoints: a shared path or URI; "" = out_dir
    placement: str = "PACK"
    eval_top_k: int | None = 3
    verbose: bool = False  # Ray Train's per-report log lines, Tune's per-epoch results
    # The epochs at which ASHA can stop a trial (its rungs): there, every rank waits for Tune's
    # decision before the next epoch (orchestrator.train.decisions). () without ASHA.
    decision_epochs: tuple[int, ...] = ()
    # How long a trial's workers may wait for their resources before it fails (see
    # orchestrator.train.trainer.start_attempts): on an autoscaling cluster, nodes take minutes.
    start_timeout_s: float = 600.0
    # The Optuna study's RDB storage (optuna-dashboard reads it live); "" = in memory only
    optuna_storage: str = ""
    # Trials that share a training prefix start from one another (orchestrator.train.prefixes)
    share_prefix: bool = True

    @property
    def study_name(self) -> str:
        """The sweep's Optuna study: its name and its MLflow parent run (a sweep started again
        under the same name gets a study of its own, never the old one's trials)."""
        parent = self.tracking.parent_run_id or ""
        return f"{self.name}-{parent[:8]}" if parent else self.name

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision_epochs", tuple(self.decision_epochs))

    @classmethod
    def one_trial(
        cls,
        name: str,
        base: TrainerConfig,
        resources: TrialResources,
        *,
        out_dir: str,
        tracking: TrackingTarget,
        start_timeout_s: float = 600.0,
    ) -> SweepSettings:
        """The settings of ``trial --ray``: a sweep of the one trial ``name`` of ``base``, with
        no search, no scheduler, no restarts, selecting on the dev EER."""
        return cls(
            name=name,
            base=base,
            space_path="",
            metric="encoder/dev/eer",
            mode="min",
            num_samples=1,
            max_concurrent=1,
            scheduler="none",
            workers_per_trial=resources.workers,
            cpus_per_worker=resources.cpus_per_worker,
            gpus_per_trial=resources.gpus,
            max_failures=0,
            seed=base.seed,
            out_dir=out_dir,
            tracking=tracking,
            start_timeout_s=start_timeout_s,
        )

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri

    @property
    def experiment(self) -> str:
        return self.tracking.experiment

    @property
    def target(self) -> TrackingTarget:
        """The full tracking target; only settings that went through the parent-run step have
        one."""
        if not self.tracking.parent_run_id:
            raise RuntimeError(f"sweep {self.name}: its MLflow parent run is not started yet")
        return self.tracking

    @property
    def storage_root(self) -> str:
        return (self.storage or self.out_dir).rstrip("/")

    @property
    def tune_dir(self) -> str:
        return f"{self.storage_root}/tune"

    @property
    def train_dir(self) -> str:
        return f"{self.storage_root}/train"

    @property
    def models_dir(self) -> str:
        """Each finished trial's final model, ``MODELS_DIR/TRIAL``, reachable from every node."""
        return f"{self.storage_root}/models"

    @property
    def objective(self) -> Objective:
        return Objective(self.metric, self.mode, MONITOR_KEYS[self.base.stage1.monitor])

    @property
    def resources(self) -> TrialResources:
        return TrialResources(self.workers_per_trial, self.gpus_per_trial, self.cpus_per_worker)

    @property
    def prefixes_dir(self) -> str:
        """Published prefix checkpoints, ``PREFIXES_DIR/PREFIX/epoch-E.TRIAL``, kept until the
        last trial that starts from one has started (reachable from every node)."""
        return f"{self.storage_root}/prefixes"

    @property
    def ledger_name(self) -> str:
        """The named actor that keeps the sweep's prefixes (one per sweep and parent run)."""
        return f"supcon-prefixes-{self.study_name}"

    @property
    def trials_dir(self) -> str:
        """Each trial's local outputs (config, scores, plots), under ``out_dir``."""
        return str(Path(self.out_dir) / "trials")

    def to_json(self) -> str:
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        raw["base"] = self.base.model_dump(mode="json")
        raw["tracking"] = asdict(self.tracking)
        return json.dumps(raw, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SweepSettings:
        """The settings :meth:`to_json` wrote; ``TypeError``, ``ValueError`` or ``ConfigError``
        (a ``ValueError``) for anything else."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        raw["base"] = validate_tree(upgrade_stored(raw["base"]))
        # Settings saved before 2026-12-07 held the store twice: as tracking_uri and experiment,
        # and in the tracking target (null before the parent run existed).
        uri, experiment = raw.pop("tracking_uri", None), raw.pop("experiment", None)
        raw["tracking"] = TrackingTarget(
            **(raw.get("tracking") or {"uri": uri, "experiment": experiment})
        )
        return cls(**raw)

    def save(self) -> None:
        """Write ``TUNE_DIR/NAME/sweep_settings.json`` (a path or a URI such as ``s3://``)."""
        write_text(f"{self.tune_dir}/{self.name}/{SETTINGS_FILE}", self.to_json())

    @classmethod
    def load(cls, folder: str) -> SweepSettings:
        """The settings saved in a sweep's Tune folder; ``FileNotFoundError`` names the file."""
        return cls.from_json(read_text(f"{folder.rstrip('/')}/{SETTINGS_FILE}"))


@dataclass(frozen=True)
class TrialSpec:
    """What every worker of one trial's Ray Train run is given.

    The trial's config is ``base`` with ``params`` (the searcher's point, dotted config paths)
    applied; its local outputs go to ``trials_dir/trial_id`` and its final model to
    ``models_dir/trial_id``. ``driver_started`` is the ``time.time()`` at which the trial's
    driver built the run (the launch latency starts there). ``with_eval``: whether the trial
    itself scores the evaluation sets (a sweep leaves that to its top trials, afterwards).
    ``objective``: what the sweep selects on; its value travels in the trial's reports.
    ``corpora_checked``: the sweep's driver checked every corpus's files, so trials do not.
    ``run_tags``: set on the trial's MLflow run when rank 0 opens it (a confirmation run's
    configuration id and seed). ``verbose``: keep Ray Train's per-rank "Reporting training
    result" log lines (``--verbose``). ``decisions`` (a :class:`~orchestrator.train.decisions.
    Decisions` actor) and ``decision_epochs``: after those epochs every rank waits, at most
    ``decision_timeout_s``, for Tune's decision about the trial. ``prefix``: where it starts
    from and what it publishes when the sweep shares prefixes (None: it shares nothing).
    """

    base: TrainerConfig
    params: Mapping[str, Any]
    trial_id: str
    trials_dir: str
    models_dir: str
    tracking: TrackingTarget
    resources: TrialResources
    driver_started: float
    with_eval: bool = True
    objective: Objective | None = None
    corpora_checked: bool = False
    run_tags: Mapping[str, str] = field(default_factory=dict)
    verbose: bool = False
    decisions: Any = None
    decision_epochs: tuple[int, ...] = ()
    decision_timeout_s: float = DECISION_TIMEOUT_S
    prefix: PrefixPlan | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.trials_dir) / self.trial_id

    @property
    def model_uri(self) -> str:
        return f"{self.models_dir}/{self.trial_id}"

    def config(self) -> TrainerConfig:
        return apply_overrides(self.base, self.params)
