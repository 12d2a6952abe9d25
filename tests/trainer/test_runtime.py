"""The runtime of one process: seeding reproduces every RNG's draws; a device or precision this
machine lacks fails at setup, naming the key."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from trainer.config import ConfigError, RuntimeConfig
from trainer.runtime import seed_everything, setup, tf32_flags


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seeding_reproduces_the_draws() -> None:
    seed_everything(5)
    first = _draws()
    seed_everything(5)
    assert _draws() == first
    seed_everything(6)
    other = _draws()
    assert all(a != b for a, b in zip(other, first, strict=True))


def test_setup_on_cpu_seeds_with_the_trial_seed() -> None:
    rt = setup(RuntimeConfig(device="cpu", progress=False), seed=11)
    first = _draws()
    assert rt.device == torch.device("cpu") and not rt.bf16 and not rt.show_progress
    seed_everything(11)  # one process: rank 0 seeds with the trial seed itself
    assert _draws() == first
    with rt.autocast():  # fp32 on CPU: no autocast
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_on_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match=r"runtime\.precision=bf16 needs CUDA") as err:
        setup(RuntimeConfig(device="cpu", precision="bf16"), seed=0)
    assert isinstance(err.value, ConfigError)  # bad input: the trial command exits 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.device=cuda but no CUDA device"):
        setup(RuntimeConfig(device="cuda"), seed=0)


def test_tf32_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.precision=tf32 needs CUDA"):
        setup(RuntimeConfig(device="cpu", precision="tf32"), seed=0)


PRECISIONS = [
    # precision, TF32 matmuls, TF32 cuDNN convolutions, bf16 autocast
    ("fp32", False, False, False),
    ("torch-defaults", False, True, False),
    ("tf32", True, True, False),
    ("bf16", True, True, True),
    ("auto", True, True, True),
]


@pytest.mark.parametrize(("precision", "matmul", "conv", "bf16"), PRECISIONS)
def test_each_precision_names_its_tf32_flags(precision, matmul, conv, bf16) -> None:
    """torch-defaults is exactly what torch does when nobody touches the flags (the authors'
    code touches neither); fp32 turns the convolutions' TF32 off too."""
    assert tf32_flags(precision) == (matmul, conv)


def test_torch_defaults_are_torchs_own_flags() -> None:
    """The values a fresh interpreter has, read in a subprocess so no test's setup leaks in."""
    code = (
        "import torch as t; print(t.backends.cuda.matmul.allow_tf32, t.backends.cudnn.allow_tf32)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
    assert tf32_flags("torch-defaults") == (False, True)


def test_torch_defaults_run_in_fp32_on_cpu() -> None:
    rt = setup(RuntimeConfig(device="cpu", precision="torch-defaults", progress=False), seed=0)
    assert rt.device == torch.device("cpu") and not rt.bf16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("precision", "matmul", "conv", "bf16"), PRECISIONS)
def test_precision_sets_tf32_and_autocast_on_cuda(precision, matmul, conv, bf16) -> None:
    """fp32 means IEEE fp32 matmuls and convolutions, not TF32 behind the user's back."""
    rt = setup(RuntimeConfig(device="cuda", precision=precision, progress=False), seed=0)
    assert torch.backends.cuda.matmul.allow_tf32 is matmul
    assert torch.backends.cudnn.allow_tf32 is conv
    assert rt.bf16 is bf16
