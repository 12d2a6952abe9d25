"""The sweep driver: Ray Tune + Optuna (or an exhaustive grid) over Ray Train trials, in MLflow.

Each Tune trial is a small function trainable (the trial's driver, holding no CPU) that launches
one ``TorchTrainer`` and forwards its per-epoch reports to Tune with ``TuneReportCallback``, so
the searcher and the ASHA scheduler see every epoch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
from ray import tune
from ray.train import FailureConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from orchestrator.ray_trial import train_worker
from orchestrator.tracking import SweepRun, close_trial, query_best
from search_spaces import SearchSpace

log = logging.getLogger(__name__)

DRIVER_RESOURCE = "TRAIN_DRIVER"
SETTINGS = "sweep_settings.json"
GRID_KEY = "grid_point"


@dataclass
class SweepSettings:
    """Everything a trial driver needs, saved beside the Tune experiment for ``resume``."""

    name: str
    base: dict[str, Any]
    space_path: str
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    scheduler: str
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_trial: int
    max_failures: int
    seed: int
    out_dir: str
    mlflow: dict[str, str]
    storage: str = ""  # Tune results and Train checkpoints: a shared path or URI; "" = out_dir
    placement: str = "PACK"

    @property
    def storage_root(self) -> str:
        return (self.storage or self.out_dir).rstrip("/")

    @property
    def tune_dir(self) -> str:
        return f"{self.storage_root}/tune"

    @property
    def train_dir(self) -> str:
        return f"{self.storage_root}/train"

    def save(self) -> None:
        write_text(f"{self.tune_dir}/{self.name}/{SETTINGS}", json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str) -> SweepSettings:
        return cls(**json.loads(read_text(f"{folder.rstrip('/')}/{SETTINGS}")))


def _fs(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem of a local path or a URI (s3://, gs://, ...), as Ray Tune reads it."""
    if "://" not in uri:
        return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())
    return pyarrow.fs.FileSystem.from_uri(uri)


def write_text(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(uri: str) -> str:
    """The text at ``uri``; FileNotFoundError names it when it does not exist."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(uri)
    with fs.open_input_stream(path) as src:
        return src.read().decode()


def torch_trainer(
    settings: dict[str, Any], trial_id: str, params: dict[str, Any], callbacks: list
) -> TorchTrainer:
    """The Ray Train run of one trial, named after it so that a rerun resumes from its storage."""
    gpus = settings["gpus_per_trial"]
    workers = settings["workers_per_trial"]
    per_worker = {"CPU": settings["cpus_per_worker"]}
    if gpus:
        per_worker["GPU"] = gpus / workers
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "base": settings["base"],
            "params": params,
            "trial_id": trial_id,
            "trials_dir": str(Path(settings["out_dir"]) / "trials"),
            "mlflow": settings["mlflow"],
            "driver_started": time.time(),
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=bool(gpus),
            resources_per_worker=per_worker,
            placement_strategy=settings["placement"],
        ),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=SweepSettings(**settings).train_dir,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=settings["max_failures"]),
        ),
    )


def _trial_driver(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """One Tune trial: its TorchTrainer, with every report forwarded to Tune."""
    params = config.get(GRID_KEY, config)
    trial_id = tune.get_context().get_trial_id()
    torch_trainer(settings, trial_id, params, [TuneReportCallback()]).fit()


def run_single_trial(settings: SweepSettings) -> dict[str, Any]:
    """``supcon-sweep trial --ray``: one trial through Ray Train, the code path of a sweep trial,
    tracked as a one-trial sweep in MLflow. Returns the final metrics."""
    parent = SweepRun.start(
        settings.mlflow["uri"],
        settings.mlflow["experiment"],
        settings.name,
        params={"searcher": "single trial", "workers_per_trial": settings.workers_per_trial},
        tags={},
        space_text=None,
    )
    settings.mlflow.update(parent_run_id=parent.run_id, experiment_id=parent.experiment_id)
    try:
        torch_trainer(asdict(settings), settings.name, {}, []).fit()
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.finish("FINISHED")
    # Train's Result keeps the last checkpointed report; the final metrics live in MLflow.
    rows = query_best(
        settings.mlflow["uri"],
        settings.mlflow["experiment"],
        metric=settings.metric,
        parent_run_id=parent.run_id,
        top=1,
    )
    return rows[0]["metrics"] if rows else {}


class CloseTrialRuns(tune.Callback):
    """Marks a trial's MLflow run when Tune ends the trial from outside its workers: KILLED for a
    trial stopped early by ASHA (its workers are torn down before they can log), FAILED for an
    errored one. Runs the workers finished themselves are not touched."""

    def __init__(self, mlflow_settings: dict[str, str]) -> None:
        self.m = mlflow_settings

    def _close(self, trial, status: str, reason: str) -> None:
        close_trial(
            self.m["uri"],
            self.m["experiment_id"],
            self.m["parent_run_id"],
            trial.trial_id,
            status,
            reason,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "KILLED", "stopped early by the scheduler")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "FAILED", "trial errored")


def trainable(settings: SweepSettings):
    """The Tune trainable: the trial driver with no CPU of its own and one driver slot."""
    fn = tune.with_parameters(_trial_driver, settings=asdict(settings))
    return tune.with_resources(fn, {"CPU": 0, DRIVER_RESOURCE: 1})


def _tune_config(space: SearchSpace, s: SweepSettings) -> tuple[dict, tune.TuneConfig]:
    scheduler = None
    if s.scheduler == "asha":
        epochs = s.base["stage1"]["epochs"]
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=epochs, grace_period=min(2, epochs), reduction_factor=2
        )
    if space.is_grid:
        param_space = {GRID_KEY: tune.grid_search(space.grid_points())}
        return param_space, tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=1,
            scheduler=scheduler,
            max_concurrent_trials=s.max_concurrent,
        )
    searcher = ConcurrencyLimiter(
        space.optuna_search(s.metric, s.mode, s.seed), max_concurrent=s.max_concurrent
    )
    return {}, tune.TuneConfig(
        metric=s.metric,
        mode=s.mode,
        num_samples=s.num_samples,
        search_alg=searcher,
        scheduler=scheduler,
        max_concurrent_trials=s.max_concurrent,
    )


def build_tuner(space: SearchSpace, settings: SweepSettings) -> tune.Tuner:
    param_space, tune_config = _tune_config(space, settings)
    return tune.Tuner(
        trainable(settings),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.tune_dir,
            callbacks=[CloseTrialRuns(settings.mlflow)],
        ),
    )


def _check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, where ray.init would retry for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as err:
        raise ConnectionError(f"no Ray cluster reachable at {address}: {err}") from None


def start_ray(address: str | None, max_concurrent: int) -> None:
    """Connect to ``address``, or start an isolated local instance bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    if address:
        _check_ray_address(address)
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        resources={DRIVER_RESOURCE: max_concurrent},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
    )


def _parent_run(settings: SweepSettings, searcher: str) -> SweepRun:
    """The sweep's MLflow parent run: created once, found again by name on ``resume``."""
    params = {
        "space": Path(settings.space_path).name,
        "num_samples": settings.num_samples,
        "searcher": searcher,
        "scheduler": settings.scheduler,
        "metric": settings.metric,
        "mode": settings.mode,
        "workers_per_trial": settings.workers_per_trial,
        "gpus_per_trial": settings.gpus_per_trial,
        "seed": settings.seed,
    }
    return SweepRun.start(
        settings.mlflow["uri"],
        settings.mlflow["experiment"],
        settings.name,
        params=params,
        tags={},
        space_text=Path(settings.space_path).read_text(),
    )


def _tracked_fit(parent: SweepRun, tuner: tune.Tuner) -> tune.ResultGrid:
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    try:
        results = tuner.fit()
    except BaseException:
        parent.finish("KILLED")
        raise
    parent.finish("FINISHED" if not results.errors else "FAILED")
    return results


def run_sweep(space: SearchSpace, settings: SweepSettings) -> tune.ResultGrid:
    searcher = "grid" if space.is_grid else "optuna-tpe"
    parent = _parent_run(settings, searcher)
    settings.mlflow.update(
        parent_run_id=parent.run_id, experiment_id=parent.experiment_id, searcher=searcher
    )
    settings.save()
    return _tracked_fit(parent, build_tuner(space, settings))


def resume_sweep(folder: str, settings: SweepSettings) -> tune.ResultGrid:
    """``Tuner.restore``: finished trials stay, unfinished and errored ones restart from their
    checkpoints (their Train runs resume by name), the searcher continues from its state, and
    the same MLflow parent and trial runs continue."""
    parent = _parent_run(settings, settings.mlflow["searcher"])
    tuner = tune.Tuner.restore(
        folder, trainable=trainable(settings), resume_unfinished=True, resume_errored=True
    )
    return _tracked_fit(parent, tuner)
