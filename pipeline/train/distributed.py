"""Multi-process training with torch.distributed (launched by ``torchrun``; gloo on CPU, nccl on GPU).

Each rank embeds its share of the global batch; positives and negatives are gathered from every rank
with a differentiable all-gather, so each anchor sees the whole global batch as in-batch negatives and
the gradient of every rank's loss reaches the rank that embedded the text. Gradients are averaged once
per optimizer step by :func:`average_gradients`: GradCache runs several backward passes per step, so the
one all-reduce at the end is what DDP's ``no_sync`` bookkeeping would amount to, without its hooks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def init_from_env(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` [n, ...] from all ranks into [world*n, ...]; gradients flow back to each rank."""
    if world_size() == 1:
        return t
    return torch.cat(dist_fn.all_gather(t))


def gather_nograd(t: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def average_gradients(params) -> None:
    """All-reduce and average every gradient (call once per step, after the last backward)."""
    n = world_size()
    if n == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(n)


def all_mean(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world_size()


def agreed_stop(signum: int | None) -> int | None:
    """The stop signal any rank was asked to stop by (:mod:`pipeline.stop`), or None: every rank stops at the same
    step, or the ones that go on would wait in the next step's collectives for ever."""
    if world_size() == 1:
        return signum
    t = torch.tensor([signum or 0], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t) or None


def finish() -> None:
    """Leave the process group (after rank 0 has saved): no rank exits while another still needs it."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
