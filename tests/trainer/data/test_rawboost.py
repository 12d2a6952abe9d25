"""The fast RawBoost against the plain port of the authors' code, draw for draw."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import rawboost as fast_module
from trainer.data.config import SAMPLE_RATE, RawBoostConfig
from trainer.data.rawboost import RawBoost, notch_taps, rawboost
from trainer.data.rawboost_reference import (
    gen_notch_coeffs,
    isd_additive_noise,
    lnl_convolutive_noise,
    rawboost_reference,
    ssi_additive_noise,
)

ALGOS = [*range(9), "paper"]
# Enough seeds that every branch of the paper chain's two coins comes up several times.
PAPER_SEEDS = range(32)
# Outputs are peak-normalised audio; the two paths differ by float rounding (~1e-7) only.
ATOL = 1e-5


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """Harmonics of a wandering pitch under a syllable-rate envelope, plus a little hiss."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.4 * t)) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    wave = voiced * envelope + 0.01 * rng.standard_normal(n)
    return (0.7 * wave / np.abs(wave).max()).astype(np.float32)


def _both(x: np.ndarray, algo: int | str, cfg: RawBoostConfig, seed: int):
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = rawboost(x, algo, cfg, rng_fast)
    ref = rawboost_reference(x, algo, cfg, rng_ref)
    return fast, ref, rng_fast, rng_ref


@pytest.mark.parametrize("n", [16_000, 64_600])
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("algo", ALGOS)
def test_matches_reference(algo: int | str, seed: int, n: int) -> None:
    x = speech_like(n, seed)
    fast, ref, rng_fast, rng_ref = _both(x, algo, RawBoostConfig(), seed)
    atol = ATOL * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=atol)
    # Same draws consumed: the generators continue identically.
    assert rng_fast.random() == rng_ref.random()
    # The tolerance is tight enough to catch a filter crop that is off by one sample.
    assert np.abs(np.roll(fast, 1) - ref).max() > 100 * atol


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_coeff": 300, "max_coeff": 400},  # cascades longer than freqz's 1024-point DFT
        {"n_bands": 1, "n_f": 2, "min_coeff": 1, "max_coeff": 4},  # shortest filters
        {"n_bands": 3, "min_g": -6.0, "max_g": 6.0, "min_bw": 10.0, "max_bw": 20_000.0},
    ],
)
@pytest.mark.parametrize("algo", [4, 8])
def test_matches_reference_off_defaults(overrides: dict, algo: int) -> None:
    x = speech_like(12_000, 3)
    fast, ref, rng_fast, rng_ref = _both(x, algo, RawBoostConfig(**overrides), 3)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=ATOL * max(1.0, float(np.abs(ref).max())))
    assert rng_fast.random() == rng_ref.random()


def _chain(
    x: np.ndarray, cfg: RawBoostConfig, rng: np.random.Generator, steps: tuple
) -> np.ndarray:
    """LnL, then each ``(name, probability)`` step on its own coin, from the reference parts."""
    y = lnl_convolutive_noise(np.asarray(x, dtype=np.float64), cfg, rng, SAMPLE_RATE)
    for name, probability in steps:
        if rng.random() < probability:
            if name == "ssi":
                y = ssi_additive_noise(y, cfg, rng, SAMPLE_RATE)
            else:
                y = isd_additive_noise(y, cfg, rng)
    return y.astype(np.float32)


def test_paper_chain_matches_reference_for_many_seeds() -> None:
    x = speech_like(4_000, 1)
    cfg = RawBoostConfig()
    for seed in PAPER_SEEDS:
        fast, ref, rng_fast, rng_ref = _both(x, "paper", cfg, seed)
        np.testing.assert_allclose(fast, ref, rtol=0, atol=ATOL, err_msg=f"seed {seed}")
        assert rng_fast.random() == rng_ref.random(), f"seed {seed}"


@pytest.mark.parametrize(
    ("steps", "matches"),
    [
        ((("ssi", 0.5), ("isd", 0.5)), True),  # the authors' chain, rebuilt: the control holds
        ((("isd", 0.5), ("ssi", 0.5)), False),  # ISD before SSI (algo 4's order)
        ((("ssi", 0.25), ("isd", 0.5)), False),
        ((("ssi", 0.5), ("isd", 0.75)), False),
    ],
)
def test_paper_chain_order_and_probabilities(steps: tuple, matches: bool) -> None:
    """The fast chain against rebuilt chains: a wrong order or coin would not match."""
    x = speech_like(4_000, 2)
    cfg = RawBoostConfig()
    same = []
    for seed in PAPER_SEEDS:
        fast = rawboost(x, "paper", cfg, np.random.default_rng(seed))
        other = _chain(x, cfg, np.random.default_rng(seed), steps)
        same.append(bool(np.abs(fast - other).max() <= ATOL))
    assert all(same) == matches


def test_paper_chain_takes_each_branch_about_half_the_time(monkeypatch) -> None:
    calls: list[str] = []
    for name in ("_lnl", "_ssi", "_isd"):
        step = getattr(fast_module, name)

        def record(*args, _step=step, _name=name[1:]):
            calls.append(_name)
            return _step(*args)

        monkeypatch.setattr(fast_module, name, record)
    x = speech_like(2_000, 4)
    rng = np.random.default_rng(0)
    chains = []
    for _ in range(200):
        calls.clear()
        rawboost(x, "paper", RawBoostConfig(), rng)
        chains.append(tuple(calls))
    assert set(chains) == {
        ("lnl",),
        ("lnl", "ssi"),
        ("lnl", "isd"),
        ("lnl", "ssi", "isd"),
    }
    assert 70 < sum("ssi" in c for c in chains) < 130
    assert 70 < sum("isd" in c for c in chains) < 130


@pytest.mark.parametrize("overrides", [{}, {"min_coeff": 300, "max_coeff": 400}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_notch_design_matches_reference(overrides: dict, seed: int) -> None:
    cfg = RawBoostConfig(**overrides)
    rng_fast, rng_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = notch_taps(rng_fast, cfg, cfg.min_g, cfg.max_g, n_filters=cfg.n_f)
    min_g, max_g = cfg.min_g, cfg.max_g
    for i, taps in enumerate(fast):
        if i == 1:  # LnL biases the gains of the non-linear terms once
            min_g, max_g = min_g - cfg.min_bias_lin_nonlin, max_g - cfg.max_bias_lin_nonlin
        ref = gen_notch_coeffs(
            rng_ref,
            cfg.n_bands,
            cfg.min_f,
            cfg.max_f,
            cfg.min_bw,
            cfg.max_bw,
            cfg.min_coeff,
            cfg.max_coeff,
            min_g,
            max_g,
            SAMPLE_RATE,
        )
        assert taps.shape == ref.shape
        np.testing.assert_allclose(taps, ref, rtol=1e-10, atol=1e-13)
    assert rng_fast.random() == rng_ref.random()


@pytest.mark.parametrize("algo", ALGOS)
def test_output_is_finite_float32_same_length_and_seeded(algo: int | str) -> None:
    x = speech_like(8_000)
    cfg = RawBoostConfig()
    first = rawboost(x, algo, cfg, np.random.default_rng(0))
    again = rawboost(x, algo, cfg, np.random.default_rng(0))
    other = rawboost(x, algo, cfg, np.random.default_rng(1))
    assert first.dtype == np.float32
    assert first.shape == x.shape
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    if algo == 0:
        np.testing.assert_array_equal(first, x)
    else:
        assert np.abs(first - other).max() > 1e-3


def test_output_is_not_a_view_of_reused_scratch() -> None:
    x = speech_like(8_000)
    cfg = RawBoostConfig()
    first = rawboost(x, 6, cfg, np.random.default_rng(0))
    kept = first.copy()
    rawboost(x, 6, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(first, kept)


def test_rawboost_with_p_zero_never_changes_the_input() -> None:
    x = speech_like(4_000)
    augment = RawBoost(RawBoostConfig(algo=5, p=0.0))
    for seed in range(20):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(augment(x, rng), x)
        # The coin is still drawn, so p does not change how later clips consume the generator.
        twin.random()
        assert rng.random() == twin.random()


@pytest.mark.parametrize("algo", [3, "paper"])
def test_rawboost_draws_the_coin_first_even_at_p_one(algo: int | str) -> None:
    x = speech_like(4_000)
    cfg = RawBoostConfig(algo=algo, p=1.0)
    rng = np.random.default_rng(5)
    rng.random()
    expected = rawboost(x, algo, cfg, rng)
    np.testing.assert_array_equal(RawBoost(cfg)(x, np.random.default_rng(5)), expected)


def test_rawboost_applies_about_p_of_the_time() -> None:
    x = speech_like(2_000)
    augment = RawBoost(RawBoostConfig(algo=2, p=0.5))
    rng = np.random.default_rng(0)
    changed = sum(not np.array_equal(augment(x, rng), x) for _ in range(200))
    assert 70 < changed < 130


@pytest.mark.parametrize("algo", [-1, 9, "Paper"])
def test_unknown_algo_is_rejected(algo: int | str) -> None:
    with pytest.raises(ValueError, match="0-8"):
        rawboost(speech_like(1_000), algo, RawBoostConfig(), np.random.default_rng(0))
