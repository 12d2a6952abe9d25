"""Signal models of the synthetic corpus: speech-like bona fide, vocoded spoofs, channels.

Bona fide clips are a source-filter model (glottal pulse train with intonation and jitter, noise
for unvoiced syllables, moving formants) whose phase is that of a real excitation. A spoof is
another such utterance passed through an analysis-resynthesis "vocoder": its (mel-smoothed)
magnitude spectrogram is inverted with Griffin-Lim or random phase. The only systematic
difference between the classes is that resynthesis artefact (phase incoherence, smeared
harmonics); loudness, duration and DC offset are drawn from the same distributions for both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.signal import fftconvolve

SR = 16_000
_N_FFT, _HOP = 512, 128

# (F1, F2, F3) targets in Hz for a neutral vocal tract.
_VOWELS = np.array(
    [
        [730, 1090, 2440],
        [270, 2290, 3010],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [300, 870, 2240],
        [640, 1190, 2390],
        [490, 1350, 1690],
        [440, 1020, 2240],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Speaker:
    """Per-speaker voice: mean f0 (Hz), vocal-tract scale on formants, spectral tilt (dB/oct)."""

    f0: float
    tract: float
    tilt: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Speaker:
        female = rng.random() < 0.5
        f0 = rng.uniform(165, 255) if female else rng.uniform(85, 150)
        return cls(
            f0=f0,
            tract=rng.uniform(1.05, 1.2) if female else rng.uniform(0.9, 1.02),
            tilt=rng.uniform(-7.0, -4.0),
        )


@dataclass(frozen=True)
class Vocoder:
    """An attack: analysis STFT size and hop, mel bands (0 = linear), Griffin-Lim iterations
    (0 = random phase)."""

    n_fft: int
    hop: int
    n_mels: int
    n_iter: int


def _frame_tracks(rng: np.random.Generator, n_frames: int, spk: Speaker):
    """Per-frame f0 (Hz), voicing (0..1), loudness (linear) and formants (n_frames, 3)."""
    f0 = np.empty(n_frames)
    voicing = np.empty(n_frames)
    amp = np.empty(n_frames)
    formants = np.empty((n_frames, 3))
    pos = 0
    while pos < n_frames:
        length = int(rng.integers(15, 38))  # syllables of 120-300 ms at 8 ms frames
        end = min(n_frames, pos + length)
        span = end - pos
        kind = rng.random()
        voiced = kind < 0.72
        silent = kind > 0.92
        t = np.linspace(0, 1, span)
        start_f0 = spk.f0 * rng.uniform(0.85, 1.2)
        f0[pos:end] = start_f0 * (1 + rng.uniform(-0.15, 0.1) * t)
        voicing[pos:end] = 1.0 if voiced else 0.0
        shape = np.sin(np.pi * t) ** rng.uniform(0.3, 0.8)
        amp[pos:end] = 0.0 if silent else shape * rng.uniform(0.4, 1.0)
        a, b = _VOWELS[rng.integers(len(_VOWELS))], _VOWELS[rng.integers(len(_VOWELS))]
        formants[pos:end] = spk.tract * (a[None, :] * (1 - t[:, None]) + b[None, :] * t[:, None])
        pos = end
    kernel = np.hanning(5) / np.hanning(5).sum()
    voicing = np.convolve(voicing, kernel, mode="same")
    amp = np.convolve(amp, kernel, mode="same")
    return f0, voicing, amp, formants


def _excitation(rng: np.random.Generator, f0_frames: np.ndarray, n: int) -> np.ndarray:
    """A glottal pulse train following the f0 contour, with 1% period jitter."""
    f0 = np.interp(np.arange(n) / _HOP, np.arange(len(f0_frames)), f0_frames)
    f0 = f0 * (1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1)))
    phase = np.cumsum(f0 / SR)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    glottal = np.r_[np.sin(np.linspace(0, np.pi, 40)) ** 2, -0.3 * np.hanning(24)]
    return np.convolve(pulses, glottal, mode="same")


def _envelope(formants: np.ndarray, tilt: float) -> np.ndarray:
    """Spectral envelope per frame, (n_frames, n_bins), from formant bumps and a tilt."""
    freqs = np.linspace(0, SR / 2, _N_FFT // 2 + 1)[None, :, None]  # (1, F, 1)
    widths = np.array([90.0, 120.0, 170.0])[None, None, :]
    gains_db = np.array([0.0, -6.0, -12.0])[None, None, :]
    bumps = 10 ** (gains_db / 20) * np.exp(-0.5 * ((freqs - formants[:, None, :]) / widths) ** 2)
    octaves = np.log2(np.maximum(freqs[..., 0], 100.0) / 100.0)
    return (bumps.sum(axis=2) + 0.02) * 10 ** (tilt * octaves / 20)


def _stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    return torch.stft(
        x, n_fft, hop, window=torch.hann_window(n_fft, dtype=x.dtype), return_complex=True
    )


def _istft(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    return torch.istft(
        spec, n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64), length=length
    )


def utterance(rng: np.random.Generator, spk: Speaker, n: int) -> np.ndarray:
    """A clean speech-like clip of ``n`` samples (float64, unnormalised)."""
    n_frames = n // _HOP + 1
    f0, voicing, amp, formants = _frame_tracks(rng, n_frames, spk)
    source = _excitation(rng, f0, n)
    noise = rng.standard_normal(n) * 0.25
    spec_v = _stft(torch.from_numpy(source), _N_FFT, _HOP)  # (F, frames)
    spec_n = _stft(torch.from_numpy(noise), _N_FFT, _HOP)
    frames = spec_v.shape[1]
    voicing_t = torch.from_numpy(voicing[:frames])[None, :]
    env = torch.from_numpy(_envelope(formants[:frames], spk.tilt).T)  # (F, frames)
    mix = spec_v * voicing_t + spec_n * (1 - voicing_t * 0.9)
    gain = torch.from_numpy(amp[:frames])[None, :]
    return _istft(mix * env * gain, _N_FFT, _HOP, n).numpy()


def vocode(x: np.ndarray, voc: Vocoder, rng: np.random.Generator) -> np.ndarray:
    """Analysis-resynthesis: (mel-smoothed) magnitude, then Griffin-Lim or random phase."""
    wave = torch.from_numpy(x)
    mag = _stft(wave, voc.n_fft, voc.hop).abs()  # (F, frames)
    if voc.n_mels:
        mag = (_mel_smoother(voc.n_fft, voc.n_mels) @ mag).clamp_min(0.0)
    phase = torch.from_numpy(np.exp(2j * np.pi * rng.random(mag.shape)))
    return _griffin_lim(mag, phase, voc, len(x)).numpy()


@functools.lru_cache(maxsize=64)
def _mel_smoother(n_fft: int, n_mels: int) -> torch.Tensor:
    """(F, F) projection of a linear spectrum onto n_mels bands and back (pseudo-inverse)."""
    fb = AF.melscale_fbanks(
        n_fft // 2 + 1, 0.0, SR / 2, n_mels, SR, norm="slaney", mel_scale="slaney"
    ).to(torch.float64)  # (F, M)
    return torch.linalg.pinv(fb.T) @ fb.T


def _griffin_lim(mag, phase, voc: Vocoder, length: int) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013, momentum 0.99) from a given initial phase."""
    angles = phase
    previous = torch.zeros_like(mag, dtype=torch.complex128)
    for _ in range(voc.n_iter):
        rebuilt = _stft(_istft(mag * angles, voc.n_fft, voc.hop, length), voc.n_fft, voc.hop)
        accelerated = rebuilt - (0.99 / 1.99) * previous
        angles = accelerated / accelerated.abs().clamp_min(1e-16)
        previous = rebuilt
    return _istft(mag * angles, voc.n_fft, voc.hop, length)


def channel(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    lowpass_hz: float | None = None,
    bits: int | None = None,
    reverb_s: float = 0.0,
    snr_db: float = 45.0,
) -> np.ndarray:
    """A recording/transmission channel applied alike to both classes."""
    y = x
    if reverb_s > 0:
        taps = int(reverb_s * SR)
        ir = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps)
        ir[0] = 1.0 / 0.3
        y = fftconvolve(y, ir * 0.3)[: len(x)]
    if lowpass_hz is not None:
        y = AF.lowpass_biquad(torch.from_numpy(y), SR, lowpass_hz).numpy()
    y = y / (np.sqrt(np.mean(y**2)) + 1e-12)
    y = y + rng.standard_normal(len(y)) * 10 ** (-snr_db / 20)
    if bits is not None:  # mu-law companding at a reduced bit depth (telephone codecs)
        mu = 2**bits - 1
        comp = np.sign(y) * np.log1p(mu * np.minimum(np.abs(y) / 8, 1)) / np.log1p(mu)
        comp = np.round(comp * mu / 2) / (mu / 2)
        y = 8 * np.sign(comp) * np.expm1(np.abs(comp) * np.log1p(mu)) / mu
    return y


def finish(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove DC, set a loudness drawn from one distribution for both classes, keep headroom."""
    y = x - x.mean()
    y = y * 10 ** (rng.uniform(-28.0, -18.0) / 20) / (np.sqrt(np.mean(y**2)) + 1e-12)
    peak = np.abs(y).max()
    if peak > 0.97:
        y = y * 0.97 / peak
    return y.astype(np.float32)
