"""What a sweep selects on: one number per trial, the same quantity for every trial, and the
number of the model the trial delivers.

The user names a metric the trainer reports (``--metric``) and a mode. Each report a trial sends
to Tune carries :data:`OBJECTIVE`, the value the searcher and the scheduler read:

- for a per-epoch metric (``encoder/dev/eer``, ...), its value at the epoch whose weights the
  trial delivers: the stage-1 monitor's best epoch (``stage1.monitor``; the first epoch with
  the lowest dev loss or dev EER). While a trial runs, that is the monitor's best epoch so far,
  the model it would deliver if it stopped now; a trial ASHA stops and a trial that finishes
  are both summarised so. (The best value over epochs would rank an epoch whose weights were
  thrown away, and favour long, noisy trials: the minimum of 100 noisy numbers.)
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


# stage1.monitor -> the per-epoch key it watches (the lower the better).
MONITOR_KEYS = {"dev_loss": "encoder/dev/loss", "dev_eer": "encoder/dev/eer"}


@dataclass(frozen=True)
class Objective:
    """``metric`` and ``mode``; ``monitor``: the per-epoch key whose best epoch the trial
    delivers (``encoder/dev/loss`` or ``encoder/dev/eer``, from the trial's
    ``stage1.monitor``)."""

    metric: str
    mode: str  # "min" or "max"
    monitor: str = MONITOR_KEYS["dev_eer"]

    @property
    def per_epoch(self) -> bool:
        return self.metric in EPOCH_METRICS

    def best(self, values: Sequence[float]) -> float:
        """The best finite value of ``values`` by the mode (NaN when there is none)."""
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return math.nan
        return min(finite) if self.mode == "min" else max(finite)

    def delivered(self, history: Sequence[Mapping[str, float]]) -> Mapping[str, float] | None:
        """The epoch of ``history`` whose weights the trial delivers: the first with the lowest
        finite monitor value, as stage 1 keeps it; None when no epoch has one."""
        best: Mapping[str, float] | None = None
        for h in history:
            value = h.get(self.monitor, math.nan)
            if math.isfinite(value) and (best is None or value < best[self.monitor]):
                best = h
        return best

    def so_far(self, history: Sequence[Mapping[str, float]]) -> float:
        """A per-epoch metric at the monitor's best epoch of ``history`` (every epoch's
        metrics so far); NaN when there is none."""
        epoch = self.delivered(history)
        return float(epoch.get(self.metric, math.nan)) if epoch is not None else math.nan

    def final(self, metrics: Mapping[str, float], history: Sequence[Mapping[str, float]]) -> float:
        """The trial's value: at the delivered epoch for a per-epoch metric, else the final."""
        if self.per_epoch:
            return self.so_far(history)
        return float(metrics.get(self.metric, math.nan))

    def differs(self) -> str | None:
        """A sentence for the sweep's start when the metric is per-epoch and not the monitor's
        own key (they measure different things); None otherwise."""
        if not self.per_epoch or self.metric == self.monitor:
            return None
        return (
            f"note: --metric {self.metric} is read at the epoch stage 1 keeps, the one with the "
            f"best {self.monitor} (stage1.monitor): the number ranked is that of the model "
            f"delivered, not {self.metric}'s own best epoch"
        )


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
