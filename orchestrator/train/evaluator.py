"""Evaluations on the cluster: each run a Ray Train run with the trial's own resources.

Scoring 750k+ clips is data-parallel, so an evaluation gets what its trial had (the workers,
their CPUs and GPUs; :func:`trainer.embed.embed` shards the sets over the ranks), under a
driver that holds no CPU and one ``TRAIN_DRIVER`` slot, as a trial's driver does. Several
evaluations run at once as far as the cluster has room.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import ray
from ray.train import FailureConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.train.evaluation import JOB_KEY, EvalJob, SetFailedError, run_job
from orchestrator.train.resources import DRIVER_RESOURCE
from orchestrator.train.trainer import failure_line, scaling


def eval_worker(config: dict[str, EvalJob]) -> None:
    """Ray Train's ``train_loop_per_worker`` of an evaluation."""
    scratch = Path(tempfile.mkdtemp(prefix="supcon-eval-"))
    try:
        run_job(config[JOB_KEY], scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _evaluator(job: EvalJob) -> TorchTrainer:
    return TorchTrainer(
        eval_worker,
        train_loop_config={JOB_KEY: job},
        scaling_config=scaling(job.resources),
        torch_config=TorchConfig(backend="nccl" if job.resources.gpus else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"eval-{job.trial_id}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=f"{job.storage_root}/train",
            failure_config=FailureConfig(max_failures=0),
        ),
    )


@ray.remote(num_cpus=0, resources={DRIVER_RESOURCE: 1})
def _evaluate(job: EvalJob) -> str | None:
    try:
        _evaluator(job).fit()
    except TrainingFailedError as err:
        return failure_line(err, SetFailedError.__name__)
    return None


def evaluate_on_ray(jobs: Sequence[EvalJob]) -> dict[str, str | None]:
    """Run ``jobs`` concurrently on the connected cluster; run id -> None or the error."""
    refs = {job.run_id: _evaluate.remote(job) for job in jobs}
    return {run_id: ray.get(ref) for run_id, ref in refs.items()}
