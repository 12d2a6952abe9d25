"""``python -m trainer`` (and ``supcon-sweep trial``): one trial (stage 1, stage 2, evaluation).

Under torchrun (``torchrun --nproc_per_node 2 -m trainer ...``) every rank runs this entry point
and the trial runs as DDP; rank 0 alone writes files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from trainer.config import CONFIG_DIR, ConfigError, TrainerConfig, load_config, resolve_roots
from trainer.data.errors import CorpusError
from trainer.defaults import ensure_synthetic

EXIT_FAILED = 1  # the trial ran and failed
EXIT_BAD_INPUT = 2  # bad input; nothing was trained
EXIT_STATUS = (
    "Exit status: 0 done; 1 the trial ran and failed (e.g. a non-finite loss); 2 bad input, "
    "nothing trained (arguments, config file, overrides, a device this machine lacks, a corpus "
    "or pretrained weights that cannot be read)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trial's arguments: ``--config``, ``--out`` and the ``key=value`` overrides."""
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


def _print_table(metrics: dict[str, float]) -> None:
    rows = [
        ("dev (stage 1, centroid)", metrics.get("encoder/dev/eer")),
        ("dev (stage 2)", metrics.get("classifier/dev/eer")),
    ]
    names = sorted(
        {k.split("/")[1] for k in metrics if k.startswith("eval/")} - {"pooled_mean", "pooled_all"}
    )
    for n in names:
        # ASVspoof 2021: the literature's eval subset, then every trial of the key (the authors').
        every = metrics.get(f"eval/{n}/eer_all")
        rows.append(
            (
                f"eval {n}" + (" (eval subset)" if every is not None else ""),
                metrics[f"eval/{n}/eer"],
            )
        )
        rows.append((f"eval {n} (every trial)", every))
    rows += [
        ("pooled (mean of sets)", metrics.get("eval/pooled_mean/eer")),
        ("pooled (all scores)", metrics.get("eval/pooled_all/eer")),
    ]
    if any(f"eval/{n}/eer_all" in metrics for n in names):
        rows.append(("pooled (mean, 2021 every trial)", metrics.get("eval/pooled_mean/eer_all")))
    print(f"\n{'set':<33} {'EER %':>7}")
    for name, value in rows:
        if value is not None:
            print(f"{name:<33} {100 * value:>7.2f}")


def _error(err: Exception, code: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return code


def check_out(out: Path) -> None:
    """ConfigError naming ``out`` when the trial's output folder cannot be made or written
    (checked before anything is trained; the folder is what the trial writes anyway)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write --out {out}: {err.strerror or err}") from None


def run(args: argparse.Namespace) -> int:
    """The trial handler (``args`` from :func:`add_arguments`); returns the exit status.

    The config is validated before torch or transformers are imported (they take seconds), so a
    typo answers at once. 2: bad input (:class:`~trainer.config.ConfigError`, ``CorpusError``,
    ``ModelLoadError``); 1: the trial failed (non-finite loss, another ``ValueError``).
    """
    try:
        cfg = resolve_roots(load_config(args.config, args.overrides))
        check_out(args.out.resolve())
    except ConfigError as err:
        return _error(err, EXIT_BAD_INPUT)
    return _run_trial(cfg, args.config is None, args.out.resolve())


def _run_trial(cfg: TrainerConfig, local_default: bool, out: Path) -> int:
    from trainer import distributed
    from trainer.model import ModelLoadError
    from trainer.run import run_trial
    from trainer.step import NonFiniteLossError

    try:
        if local_default:
            distributed.init_from_env()  # under torchrun, rank 0 alone generates the corpus
            ensure_synthetic(cfg)
        metrics = run_trial(cfg, out)
        main_rank = distributed.is_main()
    except (ConfigError, CorpusError, ModelLoadError) as err:
        return _error(err, EXIT_BAD_INPUT)
    except (NonFiniteLossError, ValueError) as err:
        return _error(err, EXIT_FAILED)
    finally:
        distributed.destroy()
    if main_rank:
        _print_table(metrics)
        print(f"\noutputs in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer [--config FILE] [--out DIR] [key=value ...]``; the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description=__doc__,
        epilog=EXIT_STATUS,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
