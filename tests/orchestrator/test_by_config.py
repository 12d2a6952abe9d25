"""``best --by-config`` on a store seeded through the project's tracking code (no Ray): runs
tagged with a configuration id group by the id recomputed from their params, a configuration
needs two seeds to be ranked, and its EERs show as mean ± std over seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.reports.by_config import group
from orchestrator.settings import DEFAULT_EXPERIMENT, TrialResources
from orchestrator.tracking import CONFIG_ID_TAG, RESOURCES_TAG, SEED_TAG, Tracking, row_config_id
from trainer.config import flatten, load_config

POOLED = "eval/pooled_mean/eer"


def _store(tmp_path: Path) -> str:
    """Configuration A (temperature 0.1) under seeds 0, 1000, 2000; B (0.3) under 0 and 1000;
    C (0.5) under seed 0 only; each tagged with an id an older version computed, and 2 workers."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking.at(uri, DEFAULT_EXPERIMENT)
    parent = tracking.start_sweep(
        "confirm-s", searcher="confirm", params={}, tags={}, space_text=None
    )
    runs = {0.1: [0.10, 0.12, 0.14], 0.3: [0.20, 0.30], 0.5: [0.05]}
    for temperature, eers in runs.items():
        for i, eer in enumerate(eers):
            params = flatten(load_config(overrides=[f"loss.temperature={temperature}"]))
            params["seed"] = 1000 * i
            tracker = Tracking(parent.target).open_trial(
                f"t{temperature}-{i}",
                params,
                tags={CONFIG_ID_TAG: "stale", SEED_TAG: str(1000 * i)},
            )
            tracker.set_tag(RESOURCES_TAG, TrialResources(2, 0, 1.0).to_json())
            tracker.log_metrics({POOLED: eer, "eval/itw/eer": eer + 0.01}, step=0)
            tracker.finish()
    parent.finish()
    return uri


def test_configurations_with_two_seeds_are_grouped_and_summarised(tmp_path: Path) -> None:
    rows = Tracking.at(_store(tmp_path), DEFAULT_EXPERIMENT).configured_runs()
    assert len(rows) == 6
    configs = {c["params"]["loss.temperature"]: c for c in group(rows, POOLED)}
    assert sorted(configs) == [0.1, 0.3]  # C has one seed: the plain `best` lists it
    a = configs[0.1]
    assert a["seeds"] == [0, 1000, 2000] and len(a["run_ids"]) == 3
    assert a["stats"][POOLED]["mean"] == pytest.approx(statistics.mean([0.10, 0.12, 0.14]))
    assert a["stats"][POOLED]["std"] == pytest.approx(statistics.stdev([0.10, 0.12, 0.14]))
    assert a["config_id"] == row_config_id(next(r for r in rows if r["trial_id"] == "t0.1-0"))
    assert a["config_id"] != "stale"  # recomputed from the params, not the old tag


def test_best_by_config_ranks_by_the_mean_over_seeds(tmp_path: Path, capsys) -> None:
    uri = _store(tmp_path)
    assert main(["best", "--by-config", "--tracking-uri", uri, "--metric", POOLED]) == 0
    lines = capsys.readouterr().out.splitlines()
    first, second = lines[1], lines[2]
    assert first.startswith("1 ") and "0.1" in first and "12.00 ± 2.00" in first
    assert second.startswith("2 ") and "0.3" in second and "25.00 ± 7.07" in second
    assert lines[-1] == "mean ± sample std over seeds; EERs in %"
    assert main(["best", "--by-config", "--tracking-uri", uri, "--metric", "nope"]) == 2
    assert "two or more seeds with nope" in capsys.readouterr().err
