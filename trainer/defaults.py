"""The embedded local default: the tiny synthetic corpus that ``trainer/configs/local.yaml`` reads.

Public so that every entry point (``supcon-sweep trial``, ``sweep``, ``trial --ray``) generates it
the same way. Imports torch only when it has to generate.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.config import TrainerConfig

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("runs/data")


def reads_from(cfg: TrainerConfig, data_dir: Path) -> bool:
    """Whether any corpus root of ``cfg`` is ``data_dir`` or lies inside it."""
    target = data_dir.resolve()
    roots = [cfg.data.train.root, cfg.data.dev.root, *(d.root for d in cfg.data.eval.values())]
    return any(target == Path(root) or target in Path(root).parents for root in roots)


def ensure_synthetic(cfg: TrainerConfig, data_dir: Path = DEFAULT_DATA) -> bool:
    """Generate the tiny synthetic corpus into ``data_dir`` if ``cfg`` (with absolute roots, see
    :func:`trainer.config.resolve_roots`) reads from it and it is missing. Under a process group
    rank 0 generates and the others wait. Returns whether it generated."""
    if not reads_from(cfg, data_dir) or data_dir.resolve().exists():
        return False
    from trainer import distributed
    from trainer.data.synth import generate

    if distributed.is_main():
        log.info("generating the tiny synthetic corpus into %s", data_dir.resolve())
        generate(data_dir.resolve(), seed=0, size="tiny")
    distributed.barrier()
    return True
