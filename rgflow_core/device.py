"""Devices: a user's `--device` string as a torch.device, what a device can do (bf16,
deterministic kernels), what its failures mean (out of memory), and waiting for it."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rgflow_core.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(
            f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", "device"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{name} asked for CUDA, but no CUDA GPU is available here", "device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)", "device"
            )
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N", "device")
    return device


def check_amp(device: torch.device | str, amp: str) -> None:
    """Refuse bf16 autocast on a GPU without bfloat16 (before V100 and T4 fail mid-run).

    Raises:
        UsageError: `amp` is bf16 and the CUDA device cannot compute in bfloat16.
    """
    device = torch.device(device)
    if amp != "bf16" or device.type != "cuda":
        return
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        raise UsageError(
            f"bf16 needs a GPU with bfloat16 arithmetic (compute capability 8.0 or more: "
            f"A100, H100, RTX 30xx and later); {name} has {major}.{minor}; train in float32 "
            "(amp off)",
            "amp",
        )


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why `torch.compile` cannot run on `device` on this machine, or None if it can.

    Inductor turns graphs into C++ (CPU) or Triton (CUDA) code and builds it on first use:
    the CPU needs a C++ compiler (`g++`, or the one `CXX` names) that can build against
    torch's and Python's headers, a GPU the `triton` package.
    """
    device = torch.device(device)
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "the triton package is not installed"
    compiler = os.environ.get("CXX", "g++")
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # what inductor raises when it finds none differs between versions
        return f"no C++ compiler found ({compiler})"
    if failure := _cpu_compile_failure():
        return f"the C++ compiler ({compiler}) failed to build torch.compile's code: {failure}"
    return None


@functools.cache
def _cpu_compile_failure() -> str | None:
    """The compiler's complaint when Inductor cannot build and run a tiny graph (forward and
    backward) on the CPU, else None. A compiler can be present and still fail (no Python
    headers, a broken install): this finds out before a run depends on it, once per
    process (about 2 s when Inductor's on-disk cache holds the graph)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # CUDA_HOME unset
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(8, requires_grad=True)
            torch.compile(lambda t: (t.sin() * 2.0).sum(), dynamic=False)(x).backward()
    except Exception as err:  # whatever the build raised: what the compiler said, if it did
        chain, cause = [], err
        while cause is not None and len(chain) < 10:
            chain.append(cause)
            cause = cause.__cause__ or getattr(cause, "inner_exception", None)
        built = [e for e in chain if type(e).__name__ == "CppCompileError"]
        lines = [line.strip() for line in str((built or chain)[0]).splitlines() if line.strip()]
        # the compiler's last words end its error; torch's own advice lines are no help here
        lines = [line for line in lines if not line.startswith("Set TORCHDYNAMO_VERBOSE")]
        if not lines:
            return type(err).__name__
        return (lines[-1] if built else lines[0])[:300]
    return None


def training_kernel(compile: bool, device: torch.device | str) -> str:
    """The kernel a training pass runs (`RGFlow.kernel`): "compiled" when compiling is
    asked for and can run on `device`, else "fast" (the same maps, rounded differently)."""
    return "compiled" if compile and compile_unavailable(device) is None else "fast"


@contextmanager
def explain_out_of_memory(device: torch.device | str, batch_size: int) -> Iterator[None]:
    """Turn the device running out of memory inside the block into a `UsageError` that
    names the batch (`batch_size` images per process) and what saves memory."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise UsageError(
            f"out of memory on {torch.device(device)} at {batch_size} images per process; use "
            "a smaller {batch_size}, or activation checkpointing ({checkpointing}) to trade "
            "speed for memory"
        ) from None


def use_deterministic_algorithms() -> None:
    """Make every kernel deterministic, so that a GPU run repeats bitwise (slower).

    The CPU kernels rgflow uses are deterministic already. On CUDA this picks
    deterministic kernels (an operation that has none fails, naming itself) and the
    cuBLAS workspace setting they need; call it before the first CUDA operation.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that timings are true."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a new allocation can use on `device` now (None where it cannot be known)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
