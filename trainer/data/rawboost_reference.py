"""RawBoost, the plain reference: a line-by-line port kept for parity tests and the benchmark.

Not used in training (see :mod:`trainer.data.rawboost` for the fast implementation). It follows
``RawBoost.py`` and ``process_Rawboost_feature`` of the SSL_Anti-spoofing repository (Tak et al.,
"RawBoost: A Raw Data Boosting and Augmentation Method applied to Automatic Speaker Verification
Anti-Spoofing", ICASSP 2022, arXiv:2111.04433), and ``apply_rawboost_batch`` of the method's
authors (Sudan et al. 2026, arXiv:2604.26057; github.com/JaskiratSudan/wav2vec_contr_loss,
``stage1_utils.py``) for ``algo="paper"``, with two deliberate changes: every random number
comes from a passed ``np.random.Generator``, one value at a time, and the arithmetic is float64.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import signal

from trainer.data.config import SAMPLE_RATE, RawBoostConfig


def rand_range(rng: np.random.Generator, lo: float, hi: float, integer: bool) -> float | int:
    """One uniform draw on [lo, hi) (or (hi, lo] when hi < lo), truncated to int if asked.

    ``lo + (hi - lo) * rng.random()`` is bit-identical to ``rng.uniform(lo, hi)`` but, like the
    legacy ``np.random.uniform`` the original calls, accepts hi < lo: LnL's biased gain range
    (0 - 5, 0 - 20) is reversed with the default settings.
    """
    value = lo + (hi - lo) * float(rng.random())
    return int(value) if integer else value


def norm_wav(x: np.ndarray, always: bool) -> np.ndarray:
    """Peak-normalise always, or only when the peak exceeds 1."""
    peak = np.amax(np.abs(x))
    if always or peak > 1:
        return x / peak
    return x


def gen_notch_coeffs(
    rng: np.random.Generator,
    n_bands: int,
    min_f: float,
    max_f: float,
    min_bw: float,
    max_bw: float,
    min_coeff: int,
    max_coeff: int,
    min_g: float,
    max_g: float,
    fs: int,
) -> np.ndarray:
    """A cascade of ``n_bands`` random band-stop FIR filters scaled to a random peak gain (dB)."""
    b = np.ones(1)
    for _ in range(n_bands):
        fc = rand_range(rng, min_f, max_f, False)
        bw = rand_range(rng, min_bw, max_bw, False)
        c = rand_range(rng, min_coeff, max_coeff, True)
        if c % 2 == 0:
            c = c + 1
        f1 = fc - bw / 2
        f2 = fc + bw / 2
        if f1 <= 0:
            f1 = 1 / 1000
        if f2 >= fs / 2:
            f2 = fs / 2 - 1 / 1000
        b = np.convolve(signal.firwin(c, [f1, f2], window="hamming", fs=fs), b)
    gain_db = rand_range(rng, min_g, max_g, False)
    _, h = signal.freqz(b, 1, fs=fs)
    return 10 ** (gain_db / 20) * b / np.amax(np.abs(h))


def filter_fir(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Filter with ``lfilter`` and crop ``len(x)`` samples at the original's offset."""
    n = b.shape[0] + 1
    xpad = np.pad(x, (0, n), "constant")
    y = signal.lfilter(b, 1, xpad)
    return y[int(n / 2) : int(y.shape[0] - n / 2)]


def lnl_convolutive_noise(
    x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator, fs: int
) -> np.ndarray:
    """Linear and non-linear convolutive noise: sum over powers 1..N_f of notch-filtered x^k."""
    min_g, max_g = cfg.min_g, cfg.max_g
    y = np.zeros(x.shape[0])
    for i in range(cfg.n_f):
        if i == 1:
            min_g = min_g - cfg.min_bias_lin_nonlin
            max_g = max_g - cfg.max_bias_lin_nonlin
        b = gen_notch_coeffs(
            rng,
            cfg.n_bands,
            cfg.min_f,
            cfg.max_f,
            cfg.min_bw,
            cfg.max_bw,
            cfg.min_coeff,
            cfg.max_coeff,
            min_g,
            max_g,
            fs,
        )
        y = y + filter_fir(np.power(x, i + 1), b)
    y = y - np.mean(y)
    return norm_wav(y, False)


def isd_additive_noise(x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator) -> np.ndarray:
    """Impulsive signal-dependent noise on a random ``beta`` % of the samples (beta < P)."""
    beta = rand_range(rng, 0, cfg.p_isd, False)
    y = x.copy()
    x_len = x.shape[0]
    n = int(x_len * (beta / 100))
    p = rng.permutation(x_len)[:n]
    f_r = (2 * rng.random(p.shape[0]) - 1) * (2 * rng.random(p.shape[0]) - 1)
    r = cfg.g_sd * x[p] * f_r
    y[p] = x[p] + r
    return norm_wav(y, False)


def ssi_additive_noise(
    x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator, fs: int
) -> np.ndarray:
    """Stationary signal-independent noise: notch-filtered white noise at a random SNR."""
    noise = rng.normal(0, 1, x.shape[0])
    b = gen_notch_coeffs(
        rng,
        cfg.n_bands,
        cfg.min_f,
        cfg.max_f,
        cfg.min_bw,
        cfg.max_bw,
        cfg.min_coeff,
        cfg.max_coeff,
        cfg.min_g,
        cfg.max_g,
        fs,
    )
    noise = filter_fir(noise, b)
    noise = norm_wav(noise, True)
    snr = rand_range(rng, cfg.snr_min, cfg.snr_max, False)
    noise = noise / np.linalg.norm(noise, 2) * np.linalg.norm(x, 2) / 10.0 ** (0.05 * snr)
    return x + noise


def rawboost_reference(
    x: np.ndarray,
    algo: int | Literal["paper"],
    cfg: RawBoostConfig,
    rng: np.random.Generator,
    fs: int = SAMPLE_RATE,
) -> np.ndarray:
    """Apply RawBoost ``algo`` (0-8, as ``process_Rawboost_feature``, or ``"paper"``, as the
    authors' ``apply_rawboost_batch`` once its per-clip coin has come up) to a mono waveform.

    The plain reference kept for parity tests and the benchmark, not used in training. Computes
    in float64 and returns float32 of the same length as ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    if algo == 1:
        y = lnl_convolutive_noise(x, cfg, rng, fs)
    elif algo == 2:
        y = isd_additive_noise(x, cfg, rng)
    elif algo == 3:
        y = ssi_additive_noise(x, cfg, rng, fs)
    elif algo == 4:
        y = lnl_convolutive_noise(x, cfg, rng, fs)
        y = isd_additive_noise(y, cfg, rng)
        y = ssi_additive_noise(y, cfg, rng, fs)
    elif algo == 5:
        y = lnl_convolutive_noise(x, cfg, rng, fs)
        y = isd_additive_noise(y, cfg, rng)
    elif algo == 6:
        y = lnl_convolutive_noise(x, cfg, rng, fs)
        y = ssi_additive_noise(y, cfg, rng, fs)
    elif algo == 7:
        y = isd_additive_noise(x, cfg, rng)
        y = ssi_additive_noise(y, cfg, rng, fs)
    elif algo == 8:
        y1 = lnl_convolutive_noise(x, cfg, rng, fs)
        y2 = isd_additive_noise(x, cfg, rng)
        y = norm_wav(y1 + y2, False)
    elif algo == "paper":
        # The authors' literal 0.5s, kept here rather than imported, so that the parity test
        # checks the fast path's constants.
        y = lnl_convolutive_noise(x, cfg, rng, fs)
        if rng.random() < 0.5:
            y = ssi_additive_noise(y, cfg, rng, fs)
        if rng.random() < 0.5:
            y = isd_additive_noise(y, cfg, rng)
    elif algo == 0:
        y = x
    else:
        raise ValueError(f"rawboost algo must be 0-8 or 'paper', got {algo!r}")
    return y.astype(np.float32)
