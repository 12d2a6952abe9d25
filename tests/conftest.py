"""Shared fixtures: one synthetic corpus per test session (the real readers run on it).

Nothing here imports Ray: the Ray setup lives in the conftests of the tests that use it
(``tests/orchestrator``, ``tests/cluster``), so trainer and search-space tests run without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data.synth import generate


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic corpus, seed 0, generated once per session."""
    return generate(
        tmp_path_factory.mktemp("corpus") / "synth", seed=0, size="micro", progress=False
    )
