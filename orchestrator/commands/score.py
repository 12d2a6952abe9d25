"""``supcon-sweep score``: run a registered (or any) final model on audio and write scores."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.commands.options import (
    DEFAULT_OUT,
    EXIT_FAILED,
    EXIT_STATUS,
    bad_input,
)

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")
CHUNK = 2048  # clips embedded at a time: an unreadable clip costs a re-embed of its chunk only
SHOWN = 10  # unreadable clips listed on the console (all of them go to OUT.unreadable.tsv)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score",
        help="score audio with a registered model, a trial run's model or a model folder",
        description=(
            "Load a final model (models:/NAME@ALIAS or models:/NAME/VERSION from MLflow's "
            "registry, runs:/RUN_ID for that trial run's final model, or a model folder) and "
            "score clips: files and folders (searched for .flac, .wav, .ogg, .mp3), a list "
            "file, or a corpus layout with its key (then the score file is the trial's own "
            "format, with labels, and the EER is printed). Higher scores are more bona fide; "
            "without a corpus each row also carries the model's decision at its dev-EER "
            "threshold. Runs on the GPU when there is one, with a progress bar; prints clips/s."
        ),
        epilog=f"{EXIT_STATUS} A clip that cannot be read is counted and listed (and in "
        "OUT.unreadable.tsv), the others are scored, and the exit status is 1.",
    )
    p.add_argument("--model", required=True, help="models:/..., runs:/RUN_ID or a model folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("paths", nargs="*", default=[], type=Path, metavar="PATH", help="clips")
    what.add_argument("--list", type=Path, metavar="FILE", help="a file of clip paths, one a line")
    what.add_argument(
        "--corpus",
        metavar="KIND:ROOT[:SPLIT]",
        help="a corpus layout (kinds as `data check`; SPLIT default eval), scored with its key",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="the score file (default: standard output)"
    )
    p.add_argument(
        "--tracking-uri",
        help="the MLflow store that holds the registry and runs (default MLFLOW_TRACKING_URI, "
        f"else sqlite:///{DEFAULT_OUT}/mlflow.db)",
    )
    p.set_defaults(handler=_score)


def _corpus_config(spec: str):
    from pydantic import ValidationError

    from trainer.data.config import DatasetConfig

    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"--corpus {spec}: expected KIND:ROOT[:SPLIT]")
    root, _, split = rest.rpartition(":") if rest.count(":") else (rest, "", "")
    root = root or rest
    try:
        return DatasetConfig(kind=kind, root=Path(root), **({"split": split} if split else {}))
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(f"--corpus {spec}: {first['msg']}") from None


def _clips(args: argparse.Namespace) -> list[Path]:
    """The clips named by PATHs (folders searched) or --list; ValueError naming what is wrong."""
    if args.list is not None:
        if not args.list.is_file():
            raise ValueError(f"--list {args.list}: no such file")
        base = args.list.resolve().parent
        lines = args.list.read_text(encoding="utf-8").splitlines()
        named = [Path(x.strip()) for x in lines if x.strip() and not x.lstrip().startswith("#")]
        return [p if p.is_absolute() else base / p for p in named]
    clips: list[Path] = []
    for path in args.paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: a folder with no audio ({', '.join(AUDIO_SUFFIXES)})")
            clips += found
        else:
            clips.append(path)  # a missing file is reported as unreadable, with the others
    return clips


def _utterances(clips: list[Path]):
    from trainer.data.records import Utterance

    stems = [p.stem for p in clips]
    unique = len(set(stems)) == len(stems)
    return [
        Utterance(s if unique else str(p), p, "bonafide") for s, p in zip(stems, clips, strict=True)
    ]


def load_detector(model: str, tracking_uri: str):
    """The :class:`~trainer.detector.Detector` behind ``model``; ValueError naming it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if model.startswith("runs:/"):
        from mlflow.tracking import MlflowClient

        from orchestrator.tracking.store import MODEL_TAG

        run_id = model.removeprefix("runs:/").strip("/").split("/")[0]
        try:
            run = MlflowClient(tracking_uri).get_run(run_id)
        except MlflowException as err:
            raise ValueError(f"--model {model}: {err.message}") from None
        if MODEL_TAG not in run.data.tags:
            raise ValueError(f"--model {model}: the run records no final model ({MODEL_TAG})")
        model = run.data.tags[MODEL_TAG]
    local = "://" not in model and not model.startswith("models:/")
    if local and not (Path(model) / "MLmodel").is_file():
        raise ValueError(f"--model {model}: not an MLflow model folder (no MLmodel)")
    from orchestrator.tracking.pyfunc import using_store

    try:
        with using_store(tracking_uri):
            loaded = mlflow.pyfunc.load_model(model)
    except (MlflowException, OSError) as err:
        raise ValueError(f"--model {model}: {getattr(err, 'message', err)}") from None
    detector = loaded.unwrap_python_model()
    if not hasattr(detector, "score_utterances"):
        raise ValueError(f"--model {model}: not a supcon-sweep detector")
    return detector


def _score_all(detector, utterances, progress: bool):
    """(scores of the readable, [(utterance, reason)] of the unreadable), in order."""
    import numpy as np

    from trainer.data.audio import ClipReader

    reader = ClipReader(detector.final.cfg.data.eval_crop)
    rng = np.random.default_rng(0)
    bad, kept, scores = [], [], []
    for start in range(0, len(utterances), CHUNK):
        chunk = [u for u in utterances[start : start + CHUNK] if _exists(u, bad)]
        try:
            values = detector.score_utterances(chunk, progress=progress) if chunk else []
        except Exception:
            failed = []
            for u in chunk:  # which clips broke it: read each as the model reads it
                try:
                    reader(u.path, rng)
                except Exception as err:
                    failed.append((u, str(err).splitlines()[0] if str(err) else type(err).__name__))
            if not failed:
                raise
            bad += failed
            gone = {u.utt_id for u, _ in failed}
            chunk = [u for u in chunk if u.utt_id not in gone]
            values = detector.score_utterances(chunk, progress=progress) if chunk else []
        kept += chunk
        scores.append(np.asarray(values, dtype=np.float64))
    return kept, (np.concatenate(scores) if scores else np.zeros(0)), bad


def _exists(utterance, bad: list) -> bool:
    if os.path.isfile(utterance.path):
        return True
    bad.append((utterance, "no such file"))
    return False


def _write(path: Path | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _score(args: argparse.Namespace) -> int:
    out = args.out
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        why = "is a directory" if out.is_dir() else "is in a folder that does not exist"
        return bad_input(f"--out {out} {why}; name the score file to write")
    corpus = None
    try:
        if args.corpus:
            corpus = _corpus_config(args.corpus)
            clips = None
        else:
            clips = _clips(args)
    except ValueError as err:
        return bad_input(err)

    from orchestrator.tracking import resolve_tracking_uri
    from trainer.data.errors import CorpusError

    split = None
    if corpus is not None:
        from trainer.data.corpora import read_corpus

        try:
            split = read_corpus(corpus, scoring=True)
        except (CorpusError, OSError) as err:
            return bad_input(f"--corpus {args.corpus}: {err}")
    uri = resolve_tracking_uri(args.tracking_uri, DEFAULT_OUT)
    try:
        detector = load_detector(args.model, uri)
    except ValueError as err:
        return bad_input(err)
    utterances = list(split.utterances) if split is not None else _utterances(clips)
    started = time.monotonic()
    kept, scores, bad = _score_all(detector, utterances, progress=sys.stderr.isatty())
    took = max(time.monotonic() - started, 1e-9)
    if split is not None:
        text = _corpus_text(split, kept, scores, bad, args.corpus)
    else:
        text = _clip_text(detector, kept, scores)
    _write(out, text)
    device = detector.rt.device
    print(
        f"scored {len(kept)} clip(s) in {took:.1f} s ({len(kept) / took:.1f} clips/s) on "
        f"{device}" + (f"; wrote {out}" if out else ""),
        file=sys.stderr,
    )
    if bad:
        listing = "".join(f"\n  {u.path}: {why}" for u, why in bad[:SHOWN])
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        where = ""
        if out is not None:
            side = out.with_name(out.name + ".unreadable.tsv")
            _write(side, "".join(f"{u.path}\t{why}\n" for u, why in bad))
            where = f" (all listed in {side})"
        print(
            f"error: {len(bad)} of {len(utterances)} clip(s) could not be read and were not "
            f"scored{where}:{listing}{more}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _clip_text(detector, kept, scores) -> str:
    threshold = detector.decision.threshold if detector.decision is not None else None
    lines = ["utt_id\tscore\tdecision\tpath\n"]
    for u, s in zip(kept, scores.tolist(), strict=True):
        decision = "-" if threshold is None else ("bonafide" if s > threshold else "spoof")
        lines.append(f"{u.utt_id}\t{s!r}\t{decision}\t{u.path}\n")
    return "".join(lines)


def _corpus_text(split, kept, scores, bad, spec: str) -> str:
    """The trial's score-file format (:func:`trainer.scores.write_scores`), and the EER."""
    from dataclasses import replace

    from trainer.evaluate import SetScores

    if bad:
        split = replace(split, utterances=tuple(kept))
    with tempfile.TemporaryDirectory() as tmp:
        scored = SetScores.of("scores", split, scores)
        text = scored.write(Path(tmp)).read_text(encoding="utf-8")
    r = scored.result
    print(
        f"{spec}: EER {100 * r.eer:.2f} % ({r.n_bonafide} bona fide, {r.n_spoof} spoof), "
        f"95% interval {100 * scored.interval.low:.2f}-{100 * scored.interval.high:.2f} %",
        file=sys.stderr,
    )
    return text
