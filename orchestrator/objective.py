"""What a sweep selects on: one number per trial, the same quantity for every trial.

The user names a metric the trainer reports (``--metric``) and a mode. Each report a trial sends
to Tune carries :data:`OBJECTIVE`, the value the searcher and the scheduler read:

- for a per-epoch metric (``encoder/dev/eer``, ...), the best value over the epochs so far; a
  trial ASHA stops and a trial that finishes are both summarised by their best epoch;
- for an end-of-trial metric (``classifier/dev/eer``, ...), its final value, sent once at the
  end (the per-epoch reports do not reach Tune, so the searcher is told at the trial's end).

The trial's MLflow run logs the same :data:`OBJECTIVE`, so the searcher's view and MLflow agree.
Nothing here imports Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainer.config import ConfigError
from trainer.reporting import EPOCH_METRICS, FINAL_METRICS

OBJECTIVE = "sweep/objective"


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "min" or "max"

    @property
    def per_epoch(self) -> bool:
        return self.metric in EPOCH_METRICS

    def best(self, values: Sequence[float]) -> float:
        """The best finite value (NaN when there is none)."""
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return math.nan
        return min(finite) if self.mode == "min" else max(finite)

    def so_far(self, history: Sequence[Mapping[str, float]]) -> float:
        """A per-epoch metric's best over ``history`` (every epoch's metrics so far)."""
        return self.best([h[self.metric] for h in history if self.metric in h])

    def final(self, metrics: Mapping[str, float], history: Sequence[Mapping[str, float]]) -> float:
        """The trial's value: the best epoch's for a per-epoch metric, else the final one."""
        if self.per_epoch:
            return self.so_far(history)
        return float(metrics.get(self.metric, math.nan))


def check_objective(metric: str, mode: str, scheduler: str) -> Objective:
    """Refuse, before any trial, a ``--metric`` no sweep trial reports, and ASHA on one that is
    not reported every epoch (it would never stop anything). ``ConfigError`` names both lists."""
    epoch, final = ", ".join(EPOCH_METRICS), ", ".join(FINAL_METRICS)
    if metric.startswith("eval/"):
        raise ConfigError(
            f"--metric {metric}: sweep trials stop at the dev evaluation (test sets are scored "
            f"for the top --eval-top-k after the search, and selecting on them would make the "
            f"reported test EER optimistic); use a dev metric. Per epoch: {epoch}. At the end "
            f"of a trial: {final}"
        )
    if metric not in EPOCH_METRICS and metric not in FINAL_METRICS:
        raise ConfigError(
            f"--metric {metric} is not a metric a trial reports. Per epoch: {epoch}. At the "
            f"end of a trial: {final}"
        )
    if scheduler == "asha" and metric not in EPOCH_METRICS:
        raise ConfigError(
            f"--scheduler asha needs a metric reported every epoch, and {metric} is only "
            f"reported at the end of a trial; use --scheduler none, or one of: {epoch}"
        )
    return Objective(metric, mode)
