"""``python -m trainer`` (also ``supcon-sweep trial``): the front door answers before torch is
imported, and bad input exits 2 before anything is trained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, micro
from trainer.cli import main

_PROBE = (
    "import sys\nfrom trainer.cli import main\n"
    "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as done:\n    code = done.code\n"
    "print(code, [m for m in ('torch', 'transformers', 'ray') if m in sys.modules])"
)


def _front_door(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


def test_a_config_typo_exits_2_naming_the_key_before_torch_is_imported() -> None:
    done = _front_door("loss.temprature=0.1")
    assert "loss.temprature: unknown key" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2 []"


def test_help_imports_nothing_heavy() -> None:
    done = _front_door("--help")
    assert "key=value" in done.stdout and "Exit status" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "0 []"


def test_a_missing_corpus_is_bad_input(tmp_path: Path, capsys) -> None:
    out = tmp_path / "trial"
    assert main(["--out", str(out), *micro(tmp_path / "nowhere")]) == 2
    assert "ASVspoof 2019 LA root not found" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()


def test_missing_pretrained_weights_are_bad_input(synth_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "trial"
    weights = tmp_path / "no-such-model"
    argv = ["--out", str(out), *micro(synth_root), "model.preset=null"]
    assert main([*argv, f"model.pretrained={weights}"]) == 2
    assert f"model.pretrained='{weights}'" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_bad_input(tmp_path: Path, capsys) -> None:
    argv = ["--out", str(tmp_path / "trial"), *micro(tmp_path / "nowhere"), "runtime.device=cuda"]
    assert main(argv) == 2
    assert "runtime.device=cuda but no CUDA device is visible" in capsys.readouterr().err
