"""The searcher, by name: every choice ``--searcher`` offers, in one table.

- ``tpe``: Optuna's TPE over the space's sampled keys (the default for a sampled space).
- ``random``: Optuna's random sampler over the same distributions, seeded: the baseline a TPE
  result is compared with.
- ``grid``: every point of a grid space once, in :func:`~orchestrator.tune.scheduling.
  run_order` (the default, and the only choice, for a grid space).

Adding a searcher is one entry in :data:`SEARCHERS`. The label is what the sweep's MLflow
parent run records as its ``searcher`` param (``optuna-tpe`` is the label older sweeps have).
Nothing here imports Ray until a searcher is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_spaces import SearchSpace, SpaceError


@dataclass(frozen=True)
class Searcher:
    """One choice: its parent-run label, whether it runs a grid, and how it is built (None for
    the grid, which is Tune's ``grid_search`` param space, not a search algorithm)."""

    label: str
    grid: bool
    build: Callable[..., Any] | None


def _tpe(space: SearchSpace, metric: str, mode: str, seed: int, **study: Any) -> Any:
    return space.optuna_search(metric, mode, seed, **study)


def _random(space: SearchSpace, metric: str, mode: str, seed: int, **study: Any) -> Any:
    from optuna.samplers import RandomSampler

    return space.optuna_search(metric, mode, sampler=RandomSampler(seed=seed), **study)


SEARCHERS: dict[str, Searcher] = {
    "tpe": Searcher("optuna-tpe", grid=False, build=_tpe),
    "random": Searcher("optuna-random", grid=False, build=_random),
    "grid": Searcher("grid", grid=True, build=None),
}


def default_searcher(space: SearchSpace) -> str:
    return "grid" if space.is_grid else "tpe"


def check_searcher(name: str | None, space: SearchSpace) -> str:
    """The searcher ``name`` (default: :func:`default_searcher`), checked against the space;
    :class:`SpaceError` says why a grid space and a sampler do not go together."""
    chosen = name or default_searcher(space)
    if chosen not in SEARCHERS:
        raise SpaceError(f"--searcher {chosen}: unknown; choose from {', '.join(SEARCHERS)}")
    if SEARCHERS[chosen].grid != space.is_grid:
        needs = "a grid space (every key a grid)" if SEARCHERS[chosen].grid else "sampled keys"
        raise SpaceError(
            f"--searcher {chosen} needs {needs}; {space.path} is "
            f"{'a grid' if space.is_grid else 'sampled'}: use --searcher "
            f"{default_searcher(space)}"
        )
    return chosen


def label(name: str) -> str:
    return SEARCHERS[name].label


def search_algorithm(
    name: str,
    space: SearchSpace,
    metric: str,
    mode: str,
    seed: int,
    *,
    storage: Any = None,
    study_name: str | None = None,
) -> Any:
    """The Tune search algorithm of ``name`` (None for the grid); its Optuna study in
    ``storage`` (an Optuna storage) under ``study_name`` when given, else in memory."""
    build = SEARCHERS[name].build
    if build is None:
        return None
    return build(space, metric, mode, seed, storage=storage, study_name=study_name)
