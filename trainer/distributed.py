"""The one module that owns ``torch.distributed``.

Every helper is the identity (or the trivial answer) when no process group is initialised, so one
process and N processes (torchrun, Ray Train) run the same code. Ranks: ``world_rank`` (global),
``local_rank`` (on this node), ``world_size``.

Contrastive losses need :func:`gather_with_grad`: with it, a loss over the local anchors against
the gathered batch reproduces the single-process gradient exactly (DDP then averages over ranks).
A plain ``torch.distributed.all_gather`` whose local slice is swapped back for the input keeps only
that slice's gradient: the other ranks' anchors never push on this rank's embeddings, which gives a
wrong direction and a 1/world_size scale. ``tests/trainer/test_distributed.py`` shows both.

DDP's wrapper lives here too (:func:`wrap_ddp`), so no other trainer module imports
``torch.distributed`` or ``torch.nn.parallel``.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def is_distributed() -> bool:
    """True when a default process group exists."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def world_rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its node, from ``LOCAL_RANK`` (set by torchrun and Ray Train)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return world_rank() == 0


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group the launcher describes; returns whether this run is distributed.

    A group that already exists (Ray Train creates one) is kept. Otherwise, if ``WORLD_SIZE`` > 1,
    the group is created from ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``
    (``env://``). ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``; with nccl
    the process is bound to GPU ``local_rank % device_count`` first.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        device = torch.device("cuda", local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    torch_dist.init_process_group(backend=backend, **kwargs)
    return True


def destroy() -> None:
    if is_distributed():
        torch_dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when more than one rank runs, else ``model`` itself.

    On CUDA the wrapper is bound to ``device`` (one GPU per process); on CPU (gloo) it takes no
    device ids. Construction broadcasts rank 0's parameters and buffers, so every rank must call it
    at the same point. Train through the returned module (it averages the gradients over ranks in
    backward); the parameters stay those of ``model``.
    """
    if world_size() <= 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather (B, ...) from every rank into (W*B, ...), rank-major, keeping gradients.

    The backward sums, over all ranks, the gradient each rank's loss sends to every slice and
    returns to each rank the part for its own slice; so the gradient w.r.t. ``x`` is the one a
    single process would compute on the full batch. Every rank must pass the same shape and call it
    (and run backward through it) in the same order. Identity without a process group.

    Uses the functional-collectives gather (backward: reduce-scatter of the summed gradient), which
    torch 2.14 names as the successor of the deprecated ``torch.distributed.nn.functional``
    ``all_gather``; both give the same gradient.
    """
    if not is_distributed():
        return x
    gathered = funcol.all_gather_single(x.contiguous(), 0, torch_dist.group.WORLD)  # (W*B, ...)
    return funcol.wait_tensor(gathered)  # a plain tensor, not a lazily waited wrapper


def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All-gather (B, ...) from every rank into (W*B, ...), rank-major, without gradient.

    Every rank must pass the same shape (see :func:`all_gather_variable` otherwise).
    """
    x = x.detach()
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_variable(x: torch.Tensor) -> torch.Tensor:
    """All-gather (B_r, ...) where ranks may hold different B_r (sharded evaluation), no gradient.

    Returns (sum_r B_r, ...), rank-major. The sizes are gathered first; each rank pads to the
    largest, gathers and trims. The trailing dims and dtype must agree across ranks.
    """
    x = x.detach()
    if not is_distributed():
        return x
    sizes = all_gather_nograd(torch.tensor([x.shape[0]], device=x.device)).tolist()  # (W,)
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = all_gather_nograd(padded)  # (W * longest, ...)
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)])


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the element-wise sum of ``x`` over ranks (``x`` is not modified)."""
    out = x.detach().clone()
    if is_distributed():
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the element-wise minimum of ``x`` over ranks."""
    out = x.detach().clone()
    if is_distributed():
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.MIN)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the element-wise mean of ``x`` over ranks (integers become float)."""
    return all_reduce_sum(x) / world_size()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (the argument is ignored on the others)."""
    if not is_distributed():
        return obj
    box = [obj if world_rank() == src else None]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out
