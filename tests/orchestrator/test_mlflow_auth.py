"""The team MLflow server (``supcon-sweep cluster server``) on a real PostgreSQL with MLflow's
basic-auth app, on loopback: what a request without a login gets, how fast a trial with a wrong
password fails and what it says, what the CLI refuses before it starts anything, and where the
secrets are (and are not)."""

from __future__ import annotations

import os
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.tracking import Tracking, TrackingError
from tests.helpers import process_tree, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def server(team_server):
    return team_server


@pytest.fixture
def login(server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The sweep user's credentials in this process's environment, as a node exports them."""
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return dict(server.env)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_request_without_credentials_is_refused(server) -> None:
    assert _status(f"{server.url}/health") == 200  # probes need no login
    assert _status(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert _status(f"{server.url}/") == 401  # the UI too


def test_the_sweep_user_writes_and_a_wrong_password_fails_fast(
    server, login: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sweep = Tracking.at(server.url, "auth-test").start_sweep(
        "auth", searcher="grid", params={}, tags={}, space_text=None
    )
    trial = Tracking(sweep.target).open_trial("t1", {"a": 1}, spool=tmp_path / "unsent.jsonl")
    trial.log_metrics({"encoder/dev/eer": 0.2}, step=0)

    wrong = "not-the-password-" + "x" * 8
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", wrong)
    started = time.monotonic()
    with pytest.raises(TrackingError) as refused:
        trial.log_metrics({"encoder/dev/eer": 0.1, "encoder/dev/loss": 1.0}, step=1)
    assert time.monotonic() - started < 30, "a 401 must not wait out the outage patience (300 s)"
    message = str(refused.value)
    assert f"refused user {login['MLFLOW_TRACKING_USERNAME']!r}" in message and "401" in message
    assert wrong not in message and login["MLFLOW_TRACKING_PASSWORD"] not in message
    assert "2 metric points not logged" in message  # kept, as an outage's are
    assert len((tmp_path / "unsent.jsonl").read_text().splitlines()) == 2

    started = time.monotonic()
    with pytest.raises(TrackingError, match="refused user 'sweep'"):
        Tracking(sweep.target).open_trial("t2", {"a": 2})
    assert time.monotonic() - started < 30

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login["MLFLOW_TRACKING_PASSWORD"])
    run = Tracking(sweep.target).run(trial.run_id)
    assert run.data.metrics == {"encoder/dev/eer": 0.2}  # what was sent before the refusal


def test_the_cli_refuses_missing_or_wrong_credentials_naming_the_user(
    server, login: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in login:
        monkeypatch.delenv(key)
    done = run_cli("best", "--tracking-uri", server.url, timeout=120)
    assert done.returncode != 0
    assert "asks for credentials" in done.stderr and "MLFLOW_TRACKING_USERNAME" in done.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-1234")
    done = run_cli("best", "--tracking-uri", server.url, timeout=120)
    assert done.returncode != 0
    assert "refused user 'someone'" in done.stderr
    assert "wrong-password-1234" not in done.stderr + done.stdout


def test_secrets_stay_in_private_files_and_off_command_lines(server, login: dict[str, str]) -> None:
    """Every secret is a mode-600 file in a mode-700 folder; none is on a command line (``ps``
    shows those to every user) or in a log."""
    folder = server.folder / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    secrets = {}
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        if path.suffix in (".pw", ".key"):
            secrets[path.name] = path.read_text().strip()
    secrets["sweep password"] = login["MLFLOW_TRACKING_PASSWORD"]
    assert {"admin.pw", "postgres.pw", "mlflow-db.pw", "flask.key"} <= set(secrets)
    commands = [" ".join(p.cmdline()) for p in process_tree(server.pid)]
    assert any("mlflow" in c and "basic-auth" in c for c in commands)
    assert any("postgres" in c and "127.0.0.1" in c for c in commands)
    logs = [p.read_text(errors="replace") for p in server.folder.glob("**/*.log")]
    for name, secret in secrets.items():
        assert not [c for c in commands if secret in c], f"{name} on a command line"
        assert not [t for t in logs if secret in t], f"{name} in a log"
    mlflow_env = [p for p in process_tree(server.pid) if "basic-auth" in " ".join(p.cmdline())]
    for proc in mlflow_env:  # the server never holds a client login
        assert "MLFLOW_TRACKING_PASSWORD" not in proc.environ()
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "sweep"
