"""The speed options change speed, not results: each against its plain reference on the tiny
preset (SDPA against eager attention, no mask against an all-ones mask, fused and foreach AdamW
against the for-loop, torch.compile against eager), the amortised loss check still names the
exact step, and the ``auto`` settings resolve as documented on CPU (GPU probes: ``gpu`` tests)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.config import ModelConfig, RuntimeConfig, load_config
from trainer.memory import (
    CPU_EVAL_BATCH,
    checkpointing_needed,
    eval_batch_for,
    resolve_checkpointing,
    resolve_eval_batch,
)
from trainer.model import SupConModel, padding_mask
from trainer.queue import CrossBatchQueue
from trainer.runtime import Runtime, adamw_options, loader_workers
from trainer.step import LossWatch, NonFiniteLossError, Stepper, build_optimizer, build_schedule

CPU = torch.device("cpu")
SR = 16000


def _rt() -> Runtime:
    return Runtime(device=CPU, bf16=False, show_progress=False)


def _batch(n: int = 8, samples: int = SR // 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "waveform": 0.1 * torch.randn(n, samples, generator=g),  # (B, T)
        "attention_mask": torch.ones(n, samples, dtype=torch.long),  # (B, T)
        "label": torch.arange(n) % 2,  # (B,)
    }


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout off everywhere, the attention's too (a float, not a module): eager and compiled
    code draw different masks."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    return model


def _steps(overrides: list[str], n: int, compiled: bool = False) -> list[float]:
    """Losses of ``n`` stage-1 steps of the local config with ``overrides``, from seed 0."""
    cfg = load_config(None, ["model.dropout=0.0", "stage1.lr_encoder=1e-4", *overrides])
    torch.manual_seed(0)
    model = _no_dropout(SupConModel(cfg.model))
    if compiled:
        model.encoder.compile()
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, 100)
    stepper = Stepper(cfg, _rt(), model, optimizer, schedule, CrossBatchQueue(0, 64))
    batch = _batch(16, SR)
    return [float(stepper(batch, use_queue=False)[0]) for _ in range(n)]


def test_sdpa_attention_matches_eager() -> None:
    torch.manual_seed(0)
    sdpa = SupConModel(ModelConfig(attention="sdpa")).eval()  # attention dropout is no module
    eager = copy.deepcopy(sdpa)
    eager.encoder.set_attn_implementation("eager")
    assert sdpa.encoder.config._attn_implementation == "sdpa"
    assert eager.encoder.config._attn_implementation == "eager"
    wave = _batch()["waveform"]
    with torch.no_grad():
        torch.testing.assert_close(sdpa(wave), eager(wave), rtol=1e-5, atol=1e-6)


def test_an_unpadded_batch_runs_without_a_mask_and_gives_the_same_embeddings() -> None:
    batch = _batch()
    assert padding_mask(batch["attention_mask"], CPU) is None
    padded = batch["attention_mask"].clone()
    padded[0, -100:] = 0
    assert torch.equal(padding_mask(padded, CPU), padded)
    torch.manual_seed(0)
    model = SupConModel(ModelConfig()).eval()
    with torch.no_grad():
        masked = model(batch["waveform"], batch["attention_mask"])
        unmasked = model(batch["waveform"], None)
    torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_adamw_implementations_match_the_for_loop(impl: str) -> None:
    reference = _steps(["runtime.adamw=for-loop"], 3)
    assert _steps([f"runtime.adamw={impl}"], 3) == pytest.approx(reference, abs=1e-5)


def test_adamw_auto_is_fused_on_cuda_and_foreach_on_cpu() -> None:
    assert adamw_options("auto", torch.device("cuda", 0)) == {"fused": True}
    assert adamw_options("auto", CPU) == {"foreach": True}
    assert adamw_options("for-loop", CPU) == {"foreach": False}
    cfg = load_config(None, [])
    optimizer = build_optimizer(cfg, SupConModel(cfg.model))
    assert optimizer.defaults["foreach"] is True


@pytest.mark.slow
def test_compiled_encoder_gives_the_eager_losses() -> None:
    """runtime.compile: the same losses as eager to 1e-4 over three steps (dropout off, so both
    draw nothing; the two differ by float reassociation only)."""
    eager = _steps([], 3)
    compiled = _steps(["runtime.compile=true"], 3, compiled=True)
    assert compiled == pytest.approx(eager, abs=1e-4)


def test_loss_watch_names_the_first_non_finite_step() -> None:
    watch = LossWatch(every=4)
    assert watch.add(torch.tensor(1.0), 10) == []
    assert watch.add(torch.tensor(2.0), 11) == []
    assert watch.add(torch.tensor(3.0), 12) == []
    assert watch.add(torch.tensor(4.0), 13) == [1.0, 2.0, 3.0, 4.0]  # the 4th step checks
    watch.add(torch.tensor(5.0), 14)
    watch.add(torch.tensor(float("nan")), 15)
    watch.add(torch.tensor(float("inf")), 16)
    with pytest.raises(NonFiniteLossError, match="stage 1 loss is nan") as err:
        watch.add(torch.tensor(1.0), 17)
    assert err.value.step == 15


def test_auto_settings_on_cpu() -> None:
    cfg = load_config(None, ["model.gradient_checkpointing=auto", "data.eval_batch_size=auto"])
    model = SupConModel(cfg.model)
    assert resolve_checkpointing(cfg, model, _rt()) is False and not model.checkpointing
    on = load_config(None, ["model.gradient_checkpointing=true"])
    assert resolve_checkpointing(on, model, _rt()) is True and model.checkpointing
    assert resolve_eval_batch(cfg, model, _rt()) == CPU_EVAL_BATCH
    assert resolve_eval_batch(load_config(None, ["data.eval_batch_size=7"]), model, _rt()) == 7


def test_loader_workers_auto() -> None:
    runtime = RuntimeConfig(threads=4)
    assert loader_workers("auto", runtime, CPU) == 0
    assert loader_workers("auto", runtime, torch.device("cuda", 0)) == 3  # 4 CPUs, 1 for the rank
    assert loader_workers("auto", RuntimeConfig(threads=32), torch.device("cuda", 0)) == 8
    assert loader_workers(5, runtime, CPU) == 5


def test_checkpointing_decision_and_eval_batch_arithmetic() -> None:
    gib = 2**30
    assert not checkpointing_needed(30 * gib, 5 * gib, 80 * gib)
    assert checkpointing_needed(70 * gib, 5 * gib, 80 * gib)  # 75 > 0.9 x 80
    assert checkpointing_needed(None, 0, 80 * gib)  # the probe ran out of memory
    assert eval_batch_for(0.1 * gib, 80 * gib) == 512  # 560 fit: the power of two below
    assert eval_batch_for(1e3, 80 * gib) == 1024  # capped
    assert eval_batch_for(100 * gib, 80 * gib) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_probes_on_cuda() -> None:
    """On a GPU the tiny preset fits easily: checkpointing stays off, the evaluation batch is
    a power of two, and the probes leave the RNG where they found it."""
    cfg = load_config(None, ["runtime.device=cuda"])
    rt = Runtime(device=torch.device("cuda", 0), bf16=True, show_progress=False)
    model = SupConModel(cfg.model).to(rt.device)
    torch.manual_seed(3)
    expected = torch.rand(2, device=rt.device)
    torch.manual_seed(3)
    assert resolve_checkpointing(cfg, model, rt) is False
    batch = resolve_eval_batch(cfg, model, rt)
    assert batch & (batch - 1) == 0
    assert torch.equal(torch.rand(2, device=rt.device), expected)
