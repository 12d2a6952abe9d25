"""Shared prefixes without Ray: a grid's tree and its dry run, and the ledger's rules on real
folders (who trains, who waits, who forks, when a checkpoint goes, what a new ledger finds)."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.cli import main
from orchestrator.settings import ForkSource
from orchestrator.train.prefixes import MARKER, Ledger
from orchestrator.tune.prefix_tree import build_tree, searched_candidates
from search_spaces import load_space
from tests.helpers import ROOT
from trainer.config import load_config

PAPER_CONFIG = ROOT / "trainer" / "configs" / "paper.yaml"


def _tree(space: str):
    base = load_config(PAPER_CONFIG)
    return build_tree(load_space(ROOT / "search_spaces" / space, base).grid_points(), base, 2)


def test_the_paper_grids_trees() -> None:
    """The authors' 16 runs: 8 queue runs start at epoch 5 of their no-queue sibling (40
    trial-epochs); the 40-point factorial: 8 groups of 4 queue sizes x 5 epochs (160)."""
    paper = _tree("paper_grid.yaml")
    assert paper.trial_epochs_saved == 8 * 5
    factorial = _tree("paper_factorial.yaml")
    assert factorial.trial_epochs_saved == 160 and len(factorial.nodes) == 40
    # the waves: every group's trunk (its no-queue trial) first, then the forks
    assert [n.point["queue.size"] for n in factorial.nodes[:8]] == [0] * 8
    for node in factorial.nodes[8:]:
        trunk = factorial.nodes[node.source]
        assert node.fork == 5 and trunk.point["queue.size"] == 0
        same = ("loss.similarity", "loss.temperature")
        assert all(trunk.point[k] == node.point[k] for k in same)


def test_dry_run_prints_the_tree_and_its_saving(tmp_path: Path, capsys) -> None:
    argv = ["sweep", "--dry-run", "--no-data-check", "--config", str(PAPER_CONFIG), "--space"]
    argv += [str(ROOT / "search_spaces" / "paper_grid.yaml"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["trial_epochs_saved"] == 40 and len(planned["tree"]) == 16
    forks = [t for t in planned["tree"] if t["starts_from_trial"] is not None]
    assert len(forks) == 8 and {t["starts_at_epoch"] for t in forks} == {5}
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "40 of 1600 stage-1 trial-epochs are not trained again (2.5%)" in text
    assert "starts at epoch 5 (from 1)" in text
    assert main([*argv, "--json", "--no-share-prefix"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["tree"] is None and off["trial_epochs_saved"] is None
    assert "off (--no-share-prefix)" in off["prefix_note"]


def test_a_continuous_key_publishes_nothing_and_a_discrete_one_does(tmp_path: Path) -> None:
    base = load_config()
    default = load_space(ROOT / "search_spaces" / "default.yaml", base)
    epochs, why = searched_candidates(default, base)
    assert epochs == frozenset() and "loss.temperature is continuous" in why
    discrete = tmp_path / "discrete.yaml"
    discrete.write_text(
        "loss.temperature: {categorical: [0.1, 0.3]}\nqueue.size: {categorical: [0, 256]}\n"
        "queue.start_epoch: {int: [0, 4, 2]}\n"
    )
    epochs, _ = searched_candidates(load_space(discrete, base), base)
    assert epochs == {2, 4, base.stage1.epochs}  # the starts, and the end for no queue


def _publish(ledger: Ledger, store: Path, trial: str, prefix: str, epoch: int) -> Path:
    folder = store / prefix / f"epoch-{epoch}.{trial}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"x" * 100)
    source = ForkSource(str(folder), epoch, trial, f"run-{trial}", 12.5, ({"epoch": 0.0},))
    (folder / MARKER).write_text(source.to_json())
    ledger.publish(trial, prefix, source, 100)
    return folder


def test_the_ledger_trains_once_forks_waiters_and_deletes_after_the_last_start(tmp_path: Path):
    store = tmp_path / "prefixes"
    # trunk "t" (no queue), "a" and "b" from epoch 1, "c" from epoch 2: one prefix "p"
    plan = {"t": ("p", 0), "a": ("p", 1), "b": ("p", 1), "c": ("p", 2)}
    ledger = Ledger(str(store), plan)
    # a fork whose driver asks first (they start side by side) lets its trunk go first
    assert ledger.claim("C", "c", "p", 2).wait_for == "the trial that trains this prefix"
    trunk = ledger.claim("T", "t", "p", 3)
    assert trunk.fork is None and trunk.publish == (1, 2)
    assert ledger.claim("A", "a", "p", 1).wait_for == "T"  # promised, not yet published
    first = _publish(ledger, store, "T", "p", 1)
    a = ledger.claim("A", "a", "p", 1)
    assert a.fork is not None and a.fork.epoch == 1 and a.fork.run_id == "run-T"
    b = ledger.claim("B", "b", "p", 1)
    assert b.fork == a.fork and b.publish == ()
    ledger.started("A")
    assert first.is_dir()  # "b" has not started from it yet
    ledger.started("B")
    assert not first.exists()  # its last planned fork started: gone
    # The trunk fails for good before epoch 2: "c" does not wait for it, it trains the
    # prefix itself (nothing earlier is left to start from) and publishes nothing.
    assert ledger.claim("C", "c", "p", 2).wait_for == "T"
    ledger.ended("T")
    c = ledger.claim("C", "c", "p", 2)
    assert c.fork is None and c.wait_for is None and c.publish == ()
    assert ledger.stats["published"] == 1 and ledger.stats["deleted"] == 1


def test_a_new_ledger_finds_what_was_published_and_cleanup_removes_it(tmp_path: Path) -> None:
    store = tmp_path / "prefixes"
    plan = {"t": ("p", 0), "a": ("p", 2)}
    ledger = Ledger(str(store), plan)
    assert ledger.claim("T", "t", "p", 4).publish == (2,)
    _publish(ledger, store, "T", "p", 2)
    (store / "p" / "epoch-3.X").mkdir()  # an upload killed before its marker: never used
    again = Ledger(str(store), plan)  # resume: a new driver, a new ledger
    claim = again.claim("A", "a", "p", 2)
    assert claim.fork is not None and claim.fork.uri.endswith("epoch-2.T")
    assert claim.fork.history == ({"epoch": 0.0},) and claim.fork.seconds == 12.5
    again.cleanup()
    assert not store.exists()


def test_a_sampled_space_shares_what_coincides_and_keeps_it_to_the_end(tmp_path: Path) -> None:
    """No plan: the first trial of a prefix trains it at once (no trunk to wait for) and
    publishes at the epochs a queue can start at; a later suggestion forks at its own start, a
    repeated no-queue suggestion at the end of stage 1; nothing is deleted before cleanup."""
    store = tmp_path / "prefixes"
    ledger = Ledger(str(store), None, frozenset({2, 4, 6}))
    first = ledger.claim("T1", "{}", "p", 6)  # a no-queue trial of 6 epochs
    assert first.wait_for is None and first.fork is None and first.publish == (2, 4, 6)
    folders = [_publish(ledger, store, "T1", "p", e) for e in (2, 4, 6)]
    assert ledger.claim("T2", "{}", "p", 4).fork.epoch == 4
    assert ledger.claim("T3", "{}", "p", 6).fork.epoch == 6  # the same trial again: stage 2 only
    partial = ledger.claim("T4", "{}", "p", 5)  # no checkpoint at 5: from 4, trains 4..5 itself
    assert partial.fork.epoch == 4 and partial.publish == ()
    for trial in ("T2", "T3", "T4"):
        ledger.started(trial)
    assert all(f.is_dir() for f in folders)  # a later suggestion may still want them
    assert ledger.cleanup()["deleted"] == 3 and not store.exists()


def test_a_fork_from_an_earlier_epoch_does_not_use_up_the_planned_forks_checkpoint(
    tmp_path: Path,
) -> None:
    """The trunk fails for good after publishing epoch 1: the fork planned at epoch 2 starts
    from epoch 1 instead; the two forks planned at epoch 1 still find it (found by a fresh
    clone's run, where the third fork then trained from scratch)."""
    store = tmp_path / "prefixes"
    plan = {"t": ("p", 0), "a": ("p", 1), "b": ("p", 1), "c": ("p", 2)}
    ledger = Ledger(str(store), plan)
    ledger.claim("T", "t", "p", 3)
    _publish(ledger, store, "T", "p", 1)
    ledger.ended("T")
    c = ledger.claim("C", "c", "p", 2)
    assert c.fork.epoch == 1 and c.publish == ()
    ledger.started("C")
    for trial, key in (("A", "a"), ("B", "b")):
        assert ledger.claim(trial, key, "p", 1).fork.epoch == 1, trial
        ledger.started(trial)
    assert not (store / "p").exists() or not any((store / "p").iterdir())
