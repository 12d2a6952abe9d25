"""The ``supcon-sweep`` command line.

Building the parser imports no torch, transformers, Ray, MLflow or Optuna: each handler imports
them once the arguments, the config and the search space have been checked, so ``--help`` and
bad input answer in well under a second or two.
"""

from __future__ import annotations

import argparse
import logging

from orchestrator.commands import best, cluster, confirm, evaluate, score, submit, sweep, trial
from orchestrator.commands.options import EXIT_STATUS
from trainer.data import cli as data_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supcon-sweep",
        description=(
            "Sweeps of a two-stage XLS-R supervised-contrastive deepfake-audio detector: Ray "
            "Train trials, Ray Tune + Optuna search, MLflow tracking. On one machine everything "
            "runs on embedded defaults (local Ray, SQLite MLflow, a synthetic corpus)."
        ),
        epilog=f"{EXIT_STATUS} `data check` exits 1 when the corpus cannot be used as it is.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.add_parser(sub)
    trial.add_parser(sub)
    sweep.add_parser(sub)
    submit.add_parser(sub)
    evaluate.add_parser(sub)
    confirm.add_parser(sub)
    best.add_parser(sub)
    score.add_parser(sub)
    cluster.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
