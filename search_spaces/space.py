"""Search spaces: YAML files keyed by trainer config paths, turned into Tune domains or a grid.

A space file maps a dotted trainer config path to one distribution::

    loss.temperature: {loguniform: [0.03, 1.0]}   # lo > 0, both ends inclusive
    stage1.lr_head: {uniform: [1.0e-4, 1.0e-3]}
    queue.start_epoch: {int: [0, 8]}              # inclusive; optional step: {int: [0, 8192, 256]}
    queue.size: {categorical: [0, 256, 1024]}     # TPE chooses
    loss.similarity: {grid: [cosine, angular]}    # every value runs
    queue.same_label: exclude                     # fixed, the same in every trial

Grid or TPE, never both. A space whose keys are all ``grid`` (or fixed) is a grid: the sweep runs
the cartesian product, ``grid_points()``, once each. Any other space is sampled by Optuna's TPE
through ``optuna_search()``. Mixing ``grid`` with sampled distributions is rejected rather than read
as ``categorical``: a grid promises that every combination runs, which TPE does not (and Optuna
cannot take Tune's ``grid_search``). Write ``categorical`` to let TPE choose among values.

A study that is not one product (an ablation of one factor at another's best value, a list of
points) is a union of grids: ``grids`` lists blocks, each a grid of ``grid`` and fixed keys of its
own; the study runs every point of every block, a point two blocks share once, in file order.
Keys outside ``grids`` apply to every point (a ``grid`` there multiplies every block)::

    grids:
      - {loss.temperature: {grid: [0.07, 0.3]}, queue.size: 0}
      - {loss.temperature: 0.3, queue.size: {grid: [256, 1024]}}
    queue.start_epoch: 5

A key that one block sets and another does not takes the base config's value in the other, so
every point names the same keys.

``load_space`` checks everything before a trial starts: keys are leaf paths of the trainer config,
ranges are well formed, and every value the space can produce (range ends, every choice, every grid
point) validates through :func:`trainer.config.apply_overrides`. Errors are ``SpaceError``, naming
the file and the key. Validation needs neither Ray nor Optuna: they are imported only to build Tune
domains and the searcher.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from trainer.config import (
    RENAMED,
    ConfigError,
    TrainerConfig,
    apply_overrides,
    flatten,
    load_config,
)

if TYPE_CHECKING:
    from ray.tune.search.optuna import OptunaSearch

SPACES_DIR = Path(__file__).resolve().parent
DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical", "grid")
GRIDS = "grids"  # the key of a union of grids
Kind = Literal["loguniform", "uniform", "int", "categorical", "grid", "fixed"]
# Cross-key checks try every combination of range ends and choices up to this many.
_MAX_COMBINATIONS = 4096


class SpaceError(ValueError):
    """A search space file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One key of a space.

    ``values``: (lo, hi) for loguniform/uniform/int, both inclusive; the choices for
    categorical/grid; (value,) for fixed. ``step`` applies to int only.
    """

    kind: Kind
    values: tuple[Any, ...]
    step: int = 1

    @property
    def sampled(self) -> bool:
        return self.kind not in ("grid", "fixed")

    def tune_domain(self) -> Any:
        """The Tune domain that samples this key (the value itself for a fixed key)."""
        from ray import tune

        lo, hi = self.values[0], self.values[-1]
        if self.kind == "loguniform":
            return tune.loguniform(lo, hi)
        if self.kind == "uniform":
            return tune.uniform(lo, hi)
        if self.kind == "int":
            # randint excludes its upper end; qrandint (step > 1) includes it.
            return tune.randint(lo, hi + 1) if self.step == 1 else tune.qrandint(lo, hi, self.step)
        if self.kind == "categorical":
            return tune.choice(list(self.values))
        if self.kind == "fixed":
            return lo
        raise SpaceError("a grid key has no Tune domain; a grid space runs grid_points()")


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space: ``params`` maps dotted trainer config paths to ``Param`` in file order;
    ``blocks`` are the grids of a union (``grids:``), each in file order."""

    path: Path
    params: dict[str, Param]
    blocks: tuple[dict[str, Param], ...] = ()

    def __post_init__(self) -> None:
        if not self.params and not self.blocks:
            raise SpaceError(f"{self.path}: the space defines no parameters")
        grid = [k for k, p in self.params.items() if p.kind == "grid"]
        sampled = [k for k, p in self.params.items() if p.sampled]
        if grid and sampled:
            raise SpaceError(
                f"{self.path}: grid keys {grid} cannot be mixed with sampled keys {sampled}; "
                "use categorical for TPE to choose, or make every key a grid"
            )
        if self.blocks and sampled:
            raise SpaceError(
                f"{self.path}: {GRIDS} (a union of grids) cannot be mixed with sampled keys "
                f"{sampled}"
            )

    @property
    def is_grid(self) -> bool:
        """True when no key is sampled: the sweep runs ``grid_points()`` exhaustively."""
        return not any(p.sampled for p in self.params.values())

    def fixed(self) -> dict[str, Any]:
        """The keys fixed for every trial (a block's fixed keys belong to its points)."""
        return {k: p.values[0] for k, p in self.params.items() if p.kind == "fixed"}

    def largest(self, key: str, base: TrainerConfig) -> Any:
        """The largest value ``key`` can take in this space's trials (``base``'s own value
        when the space does not set it): a range's upper end, the largest choice."""
        params = [self.params.get(key), *(block.get(key) for block in self.blocks)]
        values = [v for p in params if p is not None for v in p.values]
        return max(values) if values else flatten(base)[key]

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point once, in file order, last key fastest; fixed keys included. A union of
        grids runs its blocks in order, each multiplied by the keys outside them."""
        if not self.is_grid:
            raise SpaceError(f"{self.path}: not a grid space; use optuna_search()")
        shared = _product(self.params)
        if not self.blocks:
            return shared
        points: list[dict[str, Any]] = []
        for block in self.blocks:
            for own in _product(block):
                for common in shared:
                    point = {**own, **common}
                    if point not in points:
                        points.append(point)
        return points

    def optuna_search(
        self,
        metric: str,
        mode: str,
        seed: int | None = None,
        *,
        sampler: Any = None,
        storage: Any = None,
        study_name: str | None = None,
    ) -> OptunaSearch:
        """An ``OptunaSearch`` over the sampled keys (TPE seeded with ``seed``, or ``sampler``,
        an Optuna sampler); suggestions are keyed by dotted path. ``storage`` (an Optuna
        storage) and ``study_name`` keep its study there (optuna-dashboard reads it) instead of
        in memory.

        Suggestions hold the sampled keys only: apply ``fixed()`` to the base config (or pass it
        as the Tuner's ``param_space``, which Tune merges). ``metric`` and ``mode`` are required:
        an ``OptunaSearch`` built with a space ignores the ones ``TuneConfig`` sets later. Dotted
        keys pass through Ray's conversion unchanged (it only splits on ``/``).
        """
        self._require_sampled("optuna_search")
        if not metric or mode not in ("min", "max"):
            raise ValueError(f"optuna_search needs a metric and mode 'min' or 'max', got {mode!r}")
        from ray.tune.search.optuna import OptunaSearch

        study = {"storage": storage, "study_name": study_name}
        if sampler is not None:
            return OptunaSearch(
                space=self.optuna_distributions(),
                metric=metric,
                mode=mode,
                sampler=sampler,
                **study,
            )
        return OptunaSearch(
            space=self.optuna_distributions(), metric=metric, mode=mode, seed=seed, **study
        )

    def optuna_distributions(self) -> dict[str, Any]:
        """The Optuna distributions of the sampled keys, as the sweep's TPE draws them."""
        self._require_sampled("optuna_distributions")
        from ray.tune.search.optuna import OptunaSearch

        domains = {k: p.tune_domain() for k, p in self.params.items() if p.sampled}
        return OptunaSearch.convert_search_space(domains)

    def study_distributions(self) -> dict[str, Any]:
        """The Optuna distribution of every key that varies: the sampled ones as TPE draws
        them, a grid's as categorical over its values (for a study rebuilt from the trials)."""
        from optuna.distributions import CategoricalDistribution

        if not self.is_grid:
            return self.optuna_distributions()
        points = self.grid_points()
        out = {}
        for key in points[0]:
            seen = list(dict.fromkeys(point[key] for point in points))
            if len(seen) > 1:
                out[key] = CategoricalDistribution(seen)
        return out

    def _require_sampled(self, what: str) -> None:
        if self.is_grid:
            raise SpaceError(f"{self.path}: a grid space has no {what}; run its grid_points()")


def _product(params: dict[str, Param]) -> list[dict[str, Any]]:
    """The cartesian product of ``params`` in order, last key fastest ([{}] for none)."""
    combos = itertools.product(*(p.values for p in params.values()))
    return [dict(zip(params, combo, strict=True)) for combo in combos]


def shipped_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))


def load_space(path: Path | str, base: TrainerConfig | None = None) -> SearchSpace:
    """Parse and validate a space file against ``base`` (default: the trainer's local config).

    Keys must be leaf paths of ``base`` (so ``data.eval.<name>.*`` exists only for the eval sets
    that ``base`` names).
    """
    path = Path(path)
    base = base if base is not None else load_config()
    tree = _read_mapping(path)
    leaves = flatten(base)
    blocks = _parse_blocks(path, tree.pop(GRIDS, None), leaves)
    params = {}
    for key, spec in tree.items():
        _check_key(path, key, leaves)
        if any(key in block for block in blocks):
            raise SpaceError(f"{path}: {key}: set both in {GRIDS} and outside it")
        params[key] = _parse_param(f"{path}: {key}", spec)
    space = SearchSpace(path=path, params=params, blocks=blocks)
    _check_values(space, base)
    return space


def _parse_blocks(path: Path, spec: Any, leaves: dict[str, Any]) -> tuple[dict[str, Param], ...]:
    """The blocks of a union of grids, each holding every key any block sets (the base's value
    where it does not)."""
    if spec is None:
        return ()
    if not isinstance(spec, list) or not spec:
        raise SpaceError(f"{path}: {GRIDS}: expected a non-empty list of grids (mappings)")
    blocks = []
    for i, block in enumerate(spec, start=1):
        if not isinstance(block, dict) or not block:
            raise SpaceError(f"{path}: {GRIDS} #{i}: expected a mapping of config path to grid")
        parsed = {}
        for key, value in block.items():
            _check_key(path, key, leaves)
            param = _parse_param(f"{path}: {GRIDS} #{i}: {key}", value)
            if param.sampled:
                raise SpaceError(
                    f"{path}: {GRIDS} #{i}: {key}: a block of a union takes grid or fixed "
                    f"values, not {param.kind}"
                )
            parsed[key] = param
        blocks.append(parsed)
    keys = list(dict.fromkeys(k for block in blocks for k in block))
    return tuple(
        {k: block.get(k) or Param("fixed", (leaves[k],)) for k in keys} for block in blocks
    )


def _read_mapping(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise SpaceError(f"{path}: search space file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise SpaceError(f"{path}: expected a mapping of config path to distribution")
    return tree


def _check_key(path: Path, key: Any, leaves: dict[str, Any]) -> None:
    if key in leaves:
        return
    if key in RENAMED:
        raise SpaceError(f"{path}: {key}: replaced by {RENAMED[key]}")
    if isinstance(key, str) and any(leaf.startswith(f"{key}.") for leaf in leaves):
        raise SpaceError(f"{path}: {key}: is a config section; name one of its leaves")
    close = difflib.get_close_matches(str(key), list(leaves), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise SpaceError(f"{path}: {key}: not a trainer config path{hint}")


def _parse_param(where: str, spec: Any) -> Param:
    if isinstance(spec, list):
        raise SpaceError(f"{where}: a bare list is ambiguous; write {{categorical: [...]}}")
    if not isinstance(spec, dict):
        if not _is_scalar(spec):
            raise SpaceError(f"{where}: a fixed value must be a scalar, got {spec!r}")
        return Param("fixed", (spec,))
    if len(spec) != 1:
        raise SpaceError(f"{where}: expected one distribution such as {{uniform: [lo, hi]}}")
    ((name, args),) = spec.items()
    if name not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {name!r}; expected one of {DISTRIBUTIONS}")
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{where}: {name} needs a non-empty list, got {args!r}")
    if name in ("categorical", "grid"):
        return _parse_choices(where, name, args)
    if name == "int":
        return _parse_int(where, args)
    return _parse_float(where, name, args)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _parse_choices(where: str, name: Kind, args: list[Any]) -> Param:
    if not all(_is_scalar(v) for v in args):
        raise SpaceError(f"{where}: {name} values must be scalars, got {args!r}")
    if len({(type(v), v) for v in args}) != len(args):
        raise SpaceError(f"{where}: {name} lists a value twice: {args!r}")
    return Param(name, tuple(args))


def _parse_float(where: str, name: Kind, args: list[Any]) -> Param:
    for v in args:
        if isinstance(v, str):
            raise SpaceError(f"{where}: {v!r} is a string; YAML needs a dot, e.g. 1.0e-3, not 1e-3")
    if len(args) != 2 or not all(_is_number(v) for v in args):
        raise SpaceError(f"{where}: {name} needs [lo, hi] as numbers, got {args!r}")
    lo, hi = float(args[0]), float(args[1])
    if not lo < hi:
        raise SpaceError(f"{where}: {name} needs lo < hi, got {args!r}")
    if name == "loguniform" and lo <= 0:
        raise SpaceError(f"{where}: loguniform needs lo > 0, got {args!r}")
    return Param(name, (lo, hi))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_int(where: str, args: list[Any]) -> Param:
    if len(args) not in (2, 3) or not all(isinstance(v, int) and _is_number(v) for v in args):
        raise SpaceError(f"{where}: int needs [lo, hi] or [lo, hi, step] as integers, got {args!r}")
    lo, hi, step = (*args, 1)[:3]
    if not lo < hi:
        raise SpaceError(f"{where}: int needs lo < hi, got {args!r}")
    if step < 1:
        raise SpaceError(f"{where}: int step must be >= 1, got {step}")
    if lo % step or hi % step:
        # Tune's qrandint draws multiples of the step; Optuna draws lo + k*step. They agree here.
        raise SpaceError(f"{where}: int lo and hi must be multiples of the step {step}")
    return Param("int", (lo, hi), step)


def _check_values(space: SearchSpace, base: TrainerConfig) -> None:
    """Every range end, choice and grid point validates; floats are not aimed at int fields."""
    fixed = space.fixed()
    for key, param in space.params.items():
        for value in param.values:
            try:
                cfg = apply_overrides(base, {**fixed, key: value})
            except ConfigError as err:
                raise SpaceError(
                    f"{space.path}: {key}: {value!r} is invalid here: {_one_line(err)}"
                ) from None
        if param.kind in ("loguniform", "uniform") and type(flatten(cfg)[key]) is int:
            raise SpaceError(
                f"{space.path}: {key}: the trainer wants an int; use {{int: [lo, hi]}}"
            )
    # Keys can constrain each other (model validators), so try the combinations too.
    if space.is_grid:
        points = space.grid_points()
    elif math.prod(len(p.values) for p in space.params.values()) <= _MAX_COMBINATIONS:
        points = _product(space.params)
    else:
        return
    for point in points:
        try:
            apply_overrides(base, point)
        except ConfigError as err:
            raise SpaceError(
                f"{space.path}: the combination {point} is invalid: {_one_line(err)}"
            ) from None


def _one_line(err: ConfigError) -> str:
    return " ".join(str(err).split())
