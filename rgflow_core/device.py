"""Devices: a user's `--device` string as a torch.device, and waiting for a device."""

from __future__ import annotations

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
