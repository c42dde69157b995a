"""Several processes training one model: the process group, ordered data loading, the DDP
wrap and the reductions the loop needs. With one process every function is a no-op.

Launched by `torchrun`, each process reads RANK, WORLD_SIZE and LOCAL_RANK from its
environment; NCCL joins GPUs and gloo CPUs (so that this is testable without a GPU).

The ranks stop together: a refusal on one rank (`all_or_none`) or a stop asked of one
(folded into the loop's per-step `any_rank`) holds for all of them, so that none is left
waiting in a collective and the message is said once, by rank 0.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rgflow_core.device import resolve_device
from rgflow_core.errors import RGFlowError, UsageError

T = TypeVar("T")
# How long a rank waits in a collective for the others: long enough for rank 0 to decode
# a large data set or write a large state (NCCL's own default is 10 minutes).
TIMEOUT = timedelta(minutes=30)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device: str = "auto", timeout: timedelta = TIMEOUT) -> torch.device:
    """Join the process group when launched by torchrun; return this process's device.

    Under torchrun each process on a machine takes the GPU of its local rank: `cuda` (or
    `auto`) means that one, and `cuda:N` is honoured only with one process per machine.

    Raises:
        UsageError: the device is unknown or absent, or `cuda:N` with several processes
            on this machine.
    """
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dev
    if dev.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if dev.index is not None and local_world > 1:
            raise UsageError(
                f"{device}: under torchrun each of the {local_world} processes on this machine "
                f"uses the GPU of its local rank; ask for cuda (and choose the GPUs with "
                "CUDA_VISIBLE_DEVICES)",
                "device",
            )
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return dev


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank is here."""
    if rank_world()[1] > 1:
        dist.barrier()


def all_or_none(fn: Callable[[], T]) -> T:
    """`fn()` on every rank, or the first refusal on any rank raised on all of them.

    A check that fails on one rank only (its free memory, a file on its machine) would
    otherwise end that rank alone and leave the others waiting. The error raised on the
    other ranks is the failing rank's own, marked `every_rank = True`: every rank has it,
    so rank 0 alone need say it.
    """
    rank, world = rank_world()
    if world == 1:
        return fn()
    result, error = None, None
    try:
        result = fn()
    except (RGFlowError, OSError) as err:  # what a user can cause, and sees as one line
        error = err
    errors: list[Exception | None] = [None] * world
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        first.every_rank = True
        raise first
    return result  # type: ignore[return-value]


def once_per_machine(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`make()` (tensors and strings) computed by one process per machine and shared with
    the others there through a memory-mapped file, so that a data set is decoded once per
    machine, not once per process, and held in memory once.

    Rank 0 goes first (it may generate a missing data set in a shared folder), then one
    process on every other machine; a failure on any of them is raised on every rank.
    """
    rank, world = rank_world()
    if world == 1:
        return make()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    run = os.environ.get("TORCHELASTIC_RUN_ID", "") + os.environ.get("MASTER_PORT", "")
    path = Path(tempfile.gettempdir()) / f"rgflow-shared-{run}-{os.getuid()}.pt"

    def write(mine: bool) -> None:
        if mine:
            part = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                torch.save(make(), part)
                os.replace(part, path)
            finally:
                part.unlink(missing_ok=True)

    def read() -> dict[str, Any]:
        if path.is_file():
            return torch.load(path, mmap=True, weights_only=True)
        return make()  # a temp folder of its own (a container): decode here, as before

    all_or_none(lambda: write(rank == 0))
    all_or_none(lambda: write(local == 0 and rank != 0))
    try:
        return all_or_none(read)
    finally:
        barrier()  # every process of the machine has mapped it: the name can go
        if local == 0:
            path.unlink(missing_ok=True)


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
