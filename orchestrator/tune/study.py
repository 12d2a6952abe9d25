"""The sweep's Optuna study in an RDB storage, where ``optuna-dashboard`` shows it live.

A sampled space's searcher (TPE or random, :mod:`orchestrator.tune.searcher`) keeps its study in
the storage itself, running trials included; ``resume`` restores the searcher and so continues
the same study. A grid has no Optuna searcher: :class:`RecordTrials` adds each trial to the
study when it ends (its value, or FAIL). Either way a trial's value is what Tune selected on,
``sweep/objective``, which its MLflow run holds too.

Locally the storage is ``sqlite:///OUT/optuna.db`` beside ``mlflow.db``; only the sweep's driver
writes to it. On a cluster the sweep driver runs on the head, so a SQLite file on the head's
disk serves (``SUPCON_OPTUNA_STORAGE``, set in ``cluster/cluster.yaml``).
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from orchestrator.objective import OBJECTIVE


def rdb_storage(url: str) -> Any:
    """The Optuna storage at ``url`` (tables created on first use)."""
    import optuna

    return optuna.storages.RDBStorage(url)


def dashboard_command(url: str) -> str:
    """The command that shows the study live (optuna-dashboard binds 127.0.0.1 by default)."""
    return f"optuna-dashboard {url} --host 127.0.0.1 --port 8080  (then http://127.0.0.1:8080)"


def open_study(url: str, name: str, mode: str) -> Any:
    import optuna

    direction = "minimize" if mode == "min" else "maximize"
    return optuna.create_study(
        storage=rdb_storage(url), study_name=name, direction=direction, load_if_exists=True
    )


class RecordTrials(tune.Callback):
    """Adds each ended trial of a grid to the study in ``url``: COMPLETE with the value Tune
    selected on (ASHA's stopped trials too, as Optuna's searcher records them), FAIL without
    one. Holds the URL, not a connection, so it survives Tune's pickling for ``resume``."""

    def __init__(
        self, url: str, name: str, mode: str, distributions: dict[str, Any], point_key: str
    ) -> None:
        self.url, self.name, self.mode = url, name, mode
        self.distributions = distributions
        self.point_key = point_key  # where a trial's config holds its grid point
        self._study = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}  # reconnects after Tune's restore

    def _add(self, trial, failed: bool) -> None:
        import optuna

        if self._study is None:
            self._study = open_study(self.url, self.name, self.mode)
        point = trial.config.get(self.point_key, trial.config)
        params = {k: point[k] for k in self.distributions if k in point}
        value = (trial.last_result or {}).get(OBJECTIVE)
        ok = not failed and isinstance(value, float) and math.isfinite(value)
        self._study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: self.distributions[k] for k in params},
                value=value if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
                user_attrs={"tune_trial_id": trial.trial_id},
            )
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._add(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._add(trial, failed=True)
