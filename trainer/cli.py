"""``supcon-sweep trial`` and ``python -m trainer``: one trial (stage 1, stage 2, evaluation).

Under torchrun (``torchrun --nproc_per_node 2 -m trainer ...``) every rank runs this entry point
and the trial runs as DDP; rank 0 alone writes files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from trainer import distributed as dist
from trainer.config import CONFIG_DIR, ConfigError, load_config, resolve_roots
from trainer.data.errors import CorpusError
from trainer.defaults import ensure_synthetic

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"trainer YAML (default {CONFIG_DIR / 'local.yaml'}: tiny model, synthetic corpus; "
        f"see also {CONFIG_DIR / 'paper.yaml'})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/trial"),
        help="output folder: config.yaml, checkpoints/, scores/, metrics.json, plots "
        "(default runs/trial); a folder holding a checkpoint of the same config is resumed",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. loss.temperature=0.1 queue.size=1024",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    trial = subparsers.add_parser(
        "trial",
        help="run one trial locally: stage 1, stage 2, evaluation",
        description=(
            "Run one trial of the two-stage trainer in this process (or as DDP under torchrun). "
            "With no arguments: the local default on the synthetic corpus, generated into "
            "runs/data if missing."
        ),
    )
    add_arguments(trial)
    trial.set_defaults(handler=run)


def _print_table(metrics: dict[str, float]) -> None:
    rows = [
        ("dev (stage 1, centroid)", metrics.get("encoder/dev/eer")),
        ("dev (stage 2)", metrics.get("classifier/dev/eer")),
    ]
    names = sorted(
        {k.split("/")[1] for k in metrics if k.startswith("eval/")} - {"pooled_mean", "pooled_all"}
    )
    rows += [(f"eval {n}", metrics[f"eval/{n}/eer"]) for n in names]
    rows += [
        ("pooled (mean of sets)", metrics.get("eval/pooled_mean/eer")),
        ("pooled (all scores)", metrics.get("eval/pooled_all/eer")),
    ]
    print(f"\n{'set':<26} {'EER %':>7}")
    for name, value in rows:
        if value is not None:
            print(f"{name:<26} {100 * value:>7.2f}")


def run(args: argparse.Namespace) -> int:
    from trainer.run import run_trial
    from trainer.stage1 import NonFiniteLossError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.config is None:
            dist.init_from_env()
            ensure_synthetic(resolve_roots(cfg))
        cfg = resolve_roots(cfg)
        metrics = run_trial(cfg, args.out.resolve())
        main_rank = dist.is_main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CorpusError, NonFiniteLossError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        dist.destroy()
    if main_rank:
        _print_table(metrics)
        print(f"\noutputs in {args.out.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
