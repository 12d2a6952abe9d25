"""Bad input to the sweep commands fails before any trial starts, with a clear message."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator.cli import build_parser, main
from orchestrator.submit import entrypoint

ROOT = Path(__file__).resolve().parents[2]


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


def test_asha_needs_a_per_epoch_metric(tmp_path: Path, capsys) -> None:
    assert main(["sweep", "--out", str(tmp_path), "--metric", "eval/itw/eer"]) == 2
    assert "--scheduler none" in capsys.readouterr().err


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
    assert words[:4] == ["supcon-sweep", "sweep", "--address", "auto"]
    assert words[words.index("--space") + 1] == "search_spaces/paper_grid.yaml"
    assert words[words.index("--gpus-per-trial") + 1] == "2"
    assert words[-1] == "loss.similarity=angular" and "http://head:8265" not in words
