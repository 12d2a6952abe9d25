"""Wall time of bootstrap EER intervals on a set the size of ASVspoof 2021 DF, against a plain loop.

The plain loop is what one would write first: per resample, draw indices, build the resampled
score arrays and call :func:`trainer.metrics.compute_eer`. It is timed on a few resamples and
extrapolated to ``--n-boot``. It draws the resamples ``bootstrap_eers`` documents, so its EERs
must equal the fast path's bit for bit; the bench checks that and fails otherwise. Then the
cluster bootstrap (58 groups, like In-the-Wild's speakers) and a paired two-system bootstrap.

    python bench/bootstrap.py                     # 600,000 trials, 1000 resamples, ~1 min
    python bench/bootstrap.py --size 60000 --n-boot 200

Aim: the 1000-resample stratified interval on 600,000 trials in under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from trainer.bootstrap import bootstrap_eer_ci, bootstrap_eers, paired_bootstrap_delta
from trainer.metrics import compute_eer

# ASVspoof 2021 DF eval: about 600,000 trials of which about 25,000 bona fide.
BONAFIDE_SHARE = 25 / 600
# Bona fide ~ N(MU, 1), spoof ~ N(0, 1): a true EER of Phi(-MU / 2), about 11%.
MU = 2.5
IN_THE_WILD_SPEAKERS = 58
# CPU seconds of the last timed call per function: a loaded machine stretches wall time, not this.
CPU_SPENT: dict[str, float] = {}


def _scores(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_t = max(1, round(size * BONAFIDE_SHARE))
    return rng.normal(MU, 1.0, n_t), rng.normal(0.0, 1.0, size - n_t)


def loop_eers(bonafide: np.ndarray, spoof: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The plain reference: one resample built and one official EER computed per replicate."""
    out = []
    for child in np.random.SeedSequence(seed).spawn(n_boot):
        rng = np.random.default_rng(child)
        draws_b = rng.integers(0, bonafide.size, size=bonafide.size)
        draws_s = rng.integers(0, spoof.size, size=spoof.size)
        out.append(compute_eer(bonafide[draws_b], spoof[draws_s])[0])
    return np.array(out)


def _timed(fn, *args, **kwargs):
    """(wall seconds, result); the CPU seconds of the call go to CPU_SPENT[fn.__name__]."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    CPU_SPENT[fn.__name__] = time.process_time() - cpu
    return time.perf_counter() - start, result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=600_000, help="trials in the set")
    parser.add_argument("--n-boot", type=int, default=1000, help="resamples per interval")
    parser.add_argument(
        "--loop-resamples", type=int, default=5, help="resamples the plain loop is timed on"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    bonafide, spoof = _scores(args.size, args.seed)
    n = args.n_boot
    print(f"{bonafide.size} bona fide + {spoof.size} spoof trials, {n} resamples")
    print(f"full-data EER {compute_eer(bonafide, spoof)[0]:.5f}")

    loop_s, loop = _timed(loop_eers, bonafide, spoof, args.loop_resamples, args.seed)
    fast = bootstrap_eers([(bonafide, spoof)], n_boot=args.loop_resamples, seed=args.seed)[0]
    same = np.array_equal(loop, fast)
    loop_total = loop_s / args.loop_resamples * n
    print(
        f"plain loop      {loop_s / args.loop_resamples * 1e3:8.1f} ms/resample "
        f"-> {loop_total:7.1f} s for {n} (extrapolated from {args.loop_resamples})"
    )
    print(f"  EERs of those resamples equal the fast path's bit for bit: {same}")

    fast_s, (low, high) = _timed(bootstrap_eer_ci, bonafide, spoof, n_boot=n, seed=args.seed)
    print(
        f"bootstrap_eer_ci {fast_s:7.2f} s  ({fast_s / n * 1e3:.2f} ms/resample, "
        f"{CPU_SPENT['bootstrap_eer_ci']:.2f} s CPU)  95% CI [{low:.5f}, {high:.5f}]  "
        f"speed-up {loop_total / fast_s:.1f}x"
    )

    speakers = np.random.default_rng(args.seed + 1).integers(0, IN_THE_WILD_SPEAKERS, args.size)
    cluster_s, (low, high) = _timed(
        bootstrap_eer_ci,
        bonafide,
        spoof,
        n_boot=n,
        seed=args.seed,
        bonafide_groups=speakers[: bonafide.size],
        spoof_groups=speakers[bonafide.size :],
    )
    print(
        f"cluster ({IN_THE_WILD_SPEAKERS} groups) {cluster_s:7.2f} s  "
        f"95% CI [{low:.5f}, {high:.5f}]  ({cluster_s / fast_s:.2f}x the stratified time)"
    )

    other = (bonafide + np.random.default_rng(args.seed + 2).normal(0, 0.5, bonafide.size), spoof)
    paired_s, delta = _timed(paired_bootstrap_delta, (bonafide, spoof), other, n_boot=n)
    print(
        f"paired, 2 systems {paired_s:6.2f} s  delta {delta.delta:+.5f} "
        f"[{delta.low:+.5f}, {delta.high:+.5f}]  ({paired_s / fast_s:.2f}x one system)"
    )
    if not same:
        print("the fast path's EERs differ from the plain loop's")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
