"""A grid sweep that shares its training prefixes against the same sweep without sharing:
every trial's every epoch is equal, it trains fewer trial-epochs by exactly the shared prefixes,
and it survives a killed parent and a killed driver's ``resume``.

The grid: a trunk without a queue (it trains all 3 epochs), two queues from epoch 1 (siblings
forked at one epoch) and one from epoch 2 (a chain: the trunk publishes epochs 1 and 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.settings import DEFAULT_EXPERIMENT
from tests.helpers import ROOT, cli_env, run_cli, sweep_args, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = """\
grids:
  - {queue.size: 0}
  - {queue.size: {grid: [16, 32]}, queue.start_epoch: 1}
  - {queue.size: 16, queue.start_epoch: 2}
loss.temperature: 0.3
"""
SAVED = 1 + 1 + 2  # the two forks at epoch 1 and the one at epoch 2
EPOCHS = 3


def _args(out: Path, synth_root: Path, *extra: str) -> list[str]:
    space = out.parent / f"{out.name}-space.yaml"
    space.write_text(SPACE)
    args = sweep_args(out, synth_root, "--name", "prefix", *extra, workers=1)
    args[args.index("--space") + 1] = str(space)
    return args


def _trials(out: Path) -> dict[tuple[str, str], tuple]:
    """(queue.size, queue.start_epoch) -> (run, {(metric, step): value}) of each trial."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`supcon.trial_id` IS NOT NULL")
    found = {}
    for run in runs:
        history = {
            (key, m.step): m.value
            for key in run.data.metrics
            if not key.startswith(("time/", "prefix/"))  # wall times; what was not trained
            for m in client.get_metric_history(run.info.run_id, key)
        }
        found[(run.data.params["queue.size"], run.data.params["queue.start_epoch"])] = (
            run,
            history,
        )
    return found


def _trained_epochs(out: Path) -> set[tuple[str, int]]:
    """(trial, epoch) of every epoch a trial trained and reported itself (Tune's results: a
    fork reports only its own epochs)."""
    trained = set()
    for results in (out / "tune" / "prefix").glob("*/result.json"):
        for line in results.read_text().splitlines():
            row = json.loads(line)
            if "classifier/dev/eer" not in row:  # the final report is not an epoch
                trial = "_".join(results.parent.name.split("_")[3:5])  # _trial_driver_ID_N_...
                trained.add((trial, int(row["epoch"])))
    return trained


def _parent_metrics(out: Path) -> dict[str, float]:
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`supcon.trial_id` IS NULL")
    return parent.data.metrics


def _assert_equal_to(shared: Path, reference: Path, context: str = "", tree: bool = True) -> None:
    """Every trial of ``shared`` equals the reference's, every epoch; ``tree``: each fork
    started where the tree says, else (after faults) anywhere within its own prefix, from the
    trunk's run, with the parent's saving their sum."""
    mine, theirs = _trials(shared), _trials(reference)
    assert mine.keys() == theirs.keys() and len(mine) == 4
    for point, (run, history) in mine.items():
        other_run, other = theirs[point]
        assert history.keys() == other.keys(), point  # the prefix epochs are in the fork's run
        differ = sorted(k for k in history if history[k] != other[k])
        assert not differ, f"{point}: {differ}"  # equal, not close
        assert run.info.status == other_run.info.status == "FINISHED"
        # every epoch once, and the final summary after them
        steps = sorted(s for k, s in history if k == "encoder/train/loss")
        assert steps == list(range(EPOCHS)), point
    forks = {p: r.data.tags.get("supcon.forked_from") for p, (r, _) in mine.items()}
    trunk_run = mine[("0", "2")][0].info.run_id  # the base config's start, unused at size 0
    saved = _parent_metrics(shared)["sweep/trial_epochs_saved"]
    if tree:
        assert forks == {
            ("0", "2"): None,
            ("16", "1"): f"{trunk_run}@1",
            ("32", "1"): f"{trunk_run}@1",
            ("16", "2"): f"{trunk_run}@2",
        }, context
        assert saved == SAVED
        return
    starts = {p: int(f.rsplit("@", 1)[1]) for p, f in forks.items() if f is not None}
    assert starts and forks[("0", "2")] is None, context
    assert all(forks[p].startswith(trunk_run) and e <= int(p[1]) for p, e in starts.items())
    assert saved == sum(starts.values()), context
    assert not (shared / "prefixes").exists()  # every prefix checkpoint deleted


@pytest.fixture(scope="module")
def reference(ray_session, synth_root: Path, tmp_path_factory) -> Path:
    """The grid without sharing: every trial from scratch."""
    out = tmp_path_factory.mktemp("prefix") / "reference"
    assert main([*_args(out, synth_root, "--max-concurrent", "2"), "--no-share-prefix"]) == 0
    assert len(_trained_epochs(out)) == 4 * EPOCHS
    return out


def test_shared_prefixes_give_the_same_epochs_for_fewer_trial_epochs(
    reference: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "shared"
    assert main(_args(out, synth_root, "--max-concurrent", "2")) == 0
    printed = capsys.readouterr()  # every fork forked: the chain's waited for its epoch 2
    assert f"shared prefixes: {SAVED} stage-1 trial-epochs were not trained again" in printed.err
    _assert_equal_to(out, reference)
    assert len(_trained_epochs(out)) == len(_trained_epochs(reference)) - SAVED


def _published(out: Path, epoch: int) -> bool:
    return any((out / "prefixes").glob(f"*/epoch-{epoch}.*/prefix.json"))


def test_a_killed_parent_and_a_resumed_sweep_still_share_and_match(
    reference: Path, ray_session, synth_root: Path, tmp_path: Path
) -> None:
    """The trunk's worker is killed right after it published epoch 1 (Ray Train restarts it
    from its checkpoint while the chain's fork waits for epoch 2); then the sweep's driver is
    killed once a fork has a checkpoint of its own, and ``resume`` finishes the sweep: every
    trial equals the reference, and every fork started from the trunk within its prefix."""
    from ray.util.state import list_actors

    address = ray_session.get_runtime_context().gcs_address
    out = tmp_path / "killed"
    args = _args(out, synth_root, "--max-concurrent", "2", "--address", address)
    log = (tmp_path / "driver.log").open("w")
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    driver = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: _published(out, 1) or driver.poll() is not None, 240, "epoch 1 published")
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=address, filters=alive)
    assert len(workers) == 1, "only the trunk trains: its fork waits without a worker"
    os.kill(workers[0].pid, signal.SIGKILL)

    def a_fork_checkpointed() -> bool:
        return len({p.parent for p in (out / "train").glob("*/checkpoint_*")}) >= 2

    wait_for(lambda: a_fork_checkpointed() or driver.poll() is not None, 300, "a fork's epoch")
    tail = (tmp_path / "driver.log").read_text()[-3000:]
    assert driver.poll() is None, f"the sweep ended before its driver could be killed:\n{tail}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = run_cli("resume", str(out / "tune" / "prefix"), "--address", address)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 trial(s), 0 failed" in done.stdout
    logs = (tmp_path / "driver.log").read_text()[-6000:] + done.stdout[-4000:]
    # Where each fork starts depends on timing: a killed trunk can fail for good (seen once, on
    # a loaded fresh clone), and its forks then train the rest of their prefix themselves.
    _assert_equal_to(out, reference, logs, tree=False)
