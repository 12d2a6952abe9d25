"""Shared fixtures: one synthetic corpus per test session (the real readers run on it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.data.synth import generate

# One Ray auth mode for the whole session, set before anything imports Ray (its processes read
# the mode once): token, as on a real cluster. Tests that start Ray, talk to a job server or
# check the cluster configs then agree on it, whatever order they run in.
os.environ.setdefault("RAY_AUTH_MODE", "token")
if os.environ["RAY_AUTH_MODE"] == "token" and not (
    "RAY_AUTH_TOKEN" in os.environ or (Path.home() / ".ray" / "auth_token").is_file()
):
    # Create Ray's default token before any process caches its absence (on a fresh machine
    # the first ray.init or `ray start --head` would create it only later).
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    generate_and_save_token()


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic corpus, seed 0, generated once per session."""
    return generate(
        tmp_path_factory.mktemp("corpus") / "synth", seed=0, size="tiny", progress=False
    )
