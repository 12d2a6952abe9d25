"""RawBoost data augmentation, the fast implementation used in training.

RawBoost (Tak et al., "RawBoost: A Raw Data Boosting and Augmentation Method applied to Automatic
Speaker Verification Anti-Spoofing", ICASSP 2022, arXiv:2111.04433) distorts a waveform with
linear and non-linear convolutive noise (LnL), impulsive signal-dependent noise (ISD) and
stationary signal-independent noise (SSI), each driven by random notch-filter cascades.

This module reproduces :mod:`trainer.data.rawboost_reference` (a port of the authors' code): it
draws the same random numbers from the passed generator in the same order, so the same generator
state gives the same filters and the same output up to float rounding. It is faster because

- the band-stop designs of a whole LnL call are computed at once (``firwin``'s formula, vectorised
  over bands, with scipy's own Hamming windows),
- FIR filtering is block FFT convolution (overlap-save, blocks small enough to stay in cache), and
  the N_f filtered powers of LnL are summed in the frequency domain before one inverse FFT,
- the ``freqz`` peak-gain normalisation is read from an rfft of the taps.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Literal

import numpy as np
from scipy import signal

from trainer.data.config import SAMPLE_RATE, RawBoostConfig

# freqz's default grid: 512 frequencies on [0, pi), i.e. the first 512 bins of a 1024-point DFT.
_FREQZ_POINTS = 512
# Smallest overlap-save block: as fast as any other size measured for the default filters (span
# up to ~750 taps), and small enough that the K block spectra stay in cache.
_MIN_BLOCK = 4096
# The authors' chain, ``algo: paper`` (Sudan et al. 2026, arXiv:2604.26057): LnL always, then SSI
# and then ISD, each on its own fair coin (github.com/JaskiratSudan/wav2vec_contr_loss,
# stage1_utils.py, apply_rawboost_batch: ``random.random() < 0.5`` before each).
PAPER_SSI_PROB = 0.5
PAPER_ISD_PROB = 0.5


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Bit-identical to rng.uniform(lo, hi), but accepts hi < lo as the original's legacy draw does.
    return lo + (hi - lo) * float(rng.random())


def _draw_notch(
    rng: np.random.Generator, cfg: RawBoostConfig, min_g: float, max_g: float
) -> tuple[list[float], list[float], list[int], float]:
    """The draws of one ``genNotchCoeffs`` call: per band (fc, bw, taps), then the gain in dB."""
    centres, widths, numtaps = [], [], []
    for _ in range(cfg.n_bands):
        centres.append(_uniform(rng, cfg.min_f, cfg.max_f))
        widths.append(_uniform(rng, cfg.min_bw, cfg.max_bw))
        c = int(_uniform(rng, cfg.min_coeff, cfg.max_coeff))
        numtaps.append(c + 1 if c % 2 == 0 else c)
    return centres, widths, numtaps, _uniform(rng, min_g, max_g)


@functools.lru_cache(maxsize=512)
def _hamming(numtaps: int) -> np.ndarray:
    return signal.get_window("hamming", numtaps, fftbins=False)


def _band_stops(
    centres: list[float], widths: list[float], numtaps: list[int], fs: int
) -> list[np.ndarray]:
    """``firwin(c, [f1, f2], window="hamming", fs=fs)`` for every band at once.

    Every band has an odd tap count, so each is the centre of a common odd-length grid; the
    band-stop impulse response is lowpass(f1) + allpass - lowpass(f2), windowed and scaled to unit
    DC gain, exactly as ``firwin`` computes it.
    """
    nyq = fs / 2
    fc, bw = np.asarray(centres), np.asarray(widths)
    f1 = np.where(fc - bw / 2 <= 0, 1 / 1000, fc - bw / 2)
    f2 = np.where(fc + bw / 2 >= nyq, nyq - 1 / 1000, fc + bw / 2)
    lo, hi = f1[:, None] / nyq, f2[:, None] / nyq  # (bands, 1)
    if np.any(lo >= hi):
        raise ValueError("rawboost: a notch band falls outside (0, fs/2); check min_f/max_f/bw")
    longest = max(numtaps)
    m = np.arange(longest) - 0.5 * (longest - 1)  # (longest,)
    window = np.zeros((len(numtaps), longest))  # (bands, longest)
    for row, c in enumerate(numtaps):
        start = (longest - c) // 2
        window[row, start : start + c] = _hamming(c)
    h = (lo * np.sinc(lo * m) + np.sinc(m) - hi * np.sinc(hi * m)) * window
    h /= h.sum(axis=1, keepdims=True)
    return [h[row, (longest - c) // 2 : (longest + c) // 2] for row, c in enumerate(numtaps)]


def _peak_gain(b: np.ndarray) -> float:
    """max |H| on freqz's default grid, exact for any tap count (no time aliasing)."""
    n = 2 * _FREQZ_POINTS * -(-b.shape[0] // (2 * _FREQZ_POINTS))
    step = n // (2 * _FREQZ_POINTS)
    return float(np.abs(np.fft.rfft(b, n)[: _FREQZ_POINTS * step : step]).max())


def _cascade(bands: list[np.ndarray], gain_db: float) -> np.ndarray:
    b = np.ones(1)
    for taps in bands:
        b = np.convolve(taps, b)
    return 10 ** (gain_db / 20) * b / _peak_gain(b)


def notch_taps(
    rng: np.random.Generator,
    cfg: RawBoostConfig,
    min_g: float,
    max_g: float,
    n_filters: int = 1,
    fs: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """``n_filters`` consecutive ``genNotchCoeffs`` designs (same draws, same taps).

    ``min_g``/``max_g`` apply to the first filter; like LnL, later ones are biased down by
    ``cfg.min_bias_lin_nonlin``/``cfg.max_bias_lin_nonlin`` (only LnL asks for more than one).
    """
    draws = []
    for i in range(n_filters):
        if i == 1:
            min_g, max_g = min_g - cfg.min_bias_lin_nonlin, max_g - cfg.max_bias_lin_nonlin
        draws.append(_draw_notch(rng, cfg, min_g, max_g))
    centres = [f for d in draws for f in d[0]]
    widths = [w for d in draws for w in d[1]]
    numtaps = [c for d in draws for c in d[2]]
    bands = _band_stops(centres, widths, numtaps, fs)
    per = cfg.n_bands
    return [_cascade(bands[i * per : (i + 1) * per], d[3]) for i, d in enumerate(draws)]


class _Workspace(threading.local):
    """Per-thread scratch arrays, grown on demand and reused across calls.

    Fresh temporaries of a few hundred kB are handed back to the OS by malloc and page-faulted in
    again on every call; on the benchmark machine that cost more than the FFTs themselves. Nothing
    returned to a caller is a view of these arrays.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
        size = math.prod(shape)
        buf = self.arrays.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self.arrays[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


_WORKSPACE = _Workspace()


class _OverlapSave:
    """``sum_k filterFIR(inputs[k], taps[k])`` of the reference, by overlap-save FFT convolution.

    ``filterFIR`` keeps ``len(x)`` samples of the full convolution from offset ``int((L+1)/2)``;
    each filter is delayed by ``lead - offset`` so that one crop at ``lead`` serves them all.
    Callers write the K signals into :attr:`inputs` (a view into the zero-padded block buffer);
    then :meth:`run` returns the (N,) sum as a new array.
    """

    def __init__(self, n: int, taps: list[np.ndarray]) -> None:
        self.n, self.taps = n, taps
        self.offsets = [(b.shape[0] + 1) // 2 for b in taps]
        self.lead = max(self.offsets)
        # Longest delayed filter, at least lead + 1 so the signal never starts before the buffer.
        ends = (self.lead - o + b.shape[0] for o, b in zip(self.offsets, taps, strict=True))
        self.span = max(self.lead + 1, *ends)
        self.block = max(_MIN_BLOCK, 1 << (4 * self.span - 1).bit_length())
        self.hop = self.block - self.span + 1
        self.n_blocks = -(-n // self.hop)
        # Block j reads padded[j*hop : j*hop + block]; padded[front + t] = signal[t].
        self.front = self.span - 1 - self.lead
        width = (self.n_blocks - 1) * self.hop + self.block
        self.padded = _WORKSPACE.get("padded", (len(taps), width))  # (K, P)
        self.padded[:, : self.front] = 0
        self.padded[:, self.front + n :] = 0

    @property
    def inputs(self) -> np.ndarray:
        return self.padded[:, self.front : self.front + self.n]  # (K, N)

    def run(self) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(self.padded, self.block, axis=1)
        frames = frames[:, :: self.hop]  # (K, n_blocks, block), a view
        bins = (self.n_blocks, self.block // 2 + 1)
        mixed = _WORKSPACE.get("mixed", bins, np.complex128)
        spectrum = _WORKSPACE.get("spectrum", bins, np.complex128)
        for row, (o, b) in enumerate(zip(self.offsets, self.taps, strict=True)):
            delayed = np.zeros(self.block)
            delayed[self.lead - o : self.lead - o + b.shape[0]] = b
            target = mixed if row == 0 else spectrum
            np.fft.rfft(frames[row], axis=-1, out=target)
            target *= np.fft.rfft(delayed)
            if row:
                mixed += spectrum
        blocks = _WORKSPACE.get("blocks", (self.n_blocks, self.block))
        np.fft.irfft(mixed, self.block, axis=-1, out=blocks)
        y = np.empty(self.n_blocks * self.hop)
        y.reshape(self.n_blocks, self.hop)[...] = blocks[:, self.span - 1 :]
        return y[: self.n]


def _peak_normalise(x: np.ndarray) -> np.ndarray:
    peak = max(float(x.max()), -float(x.min()))
    return x / peak if peak > 1 else x


def _lnl(x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator, fs: int) -> np.ndarray:
    taps = notch_taps(rng, cfg, cfg.min_g, cfg.max_g, cfg.n_f, fs)
    conv = _OverlapSave(x.shape[0], taps)
    powers = conv.inputs  # (N_f, N): x, x^2, ..., x^N_f
    powers[0] = x
    for i in range(1, cfg.n_f):
        np.multiply(powers[i - 1], x, out=powers[i])
    y = conv.run()
    y -= y.mean()
    return _peak_normalise(y)


def _isd(x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator) -> np.ndarray:
    beta = _uniform(rng, 0, cfg.p_isd)
    n = int(x.shape[0] * (beta / 100))
    hit = rng.permutation(x.shape[0])[:n]
    f_r = (2 * rng.random(n) - 1) * (2 * rng.random(n) - 1)
    y = x.copy()
    y[hit] = x[hit] + cfg.g_sd * x[hit] * f_r
    return _peak_normalise(y)


def _ssi(x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator, fs: int) -> np.ndarray:
    noise = _WORKSPACE.get("noise", x.shape)
    rng.standard_normal(out=noise)  # the draws and values of the original's normal(0, 1, N)
    conv = _OverlapSave(x.shape[0], notch_taps(rng, cfg, cfg.min_g, cfg.max_g, 1, fs))
    conv.inputs[0] = noise
    noise = conv.run()
    snr = _uniform(rng, cfg.snr_min, cfg.snr_max)
    # The reference peak-normalises first; the L2 rescaling cancels that factor.
    noise *= np.linalg.norm(x) / (np.linalg.norm(noise) * 10.0 ** (0.05 * snr))
    noise += x
    return noise


_CHAINS: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("lnl",),
    2: ("isd",),
    3: ("ssi",),
    4: ("lnl", "isd", "ssi"),
    5: ("lnl", "isd"),
    6: ("lnl", "ssi"),
    7: ("isd", "ssi"),
}


def _paper(y: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator, fs: int) -> np.ndarray:
    y = _lnl(y, cfg, rng, fs)
    # Each coin is drawn whether or not the step before it ran, as the authors' code does.
    if rng.random() < PAPER_SSI_PROB:
        y = _ssi(y, cfg, rng, fs)
    if rng.random() < PAPER_ISD_PROB:
        y = _isd(y, cfg, rng)
    return y


def rawboost(
    x: np.ndarray,
    algo: int | Literal["paper"],
    cfg: RawBoostConfig,
    rng: np.random.Generator,
    fs: int = SAMPLE_RATE,
) -> np.ndarray:
    """Apply RawBoost ``algo`` to a mono waveform; float32 of the same length as ``x``.

    ``algo``: 0 none, 1 LnL, 2 ISD, 3 SSI, 4 LnL->ISD->SSI, 5 LnL->ISD, 6 LnL->SSI, 7 ISD->SSI,
    8 LnL and ISD of the input in parallel, summed and peak-normalised; ``"paper"`` the authors'
    chain: LnL, then SSI with probability :data:`PAPER_SSI_PROB`, then ISD with probability
    :data:`PAPER_ISD_PROB`, each coin one ``rng.random()`` drawn just before its step. Draws from
    ``rng`` in the order of :func:`trainer.data.rawboost_reference.rawboost_reference`.
    """
    if algo == 0:
        return np.asarray(x, dtype=np.float32)
    y = np.asarray(x, dtype=np.float64)
    if algo == 8:
        both = _lnl(y, cfg, rng, fs) + _isd(y, cfg, rng)
        return _peak_normalise(both).astype(np.float32)
    if algo == "paper":
        return _paper(y, cfg, rng, fs).astype(np.float32)
    if algo not in _CHAINS:
        raise ValueError(f"rawboost algo must be 0-8 or 'paper', got {algo!r}")
    for step in _CHAINS[algo]:
        if step == "lnl":
            y = _lnl(y, cfg, rng, fs)
        elif step == "isd":
            y = _isd(y, cfg, rng)
        else:
            y = _ssi(y, cfg, rng, fs)
    return y.astype(np.float32)


class RawBoost:
    """Applies ``cfg.algo`` with probability ``cfg.p`` (Tak et al. 2022, arXiv:2111.04433).

    The coin ``rng.random() < p`` is always drawn first, even when p is 0 or 1, so the coin costs
    one draw whatever p is and a seeded run does not change its stream when p is tuned to 0 or 1.
    With ``algo="paper"`` and ``p=0.7`` this is the authors' augmentation: 70% of the clips get
    LnL, and each of those SSI and ISD with probability 0.5 (see :func:`rawboost`).
    """

    def __init__(self, cfg: RawBoostConfig, fs: int = SAMPLE_RATE) -> None:
        self.cfg = cfg
        self.fs = fs

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        apply = rng.random() < self.cfg.p
        if not apply or self.cfg.algo == 0:
            return x
        return rawboost(x, self.cfg.algo, self.cfg, rng, self.fs)
