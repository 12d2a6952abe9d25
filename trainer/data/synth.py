"""``supcon-sweep data synth``: a small corpus in the exact official layouts of ASVspoof 2019 LA,
ASVspoof 2021 LA and DF, and In-the-Wild, so every reader and the whole pipeline run for real
without the (unavailable here) corpora.

Training and dev spoofs come from attacks A01-A06; evaluation sets use vocoder settings never seen
in training (A07-A19, with A16 = A04 and A19 = A06 as in ASVspoof 2019) plus transmission and
compression channels (2021) or reverberant noisy recordings (In-the-Wild), so their EERs are worse
than dev, as on the real benchmark. Deterministic for a seed: every clip draws from its own
generator seeded by (seed, corpus, index).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from trainer.data import synth_signal as sig

ATTACKS: dict[str, sig.Vocoder] = {
    "A01": sig.Vocoder(1024, 256, 80, 32),
    "A02": sig.Vocoder(512, 128, 80, 16),
    "A03": sig.Vocoder(1024, 256, 64, 8),
    "A04": sig.Vocoder(512, 128, 0, 4),
    "A05": sig.Vocoder(1024, 256, 40, 16),
    "A06": sig.Vocoder(512, 128, 0, 0),
    "A07": sig.Vocoder(2048, 512, 128, 32),
    "A08": sig.Vocoder(1024, 256, 96, 32),
    "A09": sig.Vocoder(256, 64, 0, 16),
    "A10": sig.Vocoder(1024, 160, 100, 24),
    "A11": sig.Vocoder(2048, 256, 0, 24),
    "A12": sig.Vocoder(512, 128, 128, 32),
    "A13": sig.Vocoder(800, 200, 60, 24),
    "A14": sig.Vocoder(1024, 128, 0, 16),
    "A15": sig.Vocoder(640, 160, 80, 2),
    "A16": sig.Vocoder(512, 128, 0, 4),
    "A17": sig.Vocoder(1024, 256, 32, 4),
    "A18": sig.Vocoder(2048, 512, 0, 8),
    "A19": sig.Vocoder(512, 128, 0, 0),
}
TRAIN_ATTACKS = ("A01", "A02", "A03", "A04", "A05", "A06")
EVAL_ATTACKS = tuple(f"A{i:02d}" for i in range(7, 20))
ITW_VOCODERS = (sig.Vocoder(1024, 256, 128, 48), sig.Vocoder(768, 192, 72, 12))

# Channels: (lowpass Hz, mu-law bits, SNR dB).
LA21_CODECS = {
    "none": (None, None, 45.0),
    "alaw": (3400.0, 8, 40.0),
    "ulaw": (3400.0, 8, 40.0),
    "g722": (7000.0, None, 40.0),
    "gsm": (3000.0, 6, 35.0),
    "opus": (6000.0, 10, 40.0),
    "pstn": (3400.0, 8, 30.0),
}
LA21_TRANSMISSIONS = ("ita_tx", "sin_tx", "loc_tx", "mad_tx")
DF21_COMPRESSIONS = {
    "nocodec": (None, 45.0),
    "low_mp3": (4000.0, 40.0),
    "high_mp3": (7000.0, 45.0),
    "low_m4a": (4500.0, 40.0),
    "high_m4a": (7500.0, 45.0),
    "low_ogg": (4000.0, 40.0),
    "high_ogg": (7000.0, 45.0),
    "mp3m4a": (5000.0, 40.0),
    "oggm4a": (5000.0, 40.0),
}
DF21_SOURCES = ("asvspoof", "vcc2018", "vcc2020")
DF21_VOCODERS = (
    "traditional_vocoder",
    "neural_vocoder_autoregressive",
    "neural_vocoder_nonautoregressive",
    "waveform_concatenation",
    "unknown",
)
ITW_NAMES = (
    "Alec Guinness",
    "Ada Lovelace",
    "Barack Obama",
    "Christopher Hitchens",
    "Grace Hopper",
    "Orson Welles",
    "Maya Angelou",
    "Alan Turing",
)


@dataclass(frozen=True)
class Size:
    seconds: tuple[float, float]
    train: tuple[int, int]  # (bona fide, spoof)
    dev: tuple[int, int]
    eval: tuple[int, int]
    la21: tuple[int, int]
    df21: tuple[int, int]
    itw: tuple[int, int]
    # The difficulty knob: a spoof is (1 - artifact) * the natural utterance + artifact * its
    # vocoded version. At 1.0 a spoof is fully vocoded, which the tiny random-weight model
    # separates from its first epoch; lower values leave less of the artefact to find.
    artifact: float = 1.0


SIZES = {
    # The tests' corpus: seconds to make, too small and too easy for a search to learn from.
    "micro": Size((1.0, 2.0), (16, 48), (12, 36), (16, 52), (16, 32), (16, 32), (16, 16)),
    # The local default (make sweep): every scored set has >= 100 clips per class (dev 200), so
    # an EER step is at most 1% (0.5% on dev); at artifact 0.7 the default trial's dev EER falls
    # from ~20% to a few percent over its epochs, and the settings change where it ends.
    "tiny": Size(
        (1.0, 2.0), (64, 192), (200, 200), (100, 150), (144, 144), (144, 144), (100, 100), 0.7
    ),
    "small": Size((2.0, 5.0), (128, 384), (96, 288), (128, 416), (96, 192), (96, 192), (96, 96)),
}
STAMP = "SYNTH.json"


@dataclass(frozen=True)
class Clip:
    """One file to write: its path under the corpus root, and how to make its waveform."""

    rel: str
    spoof: bool
    speaker: sig.Speaker
    attack: str | None
    channel: dict
    fmt: str  # "FLAC" or "WAV"


def render(clip: Clip, seed: int, index: int, size: Size) -> np.ndarray:
    """The waveform of clip number ``index`` (1-based) of the corpus ``seed``: a function of these
    alone, so any clip can be regenerated (or checked) without the others."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.uniform(*size.seconds) * sig.SR)
    wave = sig.utterance(rng, clip.speaker, n)
    if clip.spoof:
        vocoder = ATTACKS[clip.attack] if clip.attack in ATTACKS else clip.channel["vocoder"]
        vocoded = sig.vocode(wave, vocoder, rng)
        wave = (
            vocoded
            if size.artifact == 1.0
            else (1.0 - size.artifact) * wave + size.artifact * vocoded
        )
    channel = {k: v for k, v in clip.channel.items() if k != "vocoder"}
    return sig.finish(sig.channel(wave, rng, **channel), rng)


def _ids(rng: np.random.Generator, n: int, prefix: str, first: int = 1) -> list[str]:
    """``n`` distinct ids ``{prefix}{first}NNNNNN`` (seven digits, as in ASVspoof)."""
    numbers = rng.choice(1_000_000, size=n, replace=False) + first * 1_000_000
    return [f"{prefix}{k:07d}" for k in numbers]


def _labels(rng: np.random.Generator, counts: tuple[int, int]) -> np.ndarray:
    """Shuffled spoof flags, so neither file ids nor protocol order reveal the class."""
    return rng.permutation(np.r_[np.zeros(counts[0], bool), np.ones(counts[1], bool)])


def _speakers(rng: np.random.Generator, names: list[str]) -> dict[str, sig.Speaker]:
    return {name: sig.Speaker.draw(rng) for name in names}


def _plan_2019(rng: np.random.Generator, size: Size) -> tuple[list[Clip], dict[str, list[str]]]:
    clips: list[Clip] = []
    protocols: dict[str, list[str]] = {}
    speaker_ranges = {"train": range(79, 99), "dev": range(69, 79), "eval": range(1, 69)}
    for split, letter in (("train", "T"), ("dev", "D"), ("eval", "E")):
        counts = getattr(size, split)
        attacks = TRAIN_ATTACKS if split != "eval" else EVAL_ATTACKS
        names = [f"LA_{k:04d}" for k in rng.choice(list(speaker_ranges[split]), 4, replace=False)]
        voices = _speakers(rng, names)
        lines = []
        ids = _ids(rng, sum(counts), f"LA_{letter}_", int(rng.integers(1, 10)))
        flags = _labels(rng, counts)
        n_spoof = np.cumsum(flags)
        for i, (utt, spoof) in enumerate(zip(ids, flags, strict=True)):
            speaker = names[i % len(names)]
            attack = attacks[(n_spoof[i] - 1) % len(attacks)] if spoof else None
            rel = f"LA/ASVspoof2019_LA_{split}/flac/{utt}.flac"
            clips.append(Clip(rel, bool(spoof), voices[speaker], attack, {}, "FLAC"))
            label = "spoof" if spoof else "bonafide"
            lines.append(f"{speaker} {utt} - {attack or '-'} {label}")
        protocols[f"LA/ASVspoof2019_LA_cm_protocols/{_PROTOCOL_NAMES[split]}"] = lines
    return clips, protocols


_PROTOCOL_NAMES = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}


def _subsets(rng: np.random.Generator, spoof: np.ndarray) -> list[str]:
    """70% eval, 20% progress, 10% hidden of each class exactly (at least one of each), in random
    order: each clip's uniform draw ranks it within its class."""
    draws = rng.random(len(spoof))
    picks = np.empty(len(spoof), dtype=object)
    for cls in (False, True):
        where = np.flatnonzero(spoof == cls)
        ranked = where[np.argsort(draws[where], kind="stable")]
        n_progress, n_hidden = max(1, round(0.2 * len(where))), max(1, round(0.1 * len(where)))
        n_eval = len(where) - n_progress - n_hidden
        picks[ranked[:n_eval]] = "eval"
        picks[ranked[n_eval : n_eval + n_progress]] = "progress"
        picks[ranked[n_eval + n_progress :]] = "hidden"
    return picks.tolist()


def _plan_2021(rng: np.random.Generator, size: Size, track: str):
    counts = size.la21 if track == "LA" else size.df21
    names = [f"LA_{k:04d}" for k in rng.choice(range(1, 69), 4, replace=False)]
    voices = _speakers(rng, names)
    first = 1 if track == "LA" else 2
    ids = _ids(rng, sum(counts), f"{track}_E_", first)
    flags = _labels(rng, counts)
    subsets = _subsets(rng, flags)
    clips, lines = [], []
    n_spoof = np.cumsum(flags)
    for i, (utt, spoof, subset) in enumerate(zip(ids, flags, subsets, strict=True)):
        speaker = names[i % len(names)]
        attack = EVAL_ATTACKS[(n_spoof[i] - 1) % len(EVAL_ATTACKS)] if spoof else None
        label = "spoof" if spoof else "bonafide"
        rel = f"ASVspoof2021/ASVspoof2021_{track}_eval/flac/{utt}.flac"
        if track == "LA":
            codec = list(LA21_CODECS)[int(rng.integers(len(LA21_CODECS)))]
            tx = LA21_TRANSMISSIONS[int(rng.integers(len(LA21_TRANSMISSIONS)))]
            lowpass, bits, snr = LA21_CODECS[codec]
            channel = {"lowpass_hz": lowpass, "bits": bits, "snr_db": snr}
            lines.append(
                f"{speaker} {utt} {codec} {tx} {attack or 'bonafide'} {label} notrim {subset}"
            )
        else:
            comp = list(DF21_COMPRESSIONS)[int(rng.integers(len(DF21_COMPRESSIONS)))]
            source = DF21_SOURCES[int(rng.integers(len(DF21_SOURCES)))]
            lowpass, snr = DF21_COMPRESSIONS[comp]
            channel = {"lowpass_hz": lowpass, "snr_db": snr}
            vocoder = DF21_VOCODERS[i % len(DF21_VOCODERS)] if spoof else "-"
            lines.append(
                f"{speaker} {utt} {comp} {source} {attack or 'bonafide'} {label} "
                f"notrim {subset} {vocoder} - - - -"
            )
        clips.append(Clip(rel, bool(spoof), voices[speaker], attack, channel, "FLAC"))
    return clips, {f"ASVspoof2021/keys/{track}/CM/trial_metadata.txt": lines}


def _plan_itw(rng: np.random.Generator, size: Size):
    voices = _speakers(rng, list(ITW_NAMES))
    flags = _labels(rng, size.itw)
    clips, lines = [], ["file,speaker,label"]
    for i, number in enumerate(rng.permutation(len(flags))):
        spoof = bool(flags[i])
        speaker = ITW_NAMES[i % len(ITW_NAMES)]
        channel = {
            "reverb_s": float(rng.uniform(0.15, 0.5)),
            "snr_db": float(rng.uniform(15.0, 30.0)),
            "lowpass_hz": float(rng.uniform(5000.0, 7500.0)),
        }
        if spoof:
            channel["vocoder"] = ITW_VOCODERS[i % len(ITW_VOCODERS)]
        rel = f"itw/release_in_the_wild/{number}.wav"
        clips.append(Clip(rel, spoof, voices[speaker], None, channel, "WAV"))
        lines.append(f"{number}.wav,{speaker},{'spoof' if spoof else 'bona-fide'}")
    return clips, {"itw/release_in_the_wild/meta.csv": lines}


def plan(seed: int, size: Size) -> tuple[list[Clip], dict[str, list[str]]]:
    """Every clip and protocol line of the corpus, as a pure function of (seed, size)."""
    rng = np.random.default_rng([seed, 0])
    clips: list[Clip] = []
    protocols: dict[str, list[str]] = {}
    makers: list[Callable] = [
        _plan_2019,
        lambda r, s: _plan_2021(r, s, "LA"),
        lambda r, s: _plan_2021(r, s, "DF"),
        _plan_itw,
    ]
    for make in makers:
        more_clips, more_protocols = make(rng, size)
        clips += more_clips
        protocols.update(more_protocols)
    return clips, protocols


# Below this many clips one process is quicker than a pool, whose processes each import torch.
POOL_MIN_CLIPS = 500


def _quiet_worker() -> None:
    """A pool process renders one clip at a time with one thread: the pool is the parallelism."""
    import torch

    torch.set_num_threads(1)


def _write(job: tuple[Path, Clip, int, int, Size]) -> None:
    staging, clip, seed, index, size = job
    target = staging / clip.rel
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, render(clip, seed, index, size), sig.SR, format=clip.fmt, subtype="PCM_16")


def _write_all(jobs: list, workers: int, progress: bool, desc: str) -> None:
    pool = None
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker)
    written = pool.map(_write, jobs, chunksize=16) if pool else map(_write, jobs)
    try:
        for _ in tqdm(written, total=len(jobs), desc=desc, unit="clip", disable=not progress):
            pass
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)  # a failed clip stops the rest


def default_workers(n_clips: int) -> int:
    """Processes for a corpus of ``n_clips``: one per available core, one for a small corpus."""
    return 1 if n_clips < POOL_MIN_CLIPS else max(1, len(os.sched_getaffinity(0)))


def generate(
    out: Path,
    *,
    seed: int = 0,
    size: str = "tiny",
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the corpus under ``out``; nothing appears there unless every file was written.

    An existing ``out`` made with the same seed and size is reused as it is; any other existing,
    non-empty ``out`` is an error (nothing is overwritten). Clips are rendered by ``workers``
    processes (default :func:`default_workers`); the files do not depend on how many.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    stamp = {"seed": seed, "size": size, "version": 2}
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        found = out / STAMP
        made = json.loads(found.read_text()) if found.is_file() else None
        if made == stamp:
            return out
        if made and {**made, "version": stamp["version"]} == stamp:
            raise FileExistsError(
                f"{out} holds a seed={seed} size={size} corpus of an older generator "
                f"(version {made.get('version')}; now {stamp['version']}); delete it to remake it"
            )
        raise FileExistsError(
            f"{out} exists and is not a synthetic corpus with seed={seed} size={size}; "
            "choose an empty or new --out"
        )
    clips, protocols = plan(seed, SIZES[size])
    workers = default_workers(len(clips)) if workers is None else workers
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, lines in protocols.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text("\n".join(lines) + "\n", encoding="utf-8")
        jobs = [(staging, clip, seed, i + 1, SIZES[size]) for i, clip in enumerate(clips)]
        _write_all(jobs, workers, progress, f"synth {size}")
        (staging / STAMP).write_text(json.dumps(stamp) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
