"""The trainer runs with Ray, Optuna and MLflow absent; the CLI answers --help."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import trainer

ROOT = Path(__file__).resolve().parents[1]

_BLOCK_AND_IMPORT = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "optuna", "mlflow"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
"""


def test_trainer_imports_without_ray_optuna_mlflow() -> None:
    modules = [
        m.name
        for m in pkgutil.walk_packages(trainer.__path__, "trainer.")
        if not m.name.endswith("__main__")
    ]
    assert "trainer.data.corpora" in modules and "trainer.metrics" in modules
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_AND_IMPORT, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"imported {len(modules)}" in proc.stdout


def test_cli_help_lists_the_data_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "data", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0
    assert "synth" in proc.stdout and "check" in proc.stdout
