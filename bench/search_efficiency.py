"""Search efficiency on the local task: the exhaustive grid against TPE + ASHA (and random + ASHA).

The space is a small paper-like one: similarity {cosine, angular} x temperature {0.05, 0.1,
0.3, 0.7} x queue size {0, 256, 1024} (24 trials, 15 minutes on 2 cores, measured 2026-12-05;
``--small``: temperature {0.05, 0.2, 0.7} x queue size {0, 1024}, 12 trials), queue.start_epoch
fixed at 2, on ``trainer/configs/local.yaml``
(12 stage-1 epochs, patience 6: trials may stop early on their own, that is part of the task).
Compute is counted in trial-epochs (stage-1 epochs trained; stage 2 is not counted). Measured, per
searcher and seed: (a) the trial-epochs until the searcher's best objective first comes within
``--tol`` of the grid's best, and (b) its best objective after 1/3 of the grid's compute; printed
as ratios to the grid's compute, with the median over seeds.

How:

1. The grid runs for real: ``supcon-sweep sweep`` in-process (no ASHA, no test-set scoring, two
   one-worker trials at a time), on a fresh synthetic corpus. Each trial run's per-epoch dev EER
   is read back from MLflow: a table config -> per-epoch values, as long as the trial ran.
2. The searchers are replayed through the real Tune + Optuna + ASHA, built as the sweep builds
   them (``orchestrator.tune.searcher``, the ASHA rungs of ``orchestrator.tune.scheduling``),
   one trial at a time. A replayed trial reports, epoch by epoch, what the real trial of its config
   reported to Tune: the 0-based ``epoch`` and the objective (best epoch so far). ASHA stops it
   by not taking its next report. A config drawn twice costs its epochs twice.

Why the replay is faithful: a local trial is deterministic (the trainer seeds every RNG from
the config's seed; one worker, one thread, a fixed corpus: configs that differ only in the queue
report identical epochs until it starts), so the table's values are exactly what a real trial of
that config would report, and the searcher and the scheduler only ever see those reports. Trials
run one at a time so that "compute until" is well defined (with concurrency it would depend on
timing). TPE and random search use the same seeds: Optuna's TPE draws its first 10 trials at
random, the same configs random search draws, so the two differ only after that.

    python bench/search_efficiency.py                  # the grid (24 trials), then 3 seeds
    python bench/search_efficiency.py --small          # the 12-trial grid
    python bench/search_efficiency.py --quick          # a 2 x 2 x 1 grid of 5-epoch trials
    python bench/search_efficiency.py --table OUT/grid_table.json --seeds 5   # replay only
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import main as cli
from orchestrator.objective import OBJECTIVE, Objective
from orchestrator.settings import DEFAULT_EXPERIMENT

METRIC = "encoder/dev/eer"
KEYS = ("loss.similarity", "loss.temperature", "queue.size")
FULL = {KEYS[0]: ["cosine", "angular"], KEYS[1]: [0.05, 0.1, 0.3, 0.7], KEYS[2]: [0, 256, 1024]}
SMALL = {KEYS[0]: ["cosine", "angular"], KEYS[1]: [0.05, 0.2, 0.7], KEYS[2]: [0, 1024]}
QUICK = {KEYS[0]: ["cosine", "angular"], KEYS[1]: [0.1, 0.3], KEYS[2]: [256]}
START_EPOCH = 2
FULL_EPOCHS = 12  # local.yaml's stage1.epochs
# 5, not 4: with the queue on from epoch 2, ASHA's first rung is after epoch 3, and with 4
# epochs the sweep would run without ASHA (orchestrator.tune.scheduling.Rungs.stops).
QUICK_EPOCHS = 5
GRID_NAME = "grid"
SEARCHERS = ("tpe", "random")
OBJ = Objective(METRIC, "min")

Key = tuple[Any, ...]


def _space_file(path: Path, values: dict[str, list], kind: str) -> Path:
    tree = {k: {kind: v} for k, v in values.items()} | {"queue.start_epoch": START_EPOCH}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def corpus(out: Path, data: Path | None) -> Path:
    """The LA folder of ``data``, or of a tiny synthetic corpus generated into ``out/data``."""
    from trainer.data.synth import generate

    start = time.monotonic()
    root = data or generate(out / "data", seed=0, size="tiny", progress=False)
    if data is None:
        print(f"[data] tiny synthetic corpus: {time.monotonic() - start:.0f} s", flush=True)
    return Path(root).resolve() / "LA"


def run_grid(out: Path, la: Path, values: dict[str, list], epochs: int) -> None:
    """The real grid sweep through the CLI on the corpus ``la``, tracked in ``out/mlflow.db``."""
    space = _space_file(out / "grid_space.yaml", values, "grid")
    argv = ["sweep", "--space", str(space), "--scheduler", "none", "--eval-top-k", "0"]
    argv += ["--workers-per-trial", "1", "--cpus-per-worker", "1", "--max-concurrent", "2"]
    argv += ["--metric", METRIC, "--out", str(out), "--name", GRID_NAME]
    argv += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"]
    argv += [
        f"data.train.root={la}",
        f"data.dev.root={la}",
        f"data.eval={{asv19: {{kind: asvspoof2019, root: {la}, split: eval}}}}",
        f"stage1.epochs={epochs}",
        "runtime.threads=1",
    ]
    code = cli(argv)
    if code:
        raise SystemExit(f"the grid sweep exited {code}")


def read_table(out: Path, values: dict[str, list], epochs: int) -> dict[str, Any]:
    """Each grid trial's params and per-epoch :data:`METRIC`, from the sweep's MLflow runs.
    The final report logs the best epoch's metrics again at step = epochs run: dropped."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracking, decode_param

    uri = f"sqlite:///{out / 'mlflow.db'}"
    tracking = Tracking.at(uri, DEFAULT_EXPERIMENT)
    _, sweep = tracking.find_sweep(name=GRID_NAME)
    client = MlflowClient(uri)
    trials = []
    for run in tracking.trial_runs(sweep.run_id):
        if "encoder/epochs" not in run.data.metrics:
            raise SystemExit(f"grid trial run {run.info.run_id} did not finish ({run.info.status})")
        ran = int(run.data.metrics["encoder/epochs"])
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, METRIC)}
        params = [decode_param(run.data.params[k]) for k in KEYS]
        trials.append({"params": params, "values": [history.get(e, math.nan) for e in range(ran)]})
    expected = math.prod(len(v) for v in values.values())
    if len({tuple(t["params"]) for t in trials}) != expected or len(trials) != expected:
        raise SystemExit(f"expected {expected} distinct grid trials in MLflow, found {len(trials)}")
    return {"metric": METRIC, "epochs": epochs, "space": values, "trials": trials}


def _curve(values: list[float]) -> list[float]:
    """The objective after each epoch: the best epoch so far (what a trial reports)."""
    return [OBJ.best(values[: e + 1]) for e in range(len(values))]


@dataclass(frozen=True)
class Grid:
    """The reference: its compute (trial-epochs), best objective, how many configs are within
    tol of it and how many distinct per-config objectives there are (ties make it easy)."""

    compute: int
    best: float
    within_tol: int
    distinct: int


def describe_grid(table: dict[str, Any], tol: float) -> Grid:
    rows = sorted(table["trials"], key=lambda t: OBJ.best(t["values"]))
    best = OBJ.best(rows[0]["values"])
    print(f"\ngrid: {len(rows)} configs, best {METRIC} per config (best epoch so far):")
    print(f"  {'similarity':<10} {'temp':>5} {'queue':>5}  {'best':>7}  epochs run")
    for t in rows:
        sim, temp, size = t["params"]
        print(f"  {sim:<10} {temp:>5g} {size:>5}  {OBJ.best(t['values']):7.4f}  {len(t['values'])}")
    bests = [OBJ.best(t["values"]) for t in rows]
    grid = Grid(
        compute=sum(len(t["values"]) for t in rows),
        best=best,
        within_tol=sum(b <= best + tol for b in bests),
        distinct=len(set(bests)),
    )
    print(
        f"grid compute {grid.compute} trial-epochs; best {best:.4f}; {grid.distinct} distinct "
        f"objective values; {grid.within_tol} config(s) within tol {tol:g} of the best"
    )
    return grid


@dataclass(frozen=True)
class Outcome:
    """One replayed search: trial-epochs until within tol of the grid's best (None: never),
    its best at 1/3 of the grid's compute and at the end, its compute and trials."""

    searcher: str
    seed: int
    to_reach: int | None
    best_at_third: float
    best: float
    compute: int
    trials: int
    distinct_configs: int
    stopped_by_asha: int


def _searcher(kind: str, space: Any, seed: int) -> Any:
    """The sweep's searcher ``kind`` (tpe or random, :mod:`orchestrator.tune.searcher`) in a
    ConcurrencyLimiter, as :func:`orchestrator.tune.tuner.tune_config` wraps it."""
    from ray.tune.search import ConcurrencyLimiter

    from orchestrator.tune.searcher import search_algorithm

    return ConcurrencyLimiter(
        search_algorithm(kind, space, OBJECTIVE, "min", seed), max_concurrent=1
    )


def _scheduler(space: Any, epochs: int) -> Any:
    """ASHA as ``orchestrator.tune.tuner._scheduler`` builds it (constructed here, identically: that
    function is private and takes the whole SweepSettings): first rung from the space's queue
    start, ``max_t`` the epoch budget, reduction factor 2; None when it could stop nothing."""
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.tune.scheduling import asha_rungs
    from trainer.config import apply_overrides, load_config

    base = apply_overrides(load_config(overrides=[f"stage1.epochs={epochs}"]), space.fixed())
    rungs = asha_rungs(space, base)
    if not rungs.stops:
        return None
    return ASHAScheduler(
        time_attr="epoch", max_t=epochs, grace_period=rungs.grace, reduction_factor=2
    )


def _replay_trial(config: dict[str, Any], curves: dict[Key, list[float]]) -> None:
    """A trial of ``config`` as Tune saw the real one: one report per epoch, 0-based ``epoch``.
    The real trial's final report repeats the last epoch and value, which changes nothing for
    ASHA (the rung is recorded) or Optuna (told the last value): not replayed."""
    from ray import tune

    for epoch, value in enumerate(curves[tuple(config[k] for k in KEYS)]):
        tune.report({"epoch": epoch, OBJECTIVE: value})


def _search(
    kind: str, seed: int, space: Any, curves: dict[Key, list[float]], epochs: int, out: Path
) -> list[tuple]:
    """One replayed search; the (trial id, config, epoch, objective) of every result Tune took,
    in order (one trial at a time: the order the compute was spent)."""
    from ray import tune

    class Taken(tune.Callback):
        def __init__(self) -> None:
            self.rows: list[tuple] = []

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            key = tuple(trial.config[k] for k in KEYS)
            self.rows.append((trial.trial_id, key, result["epoch"], result[OBJECTIVE]))

    taken = Taken()
    tuner = tune.Tuner(
        tune.with_parameters(_replay_trial, curves=curves),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="min",
            # One trial at a time: the ConcurrencyLimiter's (Tune warns that
            # max_concurrent_trials would be redundant with it).
            search_alg=_searcher(kind, space, seed),
            scheduler=_scheduler(space, epochs),
            num_samples=len(curves),
            reuse_actors=True,  # speed only: the replayed trial holds no state
        ),
        run_config=tune.RunConfig(
            name=f"{kind}-{seed}", storage_path=str(out / "replay"), callbacks=[taken], verbose=0
        ),
    )
    tuner.fit()
    return taken.rows


def outcome(
    kind: str, seed: int, rows: list[tuple], lengths: dict[Key, int], grid: Grid, tol: float
) -> Outcome:
    """The figures of one search from its results; checks they came one trial at a time."""
    epochs_of: dict[str, list[int]] = {}
    for trial_id, _, epoch, _ in rows:
        epochs_of.setdefault(trial_id, []).append(epoch)
    order = list(dict.fromkeys(r[0] for r in rows))
    if [r[0] for r in rows] != [t for t in order for _ in epochs_of[t]]:
        raise RuntimeError(f"{kind} seed {seed}: trials overlapped; compute order is undefined")
    best, to_reach, at_third = math.inf, None, math.inf
    for spent, (_, _, _, value) in enumerate(rows, start=1):
        best = min(best, value) if math.isfinite(value) else best
        if to_reach is None and best <= grid.best + tol:
            to_reach = spent
        if spent <= grid.compute / 3:
            at_third = best
    configs = {trial_id: key for trial_id, key, _, _ in rows}
    return Outcome(
        searcher=kind,
        seed=seed,
        to_reach=to_reach,
        best_at_third=at_third,
        best=best,
        compute=len(rows),
        trials=len(order),
        distinct_configs=len(set(configs.values())),
        stopped_by_asha=sum(len(epochs_of[t]) < lengths[configs[t]] for t in order),
    )


def _spent(compute: int | None, grid: Grid) -> str:
    """Trial-epochs and their ratio to the grid's compute."""
    return "not reached" if compute is None else f"{compute} ({compute / grid.compute:.2f})"


def _line(o: Outcome, grid: Grid) -> str:
    return (
        f"  {o.searcher:<7}{o.seed:>4}  {_spent(o.to_reach, grid):<12}  {o.best_at_third:8.4f}  "
        f"{o.best:6.4f}  {_spent(o.compute, grid):<11}  {o.trials:>6}  {o.distinct_configs:>7}  "
        f"{o.stopped_by_asha:>7}"
    )


def medians(mine: list[Outcome], grid: Grid) -> dict[str, Any]:
    """Medians over seeds; a seed that never reached the grid's best counts as infinite compute
    (None in the figures when the median itself is)."""
    reach = statistics.median(math.inf if o.to_reach is None else o.to_reach for o in mine)
    return {
        "to_reach": None if math.isinf(reach) else reach,
        "to_reach_ratio": None if math.isinf(reach) else reach / grid.compute,
        "reached_seeds": sum(o.to_reach is not None for o in mine),
        "best_at_third": statistics.median(o.best_at_third for o in mine),
        "compute_ratio": statistics.median(o.compute for o in mine) / grid.compute,
    }


def report(outcomes: list[Outcome], grid: Grid, tol: float) -> dict[str, dict[str, Any]]:
    """Print one line per search and the medians over seeds; returns the medians."""
    print(f"\nreplayed searches: trial-epochs (ratio to the grid's {grid.compute}); tol {tol:g}")
    print("  searcher seed  to reach      best@1/3  best    compute      trials  configs  stopped")
    for o in outcomes:
        print(_line(o, grid))
    figures = {}
    print(f"\nmedian over seeds (grid best {grid.best:.4f}):")
    for kind in SEARCHERS:
        mine = [o for o in outcomes if o.searcher == kind]
        m = figures[kind] = medians(mine, grid)
        reach = "not reached" if m["to_reach"] is None else f"{m['to_reach']:g} trial-epochs"
        ratio = "-" if m["to_reach_ratio"] is None else f"{m['to_reach_ratio']:.2f}"
        print(
            f"  {kind:<6}  to reach the grid's best: {reach}, searcher / grid compute = {ratio} "
            f"(reached in {m['reached_seeds']} of {len(mine)} seeds)\n"
            f"          best at 1/3 of the grid's compute {m['best_at_third']:.4f}; whole search "
            f"{m['compute_ratio']:.2f} x grid compute"
        )
    return figures


def replay(table: dict[str, Any], seeds: int, tol: float, out: Path) -> dict[str, Any]:
    """Every searcher over ``seeds`` seeds on the grid's table; prints and returns the figures."""
    import optuna
    import ray

    from search_spaces import load_space
    from trainer.config import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    # Ray's new console output prints each experiment's header box even at verbose=0.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    grid = describe_grid(table, tol)
    epochs = table["epochs"]
    path = _space_file(out / "search_space.yaml", table["space"], "categorical")
    space = load_space(path, load_config(overrides=[f"stage1.epochs={epochs}"]))
    curves = {tuple(t["params"]): _curve(t["values"]) for t in table["trials"]}
    lengths = {key: len(curve) for key, curve in curves.items()}
    if ray.is_initialized():  # the grid sweep's instance
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    outcomes = []
    for kind in SEARCHERS:
        for seed in range(seeds):
            start = time.monotonic()
            rows = _search(kind, seed, space, curves, epochs, out)
            outcomes.append(outcome(kind, seed, rows, lengths, grid, tol))
            print(f"[replay] {kind} seed {seed}: {time.monotonic() - start:.0f} s", flush=True)
    ray.shutdown()
    summary = report(outcomes, grid, tol)
    searches = [asdict(o) for o in outcomes]
    return {"tol": tol, "grid": asdict(grid), "searches": searches, "medians": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 2 x 2 x 1 grid of 5-epoch trials")
    p.add_argument("--small", action="store_true", help="the 2 x 3 x 2 grid (12 trials)")
    p.add_argument("--seeds", type=int, default=3, help="searcher seeds 0..N-1 (default 3)")
    p.add_argument(
        "--tol",
        type=float,
        default=0.005,
        help="reached: best <= grid best + tol (default 0.005: one error per class on "
        "the 200 + 200 dev clips)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: a new temporary one)")
    p.add_argument("--data", type=Path, help="a corpus folder holding LA/ (default: generate)")
    p.add_argument("--table", type=Path, help="a saved grid_table.json: replay only, no grid")
    a = p.parse_args(argv)
    out = (a.out or Path(tempfile.mkdtemp(prefix="bench_search_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[setup] outputs in {out}", flush=True)
    if a.table:
        table = json.loads(a.table.read_text())
    else:
        values, epochs = (QUICK, QUICK_EPOCHS) if a.quick else (FULL, FULL_EPOCHS)
        values = SMALL if a.small and not a.quick else values
        la = corpus(out, a.data)
        start = time.monotonic()
        run_grid(out, la, values, epochs)
        table = read_table(out, values, epochs)
        (out / "grid_table.json").write_text(json.dumps(table, indent=1))
        print(f"[grid] {len(table['trials'])} trials: {time.monotonic() - start:.0f} s", flush=True)
    start = time.monotonic()
    figures = replay(table, a.seeds, a.tol, out)
    print(f"[replay] all searches: {time.monotonic() - start:.0f} s")
    (out / "search_efficiency.json").write_text(json.dumps(figures, indent=1))
    print(f"figures: {out / 'search_efficiency.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
