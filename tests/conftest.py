"""Shared fixtures: one synthetic corpus per test run (the real readers run on it).

``make test`` runs two pytest processes side by side (``tests/run_tiers.py``): the tests that
start Ray and those that do not. They share one corpus: the folder in ``SUPCON_TEST_CORPUS``,
written by whichever process asks first while the other waits on a lock (it takes ~50 s on 2
cores). Without that variable each session makes its own.

Nothing here imports Ray: the Ray setup lives in the conftests of the tests that use it
(``tests/orchestrator``, ``tests/cluster``), so trainer and search-space tests run without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

from trainer.data.synth import generate

SHARED_CORPUS = "SUPCON_TEST_CORPUS"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic corpus, seed 0, generated once per run. Tests read it, never
    change it (a test that breaks a file works on its own copy)."""
    shared = os.environ.get(SHARED_CORPUS)
    folder = Path(shared) if shared else tmp_path_factory.mktemp("corpus")
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "synth.lock")):  # generate() reuses a finished corpus
        return generate(folder / "synth", seed=0, size="micro", progress=False)


@pytest.fixture(scope="session")
def micro_trial(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``OUT`` of one local 1-epoch ``supcon-sweep trial`` on the synthetic corpus (no Ray):
    its model folder (an MLflow model), score files and metrics. Tests read it, never change
    it."""
    from orchestrator.cli import main
    from tests.helpers import micro

    out = tmp_path_factory.mktemp("micro_trial")
    assert main(["trial", "--out", str(out), *micro(synth_root, epochs=1)]) == 0
    return out
