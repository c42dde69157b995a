"""Several processes training one model: the process group, ordered data loading, the DDP
wrap and the reductions the loop needs. With one process every function is a no-op.

Launched by `torchrun`, each process reads RANK, WORLD_SIZE and LOCAL_RANK from its
environment; NCCL joins GPUs and gloo CPUs (so that this is testable without a GPU).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from rgflow_core.device import resolve_device


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun; return this process's device."""
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Run the block on rank 0 before the others (e.g. generating a dataset once)."""
    rank, world = rank_world()
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module that runs the training step: `model` itself, or DDP around it."""
    if rank_world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A 0/1 float tensor that is 1 on every rank if it is 1 on any."""
    if rank_world()[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of a number over all ranks."""
    rank, world = rank_world()
    if world == 1:
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of a tensor over all ranks (in place)."""
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t
