"""The objective's rule without Ray: a per-epoch metric is read at the epoch stage 1 delivers
(the monitor's first best), so the number ranked is the number of the model delivered."""

from __future__ import annotations

import math

import pytest

from orchestrator.objective import MONITOR_KEYS, Objective

LOSS, EER = MONITOR_KEYS["dev_loss"], MONITOR_KEYS["dev_eer"]


def _history(*rows: tuple[float, float]) -> list[dict[str, float]]:
    return [{EER: eer, LOSS: loss, "epoch": float(i)} for i, (eer, loss) in enumerate(rows)]


def test_the_dev_eer_is_read_at_the_dev_losss_best_epoch() -> None:
    history = _history((0.30, 2.0), (0.10, 1.9), (0.20, 1.5), (0.05, 1.7))
    objective = Objective(EER, "min", monitor=LOSS)
    assert objective.delivered(history)["epoch"] == 2
    assert objective.final({}, history) == 0.20  # not 0.05: epoch 3's weights are not kept
    assert [objective.so_far(history[: i + 1]) for i in range(4)] == [0.30, 0.10, 0.20, 0.20]
    assert Objective(EER, "min", monitor=EER).final({}, history) == 0.05


def test_ties_keep_the_first_best_epoch_as_stage_1_does() -> None:
    history = _history((0.30, 1.0), (0.10, 1.0))
    assert Objective(EER, "min", monitor=LOSS).so_far(history) == 0.30


def test_no_finite_monitor_gives_nan() -> None:
    history = [{EER: 0.1, LOSS: math.nan}]
    assert math.isnan(Objective(EER, "min", monitor=LOSS).so_far(history))


def test_an_end_of_trial_metric_is_its_final_value() -> None:
    objective = Objective("classifier/dev/eer", "min", monitor=LOSS)
    assert objective.final({"classifier/dev/eer": 0.07}, _history((0.3, 1.0))) == 0.07
    assert objective.differs() is None


@pytest.mark.parametrize(
    ("metric", "monitor", "says"),
    [(EER, LOSS, True), (LOSS, LOSS, False), (EER, EER, False), ("encoder/train/loss", EER, True)],
)
def test_the_sweep_says_when_metric_and_monitor_differ(metric, monitor, says) -> None:
    note = Objective(metric, "min", monitor=monitor).differs()
    assert (note is not None) == says
    if says:
        assert metric in note and monitor in note
