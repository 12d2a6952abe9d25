"""``supcon-sweep sweep --dry-run``: the checks of a real sweep, its plan, nothing started and
nothing written. Nothing here starts Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from tests.helpers import ROOT, data_overrides

PAPER = ["--space", str(ROOT / "search_spaces" / "paper_grid.yaml")]
PAPER += ["--config", str(ROOT / "trainer" / "configs" / "paper.yaml")]


def _dry(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["sweep", "--dry-run", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_paper_study_lists_exactly_its_16_configurations(tmp_path: Path, capsys) -> None:
    code, out, err = _dry(
        capsys,
        "--json",
        "--no-data-check",
        *PAPER,
        "--out",
        str(tmp_path / "runs"),
        "--workers-per-trial",
        "2",
        "--gpus-per-trial",
        "2",
    )
    assert code == 0
    if not torch.cuda.is_available():  # planned here for a cluster: said, not refused
        assert "started here without --address, the sweep would stop: --gpus-per-trial 2" in err
    planned = json.loads(out)
    got = {
        (t["loss.similarity"], t["loss.temperature"], t["queue.size"]) for t in planned["trials"]
    }
    temperatures = {(s, t, 0) for s in ("cosine", "angular") for t in (0.07, 0.1, 0.3, 0.6)}
    queues = {
        (s, t, q) for s, t in (("cosine", 0.3), ("angular", 0.07)) for q in (256, 1024, 4096, 8192)
    }
    assert len(planned["trials"]) == 16 and got == temperatures | queues
    assert all(
        t["queue.start_epoch"] == 5 and t["queue.same_label"] == "exclude"
        for t in planned["trials"]
    )
    assert planned["num_trials"] == 16 and planned["stage1_trial_epochs_max"] == 1600
    assert planned["asha_first_rung"] == 6  # queue from epoch 5, on for 2 epochs
    assert planned["resources"]["backend"] == "nccl"
    assert planned["corpora"] is None
    assert not (tmp_path / "runs").exists()  # nothing written, no MLflow store created


def test_the_plan_checks_the_corpora_and_counts_the_steps(
    synth_root: Path, tmp_path: Path, capsys
) -> None:
    smoke = ["--space", str(ROOT / "search_spaces" / "smoke.yaml"), "--out", str(tmp_path / "o")]
    code, out, _ = _dry(capsys, *smoke, *data_overrides(synth_root, epochs=4))
    assert code == 0
    assert "grid over loss.temperature: 2 trial(s)" in out
    assert "loss.temperature=0.1" in out and "loss.temperature=0.3" in out
    assert "at most 8 stage-1 trial-epochs (2 x 4), 2 step(s) per rank per epoch" in out
    assert "train: 16 bona fide, 48 spoof" in out
    assert not (tmp_path / "o").exists()


def test_a_tpe_plan_lists_the_searcher_and_its_domains(synth_root: Path, capsys) -> None:
    code, out, _ = _dry(
        capsys,
        "--json",
        "--num-samples",
        "6",
        "--seed",
        "3",
        "--no-data-check",
        *data_overrides(synth_root, epochs=12),
    )
    planned = json.loads(out)
    assert code == 0 and planned["searcher"] == "optuna-tpe" and "trials" not in planned
    assert planned["seed"] == 3 and planned["stage1_trial_epochs_max"] == 72
    assert planned["domains"]["loss.temperature"] == {
        "kind": "loguniform",
        "low": 0.03,
        "high": 1.0,
    }
    assert planned["domains"]["queue.size"]["choices"] == [0, 256, 1024, 4096, 8192]


def test_an_unusable_corpus_fails_the_plan(synth_root: Path, tmp_path: Path, capsys) -> None:
    overrides = [*data_overrides(synth_root), f"data.train.root={tmp_path / 'nowhere'}"]
    code, out, err = _dry(capsys, "--out", str(tmp_path / "o"), *overrides)
    assert code == 2 and out == ""
    assert "unusable corpora; nothing was started" in err and "nowhere" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "nope.yaml"], "search space file not found"),
        (["loss.temprature=0.1"], "loss.temprature: unknown key"),
        (["--metric", "eval/itw/eer"], "sweep trials stop at the dev evaluation"),
        (["--gpus-per-trial", "0.5"], "a share of a GPU is for a one-rank trial"),
    ],
)
def test_bad_input_fails_the_plan(argv: list[str], message: str, capsys) -> None:
    code, out, err = _dry(capsys, "--no-data-check", *argv)
    assert code == 2 and out == "" and message in err


def test_json_needs_dry_run(capsys) -> None:
    assert main(["sweep", "--json"]) == 2
    assert "--json and --no-data-check go with --dry-run" in capsys.readouterr().err


def test_an_unreachable_tracking_server_fails_the_plan(capsys) -> None:
    code, _, err = _dry(capsys, "--no-data-check", "--tracking-uri", "http://127.0.0.1:9")
    assert code == 2 and "not reachable" in err


def _order(capsys, *argv: str) -> list[tuple]:
    code, out, _ = _dry(capsys, "--json", "--no-data-check", *PAPER, *argv)
    assert code == 0
    return [_point(t) for t in json.loads(out)["trials"]]


def _point(trial: dict) -> tuple:
    return trial["loss.similarity"], trial["loss.temperature"], trial["queue.size"]


def test_under_asha_a_grid_runs_in_a_permutation_seeded_by_the_sweep(capsys) -> None:
    """ASHA judges a trial against those that reached its rung first: in the file's order every
    angular trial would be judged against cosine ones and the first could never be stopped."""
    in_file = _order(capsys, "--scheduler", "none")
    assert in_file[0] == ("cosine", 0.07, 0) and in_file[7] == ("angular", 0.6, 0)
    seed0 = _order(capsys, "--scheduler", "asha", "--seed", "0")
    assert sorted(seed0) == sorted(in_file) and seed0 != in_file
    assert _order(capsys, "--scheduler", "asha", "--seed", "0") == seed0
    assert _order(capsys, "--scheduler", "asha", "--seed", "1") != seed0


def test_the_sweep_runs_the_order_the_plan_prints(capsys) -> None:
    """Tune's grid is built from the same order (nothing is started here)."""
    from orchestrator.settings import SweepSettings, TrackingTarget
    from orchestrator.tune.scheduling import asha_rungs
    from orchestrator.tune.tuner import GRID_KEY, tune_config
    from search_spaces import load_space
    from trainer.config import load_config

    base = load_config(PAPER[3])
    space = load_space(PAPER[1], base)
    fields = {"name": "s", "base": base, "space_path": PAPER[1], "metric": "encoder/dev/eer"}
    fields |= {"mode": "min", "num_samples": 1, "max_concurrent": 1, "scheduler": "asha"}
    fields |= {"workers_per_trial": 2, "cpus_per_worker": 1.0, "gpus_per_trial": 0, "seed": 5}
    fields |= {"max_failures": 0, "out_dir": "/o"}
    settings = SweepSettings(**fields, tracking=TrackingTarget("sqlite:////o/m.db", "e"))
    param_space, _ = tune_config(space, settings, asha_rungs(space, base))
    tune_order = param_space[GRID_KEY]["grid_search"]
    planned = _order(capsys, "--scheduler", "asha", "--seed", "5")
    assert [_point(t) for t in tune_order] == planned
