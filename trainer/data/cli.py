"""The ``supcon-sweep data`` subcommands: ``synth`` and ``check``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.data.config import SPLITS, CorpusKind
from trainer.data.errors import CorpusError

KINDS: tuple[str, ...] = CorpusKind.__args__


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``data`` command (``synth``, ``check``) of a command line such as ``supcon-sweep``."""
    data = subparsers.add_parser(
        "data",
        help="generate the synthetic corpus, or check a corpus before training on it",
        description="Corpus tools.",
    )
    add_commands(data)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The ``synth`` and ``check`` subcommands; each sets ``handler`` (returns the exit status)."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{synth,check}")

    synth = sub.add_parser(
        "synth",
        help="write a synthetic corpus in the official ASVspoof 2019/2021 and In-the-Wild layouts",
        description=(
            "Write a small corpus in the exact official layouts of ASVspoof 2019 LA (LA/), "
            "ASVspoof 2021 LA and DF (ASVspoof2021/) and In-the-Wild (itw/). Spoofs differ from "
            "bona fide only by a vocoder artefact; evaluation sets use unseen attacks and "
            "channels. Deterministic for a seed; an existing corpus of the same seed and size "
            "is reused."
        ),
    )
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--size",
        choices=("micro", "tiny", "small"),
        default="tiny",
        help="micro: ~300 clips of 1-2 s, seconds to make (the tests); tiny (default, make "
        "sweep): ~1,700 clips of 1-2 s with >= 100 per class in every scored set and a weaker "
        "vocoder artefact, about half a minute to make on 2 cores; small: ~2,400 clips of 2-5 s",
    )
    synth.add_argument(
        "--workers",
        type=int,
        help="processes rendering clips (default: one per available core, one for fewer than "
        "500 clips); the files are the same for any number",
    )
    synth.set_defaults(handler=_synth)

    check = sub.add_parser(
        "check",
        help="count labels, attacks, missing/unreadable files, rates and durations per split",
        description=(
            "Read a corpus layout and report, per split, counts by label and attack, missing "
            "and unreadable files, sample rates and durations. Exit status 1 when the corpus "
            "cannot be used as it is."
        ),
    )
    check.add_argument("--kind", choices=KINDS, required=True, help="corpus layout")
    check.add_argument("--root", type=Path, required=True, help="corpus root directory")
    check.add_argument(
        "--split",
        help="one split (default: every split of the corpus): "
        + "; ".join(f"{kind}: {', '.join(splits)}" for kind, splits in SPLITS.items())
        + "; manifest: the stem of ROOT/SPLIT.csv",
    )
    check.add_argument(
        "--subset",
        choices=("eval", "progress", "hidden", "all"),
        default="eval",
        help="ASVspoof 2021 subset (default eval, the one the literature reports)",
    )
    check.add_argument(
        "--decode",
        action="store_true",
        help="decode every file fully (finds corruption past the header; slower)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=_check, parser=check)


def _synth(args: argparse.Namespace) -> int:
    from trainer.data.synth import generate

    try:
        out = generate(args.out, seed=args.seed, size=args.size, workers=args.workers)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"synthetic corpus ({args.size}, seed {args.seed}) at {out.resolve()}")
    for kind, sub in (
        ("asvspoof2019", "LA"),
        ("asvspoof2021-la", "ASVspoof2021"),
        ("asvspoof2021-df", "ASVspoof2021"),
        ("itw", "itw"),
    ):
        print(f"  --kind {kind:<16} --root {out / sub}")
    return 0


def _split_problem(kind: str, split: str | None) -> str | None:
    """Why ``--split`` cannot be a split of ``kind`` (None when it can)."""
    if split is None:
        return None
    allowed = SPLITS.get(kind)
    if allowed is not None and split not in allowed:
        return f"{split!r} is not a split of {kind}; choose from {', '.join(allowed)}"
    if kind == "manifest" and (not split or "/" in split):
        return f"a manifest split is the stem of ROOT/SPLIT.csv, got {split!r}"
    return None


def _check(args: argparse.Namespace) -> int:
    from trainer.data.check import check_corpus, format_report

    problem = _split_problem(args.kind, args.split)
    if problem is not None:
        args.parser.error(f"argument --split: {problem}")  # exit 2, as argparse's own checks
    try:
        reports = check_corpus(
            args.kind, args.root, split=args.split, subset=args.subset, decode=args.decode
        )
    except (CorpusError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    usable = all(r.usable for r in reports.values())
    if args.json:
        payload = {
            "kind": args.kind,
            "root": str(args.root),
            "subset": args.subset,
            "usable": usable,
            "splits": {name: rep.to_json() for name, rep in reports.items()},
        }
        print(json.dumps(payload, indent=2))
    else:
        print(format_report(args.kind, args.root, reports))
    return 0 if usable else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.data {synth,check} ...``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trainer.data", description="Corpus tools.")
    add_commands(parser)
    args = parser.parse_args(argv)
    return args.handler(args)
