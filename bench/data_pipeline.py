"""Utterances per second of one data-loader worker: decode + crop, then RawBoost algo 5 and 3.

Each case times the training path (``ClipReader`` head crop, :func:`trainer.data.rawboost.rawboost`)
against a plain reference (whole-file ``soundfile.read``, head crop,
:func:`trainer.data.rawboost_reference.rawboost_reference`) on the same clips with the same seeds,
checks that both give the same output, and reports the ratio. One process, one thread: a worker
of a ``DataLoader`` gets one core. Passes alternate between the two paths, so drifts in machine
speed hit both alike.

    python bench/data_pipeline.py            # 24 synthetic-corpus clips of 4 s + 24 of 10 s, ~1 min
    python bench/data_pipeline.py --quick    # about 15 s
    python bench/data_pipeline.py --data DIR # every *.flac under DIR (16 kHz mono)
"""

from __future__ import annotations

import os

# One worker = one thread; must be set before numpy / torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from trainer.data import synth_signal as sig  # noqa: E402
from trainer.data.audio import ClipReader, repeat_pad  # noqa: E402
from trainer.data.config import SAMPLE_RATE, CropConfig, RawBoostConfig  # noqa: E402
from trainer.data.rawboost import rawboost  # noqa: E402
from trainer.data.rawboost_reference import rawboost_reference  # noqa: E402
from trainer.data.synth import ATTACKS, TRAIN_ATTACKS  # noqa: E402

LENGTHS_S = (4, 10)
# Parity bound for the outputs (unit-peak audio); the two paths differ by float rounding only.
ATOL = 1e-5
WARMUP_SEED = 2**20

Pipeline = Callable[[Path, np.random.Generator], np.ndarray]


def write_clips(root: Path, per_length: int, seed: int) -> dict[int, list[Path]]:
    """Clips of the synthetic corpus's signal model at exactly 4 s and 10 s, half of them spoofed
    with training attacks, written as 16-bit FLAC like the corpus."""
    rng = np.random.default_rng(seed)
    clips: dict[int, list[Path]] = {}
    for seconds in LENGTHS_S:
        clips[seconds] = []
        for i in range(per_length):
            wave = sig.utterance(rng, sig.Speaker.draw(rng), seconds * SAMPLE_RATE)
            if i % 2:
                wave = sig.vocode(wave, ATTACKS[TRAIN_ATTACKS[i % len(TRAIN_ATTACKS)]], rng)
            path = root / f"clip_{seconds}s_{i:03d}.flac"
            sf.write(path, sig.finish(wave, rng), SAMPLE_RATE, subtype="PCM_16")
            clips[seconds].append(path)
    return clips


def read_clips(root: Path) -> dict[int, list[Path]]:
    """Every 16 kHz mono FLAC under ``root``, used at both crop lengths."""
    paths = []
    for path in sorted(root.rglob("*.flac")):
        info = sf.info(path)
        if info.samplerate == SAMPLE_RATE and info.channels == 1:
            paths.append(path)
        else:
            print(f"skipping {path}: {info.samplerate} Hz, {info.channels} channels")
    if not paths:
        raise SystemExit(f"no 16 kHz mono *.flac under {root}")
    return dict.fromkeys(LENGTHS_S, paths)


def _paths(n: int, algo: int | None, cfg: RawBoostConfig) -> tuple[Pipeline, Pipeline]:
    """(fast, reference) callables for a crop of ``n`` samples, then RawBoost ``algo`` if set."""
    reader = ClipReader(CropConfig(policy="head", samples=n))

    def fast(path: Path, rng: np.random.Generator) -> np.ndarray:
        wave = reader(path)
        return wave if algo is None else rawboost(wave, algo, cfg, rng)

    def reference(path: Path, rng: np.random.Generator) -> np.ndarray:
        wave, _ = sf.read(path, dtype="float32")
        if algo is None:
            return wave
        return rawboost_reference(repeat_pad(wave, n), algo, cfg, rng)

    return fast, reference


def _pass(fn: Pipeline, clips: list[Path], seed: int) -> tuple[float, list[np.ndarray]]:
    outs = []
    start = time.perf_counter()
    for i, path in enumerate(clips):
        outs.append(fn(path, np.random.default_rng([seed, i])))
    return time.perf_counter() - start, outs


def _max_diff(fast: list[np.ndarray], ref: list[np.ndarray]) -> float:
    # The bare-decode reference of the crop case keeps the whole file; compare the common head.
    diffs = (np.abs(a[: len(b)] - b[: len(a)]).max() for a, b in zip(fast, ref, strict=True))
    return float(max(diffs))


def measure(clips: list[Path], n: int, algo: int | None, repeats: int) -> dict[str, float]:
    """Utterances per second of both paths, passes interleaved, plus their largest difference."""
    fast, reference = _paths(n, algo, RawBoostConfig())
    _, warm_fast = _pass(fast, clips, WARMUP_SEED)
    _, warm_ref = _pass(reference, clips, WARMUP_SEED)
    max_diff = _max_diff(warm_fast, warm_ref)
    spent = {"fast": 0.0, "reference": 0.0}
    for rep in range(repeats):
        seconds, outs_fast = _pass(fast, clips, seed=rep)
        spent["fast"] += seconds
        seconds, outs_ref = _pass(reference, clips, seed=rep)
        spent["reference"] += seconds
        max_diff = max(max_diff, _max_diff(outs_fast, outs_ref))
    utts = len(clips) * repeats
    return {
        "fast": utts / spent["fast"],
        "reference": utts / spent["reference"],
        "max_diff": max_diff,
    }


CASES: tuple[tuple[str, int | None], ...] = (
    ("decode+crop", None),
    ("+ RawBoost algo 5 (LnL, ISD)", 5),
    ("+ RawBoost algo 3 (SSI)", 3),
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, metavar="DIR", help="read every *.flac under DIR instead"
    )
    parser.add_argument("--clips", type=int, default=24, help="generated clips per length")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per path")
    parser.add_argument("--quick", action="store_true", help="8 clips per length, 2 passes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.repeats = 8, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if args.data is not None:
            clips = read_clips(args.data)
        else:
            clips = write_clips(Path(tmp), args.clips, args.seed)
        header = f"{'clip':>5}  {'path':<30} {'fast utt/s':>10} {'ref utt/s':>10} {'ratio':>6}"
        print(header + f" {'max|diff|':>9}")
        ratios: dict[str, list[str]] = {}
        failed = False
        for name, algo in CASES:
            for seconds in LENGTHS_S:
                row = measure(clips[seconds], seconds * SAMPLE_RATE, algo, args.repeats)
                ratio = row["fast"] / row["reference"]
                print(
                    f"{seconds:>3} s  {name:<30} {row['fast']:>10.1f} {row['reference']:>10.1f}"
                    f" {ratio:>5.2f}x {row['max_diff']:>9.1e}"
                )
                ratios.setdefault(name, []).append(f"{ratio:.2f}x at {seconds} s")
                failed |= row["max_diff"] > ATOL
        for name, algo in CASES:
            if algo is not None:
                print(f"RawBoost algo {algo}: fast/reference = {', '.join(ratios[name])}")
    if failed:
        print(f"outputs differ by more than {ATOL}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
