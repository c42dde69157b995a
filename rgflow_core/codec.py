"""Sampling, encoding and decoding in batches: images <-> latents, exactly.

Images here are uint8 tensors (B, C, L, L) on the CPU; the model may live on any device.
Latents z have the image's shape, and `model.level_map` gives the RG level of each entry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rgflow_core.checks import check_int, check_positive
from rgflow_core.flow import RGFlow, check_memory
from rgflow_core.geometry import check_level
from rgflow_core.preprocess import dequantize, image_bpd
from rgflow_core.priors import Temperature

Progress = Callable[[int], None]  # told how many images each batch finished
MAX_IMAGES = 100_000  # one call samples, encodes or decodes at most this many images
MAX_BATCH = 4096
MAX_TEMPERATURE = 100.0


def _noop(_: int) -> None:
    pass


def model_device(model: RGFlow) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's parameters."""
    p = next(model.parameters())
    return p.device, p.dtype


def check_sampling(
    model: RGFlow,
    n: int,
    batch_size: int,
    temperature: float,
    levels: dict[int, float] | None = None,
    *,
    allow_large: bool = False,
) -> None:
    """Check the arguments of a sampling request before any work: counts, temperatures
    (finite and > 0) and per-level temperatures (`levels`: {level: T}), and that a batch
    fits in memory."""
    check_int("n", n, 1, MAX_IMAGES)
    check_int("batch_size", batch_size, 1, MAX_BATCH)
    check_positive("temperature", temperature, MAX_TEMPERATURE)
    for h, t in (levels or {}).items():
        check_level(model.config.levels, h, "level_temperature")
        check_positive("level_temperature", t, MAX_TEMPERATURE)
    # decoding keeps no gradients: about a third of a training step's memory
    check_memory(model.config, model_device(model)[0], max(1, min(n, batch_size) // 3),
                 allow_large=allow_large)  # fmt: skip


@torch.no_grad()
def sample_images(
    model: RGFlow,
    n: int,
    temperature: Temperature = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    progress: Progress = _noop,
) -> Tensor:
    """n samples from the model as uint8 images (n, C, L, L), drawn in batches.

    `temperature` is a float or a tensor broadcastable to z (e.g. `model.temperature_map`).
    """
    check_int("n", n, 1, MAX_IMAGES)
    check_int("batch_size", batch_size, 1, MAX_BATCH)
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        z = model.sample_latents(count, temperature, generator)
        out.append(model.decode_uint8(z).cpu())
        progress(count)
    return torch.cat(out)


@torch.no_grad()
def encode_images(
    model: RGFlow, images: Tensor, batch_size: int = 256, progress: Progress = _noop
) -> tuple[Tensor, Tensor]:
    """uint8 images (B, C, L, L) -> latents z (B, C, L, L) and bits per dim (B,).

    No dequantisation noise: every pixel sits at the centre of its bin, so
    `decode_images(model, z)` gives back the same uint8 images, and the bpd is that of
    the bin centres (a deterministic number, close to the usual noisy estimate).
    """
    check_int("batch_size", batch_size, 1, MAX_BATCH)
    device, dtype = model_device(model)
    zs, bpds = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        zs.append(model.encode(batch).cpu())
        bpds.append(image_bpd(model, dequantize(batch, noise=False).to(dtype)).cpu())
        progress(len(batch))
    return torch.cat(zs), torch.cat(bpds)


@torch.no_grad()
def decode_images(
    model: RGFlow, z: Tensor, batch_size: int = 256, progress: Progress = _noop
) -> Tensor:
    """Latents z (B, C, L, L) -> uint8 images (B, C, L, L), decoded in batches."""
    check_int("batch_size", batch_size, 1, MAX_BATCH)
    device, dtype = model_device(model)
    out = []
    for start in range(0, len(z), batch_size):
        batch = z[start : start + batch_size].to(device=device, dtype=dtype)
        out.append(model.decode_uint8(batch).cpu())
        progress(len(batch))
    return torch.cat(out)
