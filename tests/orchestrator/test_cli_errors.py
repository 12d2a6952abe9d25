"""Bad input to the sweep commands fails before any trial starts, with a clear message and exit
status 2; every command's help states the exit-status policy and shares one text per option.
Nothing here starts Ray."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.cli import build_parser, main
from orchestrator.commands.submit import entrypoint
from orchestrator.settings import SETTINGS_FILE

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = (
    [],
    ["trial"],
    ["sweep"],
    ["resume"],
    ["submit"],
    ["best"],
    ["evaluate"],
    ["confirm"],
    ["cluster"],
    ["cluster", "local"],
)
POLICY = "Exit status: 0 done; 1 the work ran and failed"
TRACKING_URI_HELP = "MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///{}/mlflow.db)"
EXPERIMENT_HELP = "MLflow experiment (default supcon-sweep)"
ADDRESS_HELP = "Ray cluster to join: HOST:PORT, ray://HOST:PORT or auto (default: the cluster"


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The ``--help`` text of ``argv``, whitespace normalised (argparse wraps to the terminal)."""
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "supcon-sweep")
def test_every_help_states_the_exit_status_policy(argv: list[str], capsys) -> None:
    text = _help(argv, capsys)
    assert POLICY in text and "2 bad input or a service that cannot be reached" in text


def test_shared_options_have_one_help_text(capsys) -> None:
    helps = {name: _help([name], capsys) for name in ("sweep", "submit", "best", "trial")}
    for name in ("sweep", "submit", "best"):
        assert TRACKING_URI_HELP.format("OUT") in helps[name], name
        assert EXPERIMENT_HELP in helps[name], name
    assert TRACKING_URI_HELP.format("runs") in helps["trial"]  # trial's --out is not the store's
    assert EXPERIMENT_HELP in helps["trial"]
    for name in ("sweep", "trial"):
        assert ADDRESS_HELP in helps[name], name
    assert ADDRESS_HELP in _help(["resume"], capsys)
    assert "job server" in helps["submit"] and ADDRESS_HELP not in helps["submit"]


def test_trial_on_ray_checks_its_input_before_starting_ray(tmp_path: Path, capsys) -> None:
    assert main(["trial", "--ray", "--out", str(tmp_path), "loss.temprature=0.1"]) == 2
    assert "loss.temprature: unknown key" in capsys.readouterr().err
    argv = ["trial", "--ray", "--out", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"]
    assert main(argv) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "trials").exists()


def test_resume_needs_a_sweep_folder_of_this_version(tmp_path: Path, capsys) -> None:
    assert main(["resume", str(tmp_path)]) == 2
    assert f"is not a sweep folder (no {SETTINGS_FILE})" in capsys.readouterr().err
    old = {"name": "s", "mlflow": {"uri": "sqlite:///x.db", "experiment": "supcon-sweep"}}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(old))
    assert main(["resume", str(tmp_path)]) == 2
    assert "not readable by this version" in capsys.readouterr().err


def test_unreachable_mlflow_fails_before_launching(tmp_path: Path, capsys) -> None:
    code = main(
        ["sweep", "--out", str(tmp_path), "--tracking-uri", "http://user:secret@127.0.0.1:9"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "127.0.0.1:9" in err and "secret" not in err
    assert not (tmp_path / "tune").exists()


def test_bad_space_names_the_key(tmp_path: Path, capsys) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("loss.temprature: {loguniform: [0.03, 1.0]}\n")
    assert main(["sweep", "--space", str(space), "--out", str(tmp_path)]) == 2
    assert "loss.temprature" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # ASHA would never see an end-of-trial metric, so it would stop nothing.
        (["--metric", "classifier/dev/eer"], "--scheduler asha needs a metric reported every"),
        (["--metric", "encoder/best_epoch"], "or one of: encoder/dev/eer"),
        # Sweep trials do not score test sets: nothing would ever report it.
        (["--scheduler", "none", "--metric", "eval/itw/eer"], "use a dev metric"),
        (["--scheduler", "none", "--metric", "encoder/dev/er"], "is not a metric a trial reports"),
        # Two NCCL ranks on one GPU fail at start-up ("Duplicate GPU detected").
        (["--gpus-per-trial", "1", "--workers-per-trial", "2"], "a GPU of its own"),
        (["--gpus-per-trial", "4", "--workers-per-trial", "2"], "--gpus-per-trial 2"),
        # A share of a GPU is for one rank: two ranks of the trial could land on one GPU.
        (["--gpus-per-trial", "0.5", "--workers-per-trial", "2"], "two ranks of the trial on"),
        (["--gpus-per-trial", "0.3", "--workers-per-trial", "1"], "use 1/N (0.5, 0.25"),
    ],
)
def test_a_sweep_that_cannot_work_is_refused_before_any_trial(
    tmp_path: Path, capsys, argv: list[str], said: str
) -> None:
    assert main(["sweep", "--out", str(tmp_path), *argv]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # no parent run, nothing half-written


BAD_NUMBERS = [
    (["sweep"], "--workers-per-trial", "0", "must be 1 or more, got 0"),
    (["sweep"], "--workers-per-trial", "-2", "must be 1 or more, got -2"),
    (["sweep"], "--cpus-per-worker", "0", "must be more than 0, got 0"),
    (["sweep"], "--cpus-per-worker", "-1", "must be more than 0, got -1"),
    (["sweep"], "--cpus-per-worker", "nan", "must be more than 0, got nan"),
    (["sweep"], "--gpus-per-trial", "-1", "must be 0 or more, got -1"),
    (["sweep"], "--max-concurrent", "0", "must be 1 or more, got 0"),
    (["sweep"], "--max-failures", "-5", "must be 0 or more, got -5"),
    (["sweep"], "--num-samples", "0", "must be 1 or more, got 0"),
    (["sweep"], "--num-samples", "-3", "must be 1 or more, got -3"),
    (["sweep"], "--num-samples", "2.5", "expected a whole number, got '2.5'"),
    (["submit"], "--workers-per-trial", "0", "must be 1 or more, got 0"),
    (["trial", "--ray"], "--workers-per-trial", "0", "must be 1 or more, got 0"),
    (["trial", "--ray"], "--cpus-per-worker", "0", "must be more than 0, got 0"),
    (["trial", "--ray"], "--gpus-per-trial", "inf", "must be 0 or more, got inf"),
    (["best"], "--top", "0", "must be 1 or more, got 0"),
    (["confirm", "--sweep", "s"], "--top", "0", "must be 1 or more, got 0"),
    (["confirm", "--sweep", "s"], "--seeds", "0", "must be 1 or more, got 0"),
    (["confirm", "--sweep", "s"], "--n-boot", "0", "must be 1 or more, got 0"),
    (["confirm", "--sweep", "s"], "--max-concurrent", "-1", "must be 1 or more, got -1"),
    (["confirm", "--sweep", "s"], "--workers-per-trial", "0", "must be 1 or more, got 0"),
    (["confirm", "--sweep", "s"], "--gpus-per-trial", "-0.5", "must be 0 or more, got -0.5"),
    (["cluster", "local", "up"], "--nodes", "-1", "must be 0 or more, got -1"),
    (["cluster", "local", "up"], "--worker-cpus", "0", "must be 1 or more, got 0"),
]


@pytest.mark.parametrize(
    ("command", "flag", "value", "said"),
    BAD_NUMBERS,
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_every_numeric_flag_is_checked_before_anything_starts(
    tmp_path: Path, capsys, command: list[str], flag: str, value: str, said: str
) -> None:
    """Exit 2 from argparse, naming the flag; before this, 0 workers or CPUs started Ray and
    failed after ~40 s in tracebacks, and --max-concurrent 0 hung."""
    import ray

    with pytest.raises(SystemExit) as done:
        main([*command, flag, value])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}" in err and f": {said}" in err  # an alias may follow
    assert not ray.is_initialized()


def test_num_samples_on_a_grid_is_ignored_and_said_to_be(tmp_path: Path, capsys) -> None:
    grid = ROOT / "search_spaces" / "paper_grid.yaml"
    argv = ["sweep", "--space", str(grid), "--out", str(tmp_path), "--dry-run", "--json"]
    assert main([*argv, "--no-data-check", "--num-samples", "3"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert "--num-samples 3 ignored" in captured.err and "each of its" in captured.err
    assert len(plan["trials"]) > 3  # every point still runs
    assert main([*argv, "--no-data-check"]) == 0
    assert "ignored" not in capsys.readouterr().err


def test_a_tracking_uri_mlflow_has_no_store_for_is_refused_before_ray(
    tmp_path: Path, capsys
) -> None:
    import ray

    assert main(["sweep", "--out", str(tmp_path), "--tracking-uri", "foo://bar"]) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri foo://bar: MLflow has no tracking store for the scheme 'foo'" in err
    assert "sqlite" in err  # what it does know
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "--gpus-per-trial", "1", "--workers-per-trial", "1"],
        ["sweep", "--gpus-per-trial", "0.5", "--workers-per-trial", "1"],
        ["trial", "--ray", "--gpus-per-trial", "1", "--workers-per-trial", "1"],
    ],
    ids=" ".join,
)
def test_a_gpu_on_a_machine_without_one_is_refused_before_ray(
    tmp_path: Path, capsys, monkeypatch, argv: list[str]
) -> None:
    """It hung on Ray Train's worker start-up timeout, retried every minute."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs 1 GPU(s), and this machine shows CUDA 0" in err
    assert "--gpus-per-trial 0" in err and "--address" in err
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


def test_more_cpus_than_the_machine_has_are_refused_before_ray(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import os

    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = os.cpu_count()
    argv = ["--workers-per-trial", "2", "--cpus-per-worker", str(cpus), "--out", str(tmp_path)]
    assert main(["sweep", *argv]) == 2
    assert f"= {2 * cpus} CPUs, and this machine has {cpus}" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


def test_a_cluster_is_not_checked_for_resources_here(monkeypatch) -> None:
    """An autoscaler may add GPU nodes: joining a cluster leaves the count to Ray."""
    from orchestrator.engine.session import check_local_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_local_resources("head:6379", 64, 8, 64)
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    check_local_resources(None, 64, 8, 64)


def test_an_end_of_trial_metric_is_accepted_without_asha(tmp_path: Path) -> None:
    from orchestrator.objective import check_objective

    objective = check_objective("classifier/dev/eer", "min", "none")
    assert not objective.per_epoch
    assert check_objective("encoder/dev/loss", "min", "asha").per_epoch


@pytest.mark.slow
def test_no_ray_at_address_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            "--out",
            str(tmp_path),
            "--address",
            "127.0.0.1:9",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "127.0.0.1:9" in done.stderr.splitlines()[-1]


def test_submit_to_a_cluster_that_is_not_up(capsys) -> None:
    assert main(["submit", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray job server at http://127.0.0.1:9" in err


def test_submit_entrypoint_runs_the_same_sweep_on_the_cluster() -> None:
    space = str(ROOT / "search_spaces" / "paper_grid.yaml")
    argv = [
        "submit",
        "--address",
        "http://head:8265",
        "--space",
        space,
        "--gpus-per-trial",
        "2",
        "loss.similarity=angular",
    ]
    args = build_parser().parse_args(argv)
    words = shlex.split(entrypoint(args))
    # As a user's `ray job submit -- supcon-sweep sweep ...`: it joins through RAY_ADDRESS.
    assert words[:2] == ["supcon-sweep", "sweep"] and "--address" not in words
    assert words[words.index("--space") + 1] == "search_spaces/paper_grid.yaml"
    assert words[words.index("--gpus-per-trial") + 1] == "2"
    assert words[-1] == "loss.similarity=angular" and "http://head:8265" not in words
    assert "--verbose" not in words
    verbose = shlex.split(entrypoint(build_parser().parse_args([*argv[:-1], "--verbose"])))
    assert "--verbose" in verbose and "True" not in verbose  # a flag stays a flag


def test_inside_a_ray_job_the_sweep_joins_the_cluster_instead_of_starting_its_own(
    monkeypatch,
) -> None:
    """The job supervisor sets RAY_ADDRESS; a private local Ray there made trials on other
    nodes fail (they could not fetch the job's working directory from it)."""
    from orchestrator.engine.session import ray_init_kwargs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_init_kwargs(None, 2)["address"] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "address" not in ray_init_kwargs(None, 2)  # ray.init() reads RAY_ADDRESS itself
    assert ray_init_kwargs("head:6379", 2)["address"] == "head:6379"  # --address still wins


@pytest.mark.parametrize("argv", [["trial"], ["trial", "--ray"]], ids=" ".join)
def test_an_out_folder_that_cannot_be_written_is_refused_before_training(
    argv: list[str], capsys
) -> None:
    assert main([*argv, "--out", "/proc/supcon-out"]) == 2
    err = capsys.readouterr().err
    assert "cannot write --out /proc/supcon-out: " in err and "Traceback" not in err
