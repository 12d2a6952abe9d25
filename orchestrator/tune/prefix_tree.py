"""A sweep's prefix tree: which trials share a training prefix, which one trains it, and the
epoch each of the others starts from (see :mod:`trainer.prefix` for the rule and
:mod:`orchestrator.train.prefixes` for what happens at run time). Nothing here imports Ray.

For a grid the tree is known before the first trial: trials with the same prefix id form a
group; its *trunk* is the member whose queue acts last (a no-queue trial when there is one), and
every other member starts from the trunk's state at its own divergence epoch, the start of its
queue. The grid then runs in waves: every group's trunk first, then every group's second
member, and so on, so that with several trials at once the trunks train side by side and a
member rarely waits. Under ASHA the groups keep the seeded permutation's order (each wave is
shuffled with it), but a queue trial always comes after its trunk: ASHA then judges the queue
trials against a population that already holds the no-queue ones.

A sampled space (TPE, random) shares what coincides: only discrete values coincide, so when a
key that is part of the prefix is continuous (``loguniform``, ``uniform``) nothing is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces import SearchSpace
from trainer.config import TrainerConfig, apply_overrides, flatten
from trainer.prefix import LATE_KEYS, divergence_epoch, point_key, prefix_id


@dataclass(frozen=True)
class TreeNode:
    """One trial of the tree, at its position in run order: its prefix id, the epoch its queue
    first acts (``diverges``), the epoch it starts from (``fork``, 0: from scratch) and the
    position of the trial that trains that prefix (``source``, None for a trunk)."""

    point: dict[str, Any]
    prefix: str
    diverges: int
    fork: int
    source: int | None


@dataclass(frozen=True)
class PrefixTree:
    nodes: tuple[TreeNode, ...]
    epochs: int  # stage-1 epochs per trial

    @property
    def points(self) -> list[dict[str, Any]]:
        return [n.point for n in self.nodes]

    @property
    def trial_epochs_saved(self) -> int:
        """Stage-1 trial-epochs the forks do not train (before early stopping or ASHA)."""
        return sum(n.fork for n in self.nodes)

    @property
    def trial_epochs(self) -> int:
        return len(self.nodes) * self.epochs

    def plan(self) -> dict[str, tuple[str, int]]:
        """Point key -> (prefix id, planned fork epoch): the ledger's plan."""
        return {point_key(n.point): (n.prefix, n.fork) for n in self.nodes}

    def publish_epochs(self, position: int) -> list[int]:
        """The epochs at which the trunk at ``position`` publishes its state."""
        return sorted({n.fork for n in self.nodes if n.source == position})

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "trial": i + 1,
                "point": n.point,
                "prefix": n.prefix,
                "diverges_at_epoch": n.diverges,
                "starts_at_epoch": n.fork,
                "starts_from_trial": None if n.source is None else n.source + 1,
                "publishes_at_epochs": self.publish_epochs(i),
            }
            for i, n in enumerate(self.nodes)
        ]

    def describe(self, keys: Sequence[str]) -> list[str]:
        """The tree as a user reads it: each trunk, then the trials that start from it."""
        saved, total = self.trial_epochs_saved, self.trial_epochs
        share = f" ({100 * saved / total:.1f}%)" if total else ""
        trunks = [i for i, n in enumerate(self.nodes) if n.source is None]
        lines = [
            f"shared prefixes: {len(trunks)} prefix(es) for {len(self.nodes)} trial(s); "
            f"{saved} of {total} stage-1 trial-epochs are not trained again{share}"
        ]

        def shown(node: TreeNode) -> str:
            return "  ".join(f"{k}={node.point[k]}" for k in keys) or "(the one point)"

        for i in trunks:
            node, epochs = self.nodes[i], self.publish_epochs(i)
            published = f", publishes epoch(s) {', '.join(map(str, epochs))}" if epochs else ""
            lines.append(f"  {i + 1:>3}  {shown(node)}  trains from scratch{published}")
            for j, child in enumerate(self.nodes):
                if child.source == i:
                    lines.append(
                        f"  {j + 1:>3}    {shown(child)}  starts at epoch {child.fork} "
                        f"(from {i + 1})"
                    )
        return lines


def build_tree(
    points: Sequence[dict[str, Any]], base: TrainerConfig, world_size: int
) -> PrefixTree:
    """The tree of a grid's ``points`` (in their run order), reordered in waves (see the
    module)."""
    groups: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for point in points:
        cfg = apply_overrides(base, point)
        groups.setdefault(prefix_id(cfg, world_size), []).append((point, divergence_epoch(cfg)))
    for members in groups.values():
        members.sort(key=lambda member: -member[1])  # stable: the run order within a tie
    nodes: list[TreeNode] = []
    trunk_at: dict[str, int] = {}
    for wave in range(max(len(m) for m in groups.values())):
        for prefix, members in groups.items():
            if wave >= len(members):
                continue
            point, diverges = members[wave]
            if wave == 0:
                trunk_at[prefix] = len(nodes)
                nodes.append(TreeNode(point, prefix, diverges, 0, None))
            elif diverges > 0:
                nodes.append(TreeNode(point, prefix, diverges, diverges, trunk_at[prefix]))
            else:  # its queue acts from epoch 0: nothing to share
                nodes.append(TreeNode(point, prefix, diverges, 0, None))
    return PrefixTree(tuple(nodes), base.stage1.epochs)


def searched_candidates(space: SearchSpace, base: TrainerConfig) -> tuple[frozenset[int], str]:
    """For a sampled space: the epochs at which its trials publish their prefix (where a
    queue can start; the last epoch too when the queue can be off), and why none when a key of
    the prefix is continuous."""
    continuous = [
        k
        for k, p in space.params.items()
        if k not in LATE_KEYS and p.kind in ("loguniform", "uniform")
    ]
    if continuous:
        return frozenset(), (
            f"{', '.join(continuous)} {'is' if len(continuous) == 1 else 'are'} continuous: two "
            "trials almost never share a prefix, so none is published (use categorical values "
            "to share)"
        )
    epochs = base.stage1.epochs
    param = space.params.get("queue.start_epoch")
    if param is None:
        starts = {flatten(base)["queue.start_epoch"]}
    elif param.kind == "int":
        starts = set(range(param.values[0], param.values[1] + 1, param.step))
    else:
        starts = set(param.values)
    sizes = space.params.get("queue.size")
    can_be_off = (0 in sizes.values) if sizes is not None else base.queue.size == 0
    found = {min(int(s), epochs) for s in starts if int(s) > 0}
    found |= {epochs} if can_be_off else set()
    return frozenset(found), (
        f"trials that coincide on every other key share their prefix; each publishes its state "
        f"at epoch(s) {', '.join(map(str, sorted(found))) or '(none)'}, kept until the sweep ends"
    )
