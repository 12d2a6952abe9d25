"""Stage-1 steps per second: our step against a plain PyTorch loop on the same model and batch.

(a) our step (``trainer.stage1.Stepper``: forward, gathered SupCon, backward, head clip, AdamW,
enqueue), (b) a plain loop (forward, in-batch SupCon written out, backward, AdamW), (c) our step
with a full 4096 and 8192 queue. All paths run interleaved in one process on one model and batch.

    python bench/train_step.py                    # tiny preset on CPU (and xlsr-300m if CUDA)
    python bench/train_step.py --quick
    python bench/train_step.py --preset xlsr-300m # on CUDA: bf16 and the paper's fp32 recipe

Aim: (a)/(b) >= 0.95, and the 8192 queue costs under 5% step time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from trainer.config import load_config
from trainer.model import SupConModel
from trainer.queue import CrossBatchQueue
from trainer.runtime import Runtime
from trainer.stage1 import Stepper, build_optimizer, build_schedule

# Dense peak TFLOP/s by name fragment (bf16, tf32); MFU is reported against these.
PEAKS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0)}


def plain_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch SupCon L_out written the obvious way (Khosla et al. 2020)."""
    z = z.float()
    logits = z @ z.T / temperature  # (B, B)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    per_anchor = -(log_prob.masked_fill(~positives, 0).sum(1)) / positives.sum(1).clamp_min(1)
    return per_anchor[positives.any(1)].mean()


def _batch(batch_size: int, seconds: float, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = int(seconds * 16000)
    return {
        "waveform": (0.1 * torch.randn(batch_size, n, generator=g)).to(device),
        "attention_mask": torch.ones(batch_size, n, dtype=torch.long, device=device),
        "label": torch.arange(batch_size, device=device) % 2,
    }


def _plain_step(model, optimizer, batch, rt: Runtime, temperature: float) -> Callable[[], None]:
    def step() -> None:
        with rt.autocast():
            z = model(batch["waveform"], batch["attention_mask"])
        loss = plain_supcon(z, batch["label"], temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], n: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - start) / n


def _flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def run_case(preset: str, device: torch.device, bf16: bool, args: argparse.Namespace) -> None:
    overrides = [f"model.preset={preset}", f"data.sampler.batch_size={args.batch}"]
    if preset == "xlsr-300m":
        overrides += [
            "model.embedding_dim=256",
            "model.gradient_checkpointing=true",
            "stage1.lr_encoder=1e-5",
            "stage1.lr_head=5e-4",
        ]
    cfg = load_config(None, overrides)
    rt = Runtime(device=device, bf16=bf16, show_progress=False)
    torch.manual_seed(0)
    base = SupConModel(cfg.model).to(device)
    batch = _batch(args.batch, args.seconds, device)
    steps: dict[str, Callable[[], None]] = {}
    for name, size in (("ours", 0), ("ours+q4096", 4096), ("ours+q8192", 8192)):
        model = copy.deepcopy(base)
        optimizer = build_optimizer(cfg, model)
        queue = CrossBatchQueue(size, cfg.model.embedding_dim, device=device)
        if size:  # a full queue: the steady-state cost
            fill = F.normalize(torch.randn(size, cfg.model.embedding_dim, device=device), dim=1)
            queue.enqueue(fill, torch.arange(size, device=device) % 2)
        stepper = Stepper(cfg, rt, model, optimizer, build_schedule(cfg, optimizer, 10**9), queue)
        steps[name] = lambda s=stepper, q=bool(size): s(batch, use_queue=q)
    plain_model = copy.deepcopy(base)
    plain_opt = build_optimizer(cfg, plain_model)
    steps["plain"] = _plain_step(plain_model, plain_opt, batch, rt, cfg.loss.temperature)
    for step in steps.values():  # warm-up (allocator, kernels, AdamW state)
        for _ in range(args.warmup):
            step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved, so drifts hit every path alike
        for name, step in steps.items():
            seconds[name].append(_time(step, args.steps, device))
    med = {name: statistics.median(v) for name, v in seconds.items()}
    flops = _flops(steps["ours"])
    precision = "bf16" if bf16 else "fp32"
    print(
        f"\n{preset} on {device.type} ({precision}), batch {args.batch} x {args.seconds:g} s, "
        f"{flops / 1e9:.1f} GFLOP per step"
    )
    print(f"{'path':<12} {'steps/s':>8} {'samples/s':>10} {'vs plain':>9}")
    for name, sec in med.items():
        print(f"{name:<12} {1 / sec:>8.2f} {args.batch / sec:>10.1f} {med['plain'] / sec:>8.3f}x")
    print(f"(a)/(b) = {med['plain'] / med['ours']:.3f}  (aim >= 0.95)")
    for size in (4096, 8192):
        cost = med[f"ours+q{size}"] / med["ours"] - 1
        print(f"queue {size}: {100 * cost:+.1f}% step time  (aim < 5% for 8192)")
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 2**30
        name = torch.cuda.get_device_name(device)
        peak = next((p for k, p in PEAKS.items() if k in name), None)
        mfu = ""
        if peak is not None:
            achieved = flops / med["ours"] / 1e12
            mfu = f", MFU {100 * achieved / peak[0 if bf16 else 1]:.1f}% of {name} dense peak"
        print(f"peak memory {peak_gb:.1f} GiB{mfu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=("tiny", "xlsr-300m"),
        help="default: tiny on CPU, and xlsr-300m too when CUDA is available",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="clip length (default 1 s for tiny, 4 s for xlsr-300m)",
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: steadier timings on a shared box)",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    presets = [args.preset] if args.preset else ["tiny"] + (["xlsr-300m"] if cuda else [])
    for preset in presets:
        seconds = args.seconds or (1.0 if preset == "tiny" else 4.0)
        case = argparse.Namespace(**{**vars(args), "seconds": seconds})
        if preset == "tiny":
            run_case(preset, torch.device("cpu"), bf16=False, args=case)
        elif not cuda:
            print("xlsr-300m needs CUDA for a meaningful timing; skipped")
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            run_case(preset, torch.device("cuda"), bf16=True, args=case)
            run_case(preset, torch.device("cuda"), bf16=False, args=case)  # the paper's fp32
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
