"""Tune's decision as the workers of a trial read it: what the driver decided, a stop when the
driver is gone, and going on after a bounded wait when no decision comes."""

from __future__ import annotations

import logging
import time

import pytest

from orchestrator.train.decisions import CONTINUE, STOP, Decisions, wait_for

pytestmark = pytest.mark.ray


def test_each_epoch_gets_its_own_decision(ray_session) -> None:
    decisions = Decisions.remote()
    ray_session.get(decisions.decide.remote(3, CONTINUE))
    ray_session.get(decisions.decide.remote(6, STOP))
    assert wait_for(decisions, 3, timeout=5) is True
    assert wait_for(decisions, 6, timeout=5) is False


def test_a_rank_waiting_learns_the_decision_when_it_comes(ray_session) -> None:
    decisions = Decisions.remote()
    pending = decisions.wait.remote(2, 30)
    time.sleep(0.5)
    decisions.decide.remote(2, STOP)
    assert ray_session.get(pending) == STOP


def test_a_lost_decision_lets_the_trial_go_on_and_says_so(ray_session, caplog) -> None:
    decisions = Decisions.remote()
    with caplog.at_level(logging.WARNING, logger="orchestrator.train.decisions"):
        started = time.monotonic()
        assert wait_for(decisions, 9, timeout=1.0) is True
    assert time.monotonic() - started < 10
    assert "no decision from Tune within 1 s after epoch 9" in caplog.text


def test_a_driver_gone_means_the_trial_is_over(ray_session) -> None:
    decisions = Decisions.remote()
    ray_session.kill(decisions)
    assert wait_for(decisions, 4, timeout=5) is False
