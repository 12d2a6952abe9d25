"""Stage-1 throughput: our step against a plain PyTorch loop, and what each speed option buys.

Cases, interleaved in one process on one model and batch (each its own copy of the weights):

- ``before``: the step as it was on 2026-11-26 (gradient checkpointing on, the all-ones
  attention mask passed to the encoder, foreach AdamW, a host sync every step);
- ``ours``: the trainer's defaults (``trainer.step.Stepper``: checkpointing ``auto``, SDPA
  attention without a mask for unpadded batches, fused AdamW on CUDA, a sync every 50 steps);
- ``plain``: forward, in-batch SupCon written out, backward, AdamW, with the same attention
  and checkpointing as ``ours``: what any loop would cost (ours / plain is the overhead);
- ``q8192``: ours with a full 8192-entry queue; ``compiled``: ours with ``runtime.compile``.

Per case: samples/s, ours-relative ratios, peak memory and MFU (CUDA). Options:
``--profile`` prints where a step of ``ours`` spends its time (the ``stage1/*`` ranges and the
heaviest operators by device time); ``--eval`` the embedding throughput of the test sets
(inference mode, the automatic batch, head 4 s and full 10 s crops); ``--loader`` the data
loader's clips/s with the paper's RawBoost on a synthetic corpus, against the step's;
``--pack N`` runs N trial processes on one GPU, each with 1/N of its memory, and prints their
aggregate samples/s against one process alone (on CPU, with the tiny preset, only as a check
that the path runs).

    python bench/train_step.py                    # tiny preset on CPU (and xlsr-300m if CUDA)
    python bench/train_step.py --quick
    python bench/train_step.py --preset xlsr-300m --profile --eval --loader   # on CUDA
    python bench/train_step.py --preset xlsr-300m --pack 2 --cases ours

Aims (issue 14, H100/H200, xlsr-300m, batch 16 x 4 s, bf16): ours >= 3x the 93 samples/s of
2026-11-26, ours / plain >= 0.97, packing >= 1.5x aggregate samples/s per GPU.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from trainer.config import TrainerConfig, load_config
from trainer.data.config import CropConfig
from trainer.memory import resolve_checkpointing, resolve_eval_batch
from trainer.model import SupConModel
from trainer.queue import CrossBatchQueue
from trainer.runtime import Runtime
from trainer.step import LossWatch, Stepper, build_optimizer, build_schedule

# Dense peak TFLOP/s by name fragment (bf16, tf32); MFU is reported against these.
PEAKS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0)}
BASELINE_XLSR_BF16 = 93.0  # samples/s, H100 80GB, 2026-11-26 (the reference)
CASES = ("before", "ours", "plain", "q8192", "compiled")

Step = Callable[[], None]


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
    """A loader's batch: on the host (pinned on CUDA), unpadded clips, balanced labels."""
    g = torch.Generator().manual_seed(0)
    n = int(seconds * 16000)
    batch = {
        "waveform": 0.1 * torch.randn(batch_size, n, generator=g),  # (B, T)
        "attention_mask": torch.ones(batch_size, n, dtype=torch.long),  # (B, T)
        "label": torch.arange(batch_size) % 2,  # (B,)
    }
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def _config(preset: str, batch: int, extra: list[str]) -> TrainerConfig:
    overrides = [f"model.preset={preset}", f"data.sampler.batch_size={batch}"]
    if preset == "xlsr-300m":
        overrides += ["model.embedding_dim=256", "stage1.lr_encoder=1e-5", "stage1.lr_head=5e-4"]
        overrides += ["data.train_crop.seconds=4.0", "data.eval_crop.seconds=4.0"]
    return load_config(None, overrides + extra)


def _stepper(cfg: TrainerConfig, rt: Runtime, model: SupConModel, queue_size: int) -> Stepper:
    optimizer = build_optimizer(cfg, model)
    queue = CrossBatchQueue(queue_size, cfg.model.embedding_dim, device=rt.device)
    if queue_size:  # a full queue: the steady-state cost
        dim = cfg.model.embedding_dim
        fill = F.normalize(torch.randn(queue_size, dim, device=rt.device), dim=1)
        queue.enqueue(fill, torch.arange(queue_size, device=rt.device) % 2)
    return Stepper(cfg, rt, model, optimizer, build_schedule(cfg, optimizer, 10**9), queue)


def _ours(cfg: TrainerConfig, rt: Runtime, model: SupConModel, batch, queue_size=0) -> Step:
    stepper = _stepper(cfg, rt, model, queue_size)
    watch = LossWatch(cfg.runtime.sync_every)
    count = [0]

    def step() -> None:
        loss, _ = stepper(batch, use_queue=bool(queue_size))
        watch.add(loss, count[0])
        count[0] += 1

    return step


def _before(cfg: TrainerConfig, rt: Runtime, model: SupConModel, batch) -> Step:
    """2026-11-26's step: checkpointing on, the mask on the device (so the encoder takes its
    padding path), foreach AdamW, the loss read back every step."""
    model.set_checkpointing(True)
    stepper = _stepper(cfg, rt, model, 0)
    on_device = {k: v.to(rt.device) for k, v in batch.items()}  # a device mask is passed on

    def step() -> None:
        loss, _ = stepper(on_device, use_queue=False)
        loss.item()

    return step


def _plain(cfg: TrainerConfig, rt: Runtime, model: SupConModel, batch) -> Step:
    optimizer = build_optimizer(cfg, model)
    wave = batch["waveform"]
    labels = batch["label"]

    def step() -> None:
        with rt.autocast():
            z = model(wave.to(rt.device, non_blocking=True))
        loss = plain_supcon(z, labels.to(rt.device, non_blocking=True), cfg.loss.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def build_steps(preset: str, device: torch.device, bf16: bool, args) -> tuple[dict, Runtime]:
    share = getattr(args, "pack_now", 1)  # a packed trial's memory share, as the sweep sets it
    extra = [f"runtime.gpu_memory_fraction={1 / share}"] if share > 1 else []
    cfg = _config(preset, args.batch, extra)
    rt = Runtime(device=device, bf16=bf16, show_progress=False)
    torch.manual_seed(0)
    base = SupConModel(cfg.model).to(device)
    checkpointing = resolve_checkpointing(cfg, base, rt)
    print(f"gradient checkpointing auto -> {'on' if checkpointing else 'off'}")
    batch = _batch(args.batch, args.seconds, device)
    makers = {
        "before": lambda m: _before(
            _config(preset, args.batch, ["runtime.adamw=foreach"]), rt, m, batch
        ),
        "ours": lambda m: _ours(cfg, rt, m, batch),
        "plain": lambda m: _plain(cfg, rt, m, batch),
        "q8192": lambda m: _ours(cfg, rt, m, batch, 8192),
        "compiled": lambda m: _compiled(cfg, rt, m, batch),
    }
    steps = {}
    for name in args.cases:
        model = copy.deepcopy(base)
        model.set_checkpointing(checkpointing)
        steps[name] = makers[name](model)
    return steps, rt


def _compiled(cfg: TrainerConfig, rt: Runtime, model: SupConModel, batch) -> Step:
    model.encoder.compile()
    return _ours(cfg, rt, model, batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Step, n: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - start) / n


def _peak_gib(step: Step, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def _flops(step: Step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def run_case(preset: str, device: torch.device, bf16: bool, args: argparse.Namespace) -> float:
    """Times every case; returns ours' samples/s."""
    steps, _ = build_steps(preset, device, bf16, args)
    for name, step in steps.items():  # warm-up (allocator, kernels, AdamW state, compilation)
        start = time.perf_counter()
        for _ in range(args.warmup):
            step()
        _sync(device)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    peaks = {name: _peak_gib(step, device) for name, step in steps.items()}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved, so drifts hit every path alike
        for name, step in steps.items():
            seconds[name].append(_time(step, args.steps, device))
    med = {name: statistics.median(v) for name, v in seconds.items()}
    key = "ours" if "ours" in med else next(iter(med))
    flops = _flops(steps[key]) if device.type == "cuda" or preset == "tiny" else 0
    precision = "bf16" if bf16 else ("fp32+TF32" if device.type == "cuda" else "fp32")
    print(
        f"\n{preset} on {device.type} ({precision}), batch {args.batch} x {args.seconds:g} s, "
        f"{flops / 1e9:.1f} GFLOP per step ({key})"
    )
    peak = _device_peak(device, bf16)
    print(f"{'case':<10} {'samples/s':>10} {'vs ours':>8} {'peak GiB':>9} {'MFU':>6}")
    for name, sec in med.items():
        gib = "-" if peaks[name] is None else f"{peaks[name]:.1f}"
        mfu = "-" if peak is None else f"{100 * flops / sec / 1e12 / peak:.1f}%"
        print(f"{name:<10} {args.batch / sec:>10.1f} {med[key] / sec:>7.3f}x {gib:>9} {mfu:>6}")
    if "plain" in med and "ours" in med:
        print(f"ours / plain = {med['plain'] / med['ours']:.3f}  (aim >= 0.97)")
    if "before" in med and "ours" in med:
        print(f"ours / before = {med['before'] / med['ours']:.2f}x")
    if "q8192" in med and "ours" in med:
        print(f"queue 8192: {100 * (med['q8192'] / med['ours'] - 1):+.1f}% step time")
    if preset == "xlsr-300m" and bf16 and "ours" in med:
        ratio = args.batch / med["ours"] / BASELINE_XLSR_BF16
        print(f"ours / 93 samples/s of 2026-11-26 (H100) = {ratio:.2f}x  (aim >= 3)")
    if args.profile and "ours" in steps:
        profile_step(steps["ours"], device)
    return args.batch / med[key]


def _device_peak(device: torch.device, bf16: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((p for k, p in PEAKS.items() if k in name), None)
    return None if peak is None else peak[0 if bf16 else 1]


def profile_step(step: Step, device: torch.device, n: int = 5) -> None:
    """Where ``n`` steps spend their time: the Stepper's ranges, then the heaviest operators."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        _sync(device)
    events = prof.key_averages()
    use_device = device.type == "cuda"
    total = sum(e.self_device_time_total if use_device else e.self_cpu_time_total for e in events)
    print(f"\nprofile of {n} steps ({'device' if use_device else 'CPU'} time):")
    for e in sorted(events, key=lambda e: e.key):
        if e.key.startswith("stage1/"):
            dev = f", device {e.device_time_total / n / 1e3:.1f} ms" if use_device else ""
            print(f"  {e.key:<20} CPU {e.cpu_time_total / n / 1e3:.1f} ms{dev} per step")
    by_self = sorted(
        events,
        key=lambda e: e.self_device_time_total if use_device else e.self_cpu_time_total,
        reverse=True,
    )
    print("  heaviest operators (self time, share of the total):")
    for e in by_self[:15]:
        t = e.self_device_time_total if use_device else e.self_cpu_time_total
        print(f"    {100 * t / max(total, 1):5.1f}%  {t / n / 1e3:7.2f} ms  {e.key[:70]}")
    kernels = {e.key: e.count for e in events if "_scaled_dot_product" in e.key}
    found = ", ".join(f"{k} ({c / n:g} per step)" for k, c in sorted(kernels.items()))
    print(f"  attention kernels (SDPA picks one): {found or 'none: eager attention'}")
    if use_device:  # the CUDA runtime's blocking calls: where the host waits for the GPU
        names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
        calls = sum(e.count for e in events if e.key in names)
        print(f"  host-device syncs: {calls / n:.1f} per step (the profile's closing one included)")


def eval_throughput(preset: str, device: torch.device, args: argparse.Namespace) -> None:
    """Embedding clips/s in inference mode, bf16 on CUDA, the automatic batch, 4 s and 10 s."""
    cfg = _config(preset, args.batch, ["data.eval_batch_size=auto"])
    rt = Runtime(device=device, bf16=device.type == "cuda", show_progress=False)
    model = SupConModel(cfg.model).to(device).eval()
    print(f"\nevaluation embedding throughput ({preset}, {device.type})")
    for seconds in (4.0, 10.0):
        crop = CropConfig(policy="head", seconds=seconds)
        batch = resolve_eval_batch(cfg, model, rt, crop)
        wave = _batch(batch, seconds, device)["waveform"].to(device)

        def step(w: torch.Tensor = wave) -> None:
            with torch.inference_mode(), rt.autocast():
                model(w)

        step()
        sec = statistics.median(_time(step, max(1, args.steps // 2), device) for _ in range(3))
        print(f"  {seconds:>4g} s clips: batch {batch}, {batch / sec:.0f} clips/s")


def loader_throughput(args: argparse.Namespace, step_rate: float | None) -> None:
    """The training loader (paper RawBoost, 4-s random crops) on a synthetic corpus."""
    from trainer.data.corpora import read_corpus
    from trainer.data.dataset import AudioDataset, make_loader
    from trainer.data.rawboost import RawBoost
    from trainer.data.sampler import BalancedBatchSampler
    from trainer.data.synth import generate
    from trainer.runtime import loader_workers

    root = generate(
        Path(tempfile.mkdtemp(prefix="bench_loader_")), seed=0, size="micro", progress=False
    )
    extra = [f"data.train.root={root / 'LA'}", "data.rawboost.algo=paper"]
    cfg = _config("tiny", args.batch, extra)
    train = read_corpus(cfg.data.train)
    crop = CropConfig(policy="random", seconds=args.seconds)
    dataset = AudioDataset(train.utterances, crop, augment=RawBoost(cfg.data.rawboost), seed=0)
    cuda = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    workers = args.loader_workers
    if workers is None:
        workers = loader_workers("auto", cfg.runtime, cuda)
    sampler = BalancedBatchSampler(
        [u.is_bonafide for u in train.utterances], cfg.data.sampler, world_size=1, world_rank=0
    )
    print(f"\nloader: {workers} worker(s), RawBoost paper chain, {args.seconds:g}-s crops")
    clips, start = 0, None
    for epoch in range(100):
        sampler.set_epoch(epoch)
        loader = make_loader(
            dataset, batch_sampler=sampler, num_workers=workers, pin_memory=cuda.type == "cuda"
        )
        for batch in loader:
            if start is None:  # the workers' start-up is not throughput
                start = time.perf_counter()
                continue
            clips += len(batch["label"])
        if clips >= 40 * args.batch:
            break
    rate = clips / (time.perf_counter() - start)
    verdict = ""
    if step_rate:
        bottleneck = "IS" if rate < step_rate else "is not"
        verdict = f" against the step's {step_rate:.0f}: the loader {bottleneck} the bottleneck"
    print(f"  {rate:.0f} clips/s{verdict}")


def _pack_child(rank: int, args: argparse.Namespace, barrier, results) -> None:
    device = torch.device("cuda", 0) if args.pack_device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1 / args.pack_now, 0)
    else:  # a CPU code-path check: one thread per trial process
        torch.set_num_threads(1)
    preset = args.preset or ("xlsr-300m" if device.type == "cuda" else "tiny")
    steps, _ = build_steps(preset, device, device.type == "cuda", args)
    step = steps["ours"]
    for _ in range(args.warmup):
        step()
    _sync(device)
    barrier.wait()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < args.pack_seconds:
        step()
        count += 1
    _sync(device)
    results[rank] = count * args.batch / (time.perf_counter() - start)


def pack(args: argparse.Namespace) -> bool:
    """N trial processes on one device against one alone: aggregate samples/s.

    On CUDA each process is capped at 1/N of the GPU's memory, as ``--gpus-per-trial 1/N`` caps
    a trial. On CPU (one thread each) it only checks the code path: the figure says nothing
    about a GPU. Returns False when a process failed."""
    ctx = mp.get_context("spawn")
    rates = {}
    for n in (1, args.pack):
        args.pack_now, args.cases = n, ["ours"]
        barrier, results = ctx.Barrier(n), ctx.Manager().dict()
        procs = [
            ctx.Process(target=_pack_child, args=(r, args, barrier, results)) for r in range(n)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if len(results) != n:
            codes = [p.exitcode for p in procs]
            print(f"pack {n}: {n - len(results)} process(es) failed (exit codes {codes})")
            return False
        rates[n] = sum(results.values())
        each = ", ".join(f"{v:.1f}" for v in results.values())
        print(f"pack {n} on {args.pack_device}: {rates[n]:.1f} samples/s in all ({each})")
    gain = rates[args.pack] / rates[1]
    print(f"packing {args.pack} per {args.pack_device}: {gain:.2f}x one trial's samples/s", end="")
    print(" (aim >= 1.5)" if args.pack_device == "cuda" else " (CPU: a code-path check only)")
    return True


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
    parser.add_argument("--cases", type=lambda s: s.split(","), help=f"of {','.join(CASES)}")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: steadier timings on a shared box)",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps")
    parser.add_argument("--profile", action="store_true", help="where ours' step time goes")
    parser.add_argument("--eval", action="store_true", help="embedding clips/s, 4 s and 10 s")
    parser.add_argument("--loader", action="store_true", help="the training loader's clips/s")
    parser.add_argument("--loader-workers", type=int, help="default: data.num_workers auto")
    parser.add_argument(
        "--pack",
        type=int,
        default=0,
        help="N trial processes on one GPU, against one alone (on CPU: a code-path check)",
    )
    parser.add_argument("--pack-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.pack:
        args.pack_device = "cuda" if cuda else "cpu"
        tiny = args.preset == "tiny" or (args.preset is None and not cuda)
        args.seconds = args.seconds or (1.0 if tiny else 4.0)
        return 0 if pack(args) else 1
    presets = [args.preset] if args.preset else ["tiny"] + (["xlsr-300m"] if cuda else [])
    rate = None
    for preset in presets:
        seconds = args.seconds or (1.0 if preset == "tiny" else 4.0)
        default = [c for c in CASES if preset != "tiny" or c != "compiled"]
        case = argparse.Namespace(
            **{**vars(args), "seconds": seconds, "cases": args.cases or default}
        )
        if preset == "tiny":
            rate = run_case(preset, torch.device("cpu"), bf16=False, args=case)
            if args.eval:
                eval_throughput(preset, torch.device("cpu"), case)
        elif not cuda:
            print("xlsr-300m needs CUDA for a meaningful timing; skipped")
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            rate = run_case(preset, torch.device("cuda"), bf16=True, args=case)
            if args.eval:
                eval_throughput(preset, torch.device("cuda"), case)
    if args.loader:
        loader_throughput(
            argparse.Namespace(**{**vars(args), "seconds": args.seconds or 4.0}), rate
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
