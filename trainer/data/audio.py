"""Decoding (soundfile), mono mix-down, resampling to 16 kHz (torchaudio) and cropping.

Only the frames a crop needs are decoded: ``head`` reads the first N samples of a 16 kHz file, and
``random`` seeks to its window, which keeps long clips cheap at 16 loader processes per GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from trainer.data.config import SAMPLE_RATE, CropConfig
from trainer.data.errors import AudioDecodeError

# Extra source frames decoded past a resampled crop so the resampler's filter sees real signal.
_RESAMPLE_MARGIN = 512


Window = Callable[[int, int], tuple[int, int]]


def _whole(rate: int, total: int) -> tuple[int, int]:
    return 0, total


def _decode(path: Path, window: Window = _whole) -> tuple[np.ndarray, int]:
    """Open once, pick ``(start, frames)`` from (rate, total frames), decode to mono float32."""
    try:
        with sf.SoundFile(str(path)) as handle:
            rate, total = handle.samplerate, handle.frames
            if total == 0:
                raise AudioDecodeError(path, "the file holds no samples")
            start, frames = window(rate, total)
            if start:
                handle.seek(start)
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(path, str(err)) from err
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "no samples could be decoded")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono), rate


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """Resample a mono float32 waveform to 16 kHz with torchaudio (identity at 16 kHz)."""
    if rate == SAMPLE_RATE:
        return wave
    return AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()


def _head(n: int) -> Window:
    def window(rate: int, total: int) -> tuple[int, int]:
        if rate == SAMPLE_RATE:
            return 0, min(n, total)
        return 0, min(total, math.ceil(n * rate / SAMPLE_RATE) + _RESAMPLE_MARGIN)

    return window


def load_audio(path: Path | str, max_samples: int | None = None) -> np.ndarray:
    """Decode a file to mono float32 at 16 kHz, optionally only its first ``max_samples``."""
    path = Path(path)
    if max_samples is None:
        return resample(*_decode(path))
    return resample(*_decode(path, _head(max_samples)))[:max_samples]


def repeat_pad(wave: np.ndarray, n: int) -> np.ndarray:
    """Tile a clip until it holds ``n`` samples (the SSL_Anti-spoofing convention)."""
    if wave.shape[0] >= n:
        return wave[:n]
    reps = n // wave.shape[0] + 1
    return np.tile(wave, reps)[:n]


class ClipReader:
    """Turns a path into a model input according to a :class:`CropConfig`."""

    def __init__(self, crop: CropConfig) -> None:
        self.policy = crop.policy
        self.n = crop.num_samples

    def __call__(self, path: Path, rng: np.random.Generator | None = None) -> np.ndarray:
        if self.policy == "head":
            return repeat_pad(load_audio(path, self.n), self.n)
        if self.policy == "full":
            return load_audio(path, self.n)
        if rng is None:
            raise ValueError("crop policy 'random' needs a random generator")
        return self._random(Path(path), rng)

    def _random(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        n = self.n

        def window(rate: int, total: int) -> tuple[int, int]:
            if rate != SAMPLE_RATE or total <= n:
                return 0, total
            return int(rng.integers(0, total - n + 1)), n

        wave = resample(*_decode(path, window))
        if wave.shape[0] <= n:
            return repeat_pad(wave, n)
        # Only a resampled file can still be longer than the window here.
        start = int(rng.integers(0, wave.shape[0] - n + 1))
        return wave[start : start + n]
