"""Edits of latents that are decoded to images: mixing across scales, traversals of
single latents, and random walks inside one level.

Everything is tensor in, tensor out. Latents z have the image's shape (B, C, L, L);
`model.level_map` (L, L) gives the RG level of each position.

References: Hu et al., "RG-Flow: a hierarchical and explainable flow model based on
renormalization group and sparse prior", arXiv:2010.00029, sections 4-5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rgflow_core.checks import check_float, check_int
from rgflow_core.codec import decode_images, encode_images
from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow
from rgflow_core.geometry import check_level
from rgflow_core.priors import Temperature

# --- mixing across scales ------------------------------------------------------------------


def check_scale(model: RGFlow, scale: int) -> int:
    """`scale` if it is a meaningful cut (1..H-1), else a UsageError."""
    H = model.config.levels
    if H < 2:
        raise UsageError("this model has a single RG level: there is no scale to cut at", "scale")
    if not 1 <= scale <= H - 1:
        raise UsageError(
            f"{scale} is out of range: this model has {H} levels, so the cut must be in "
            f"1..{H - 1} (levels >= scale come from the first image)",
            "scale",
        )
    return scale


def mix_latents(z_high: Tensor, z_low: Tensor, scale: int, level_map: Tensor) -> Tensor:
    """Latents of level >= `scale` from `z_high`, those of level < `scale` from `z_low`.

    Both (B, C, L, L) (or broadcastable); returns a new tensor of the broadcast shape.
    """
    high = (level_map >= scale).to(z_high.device)
    return torch.where(high, z_high, z_low)


@torch.no_grad()
def mix_images(model: RGFlow, a: Tensor, b: Tensor, scale: int) -> Tensor:
    """uint8 images (B, C, L, L): the levels >= `scale` of each a, those below of each b."""
    check_scale(model, scale)
    z, _ = encode_images(model, torch.cat([a, b]))
    za, zb = z[: len(a)], z[len(a) :]
    return decode_images(model, mix_latents(za, zb, scale, model.level_map.cpu()))


@torch.no_grad()
def mix_panel(model: RGFlow, a: Tensor, b: Tensor, scales: Sequence[int]) -> Tensor:
    """Rows [a, b, a-high + b-low, b-high + a-low] for each cut in `scales`.

    Arguments:
        a, b: uint8 images (C, L, L).

    Returns:
        uint8 (len(scales), 4, C, L, L).
    """
    for s in scales:
        check_scale(model, s)
    z, _ = encode_images(model, torch.stack([a, b]))
    za, zb = z[:1], z[1:]
    level_map = model.level_map.cpu()
    mixes = []
    for s in scales:
        mixes += [mix_latents(za, zb, s, level_map), mix_latents(zb, za, s, level_map)]
    decoded = decode_images(model, torch.cat(mixes)).view(len(scales), 2, *a.shape)
    originals = torch.stack([a, b]).expand(len(scales), 2, *a.shape)
    return torch.cat([originals, decoded], dim=1)


# --- traversals of single latents ------------------------------------------------------------


def check_latent(model: RGFlow, level: int, latent: tuple[int, int, int]) -> tuple[int, int, int]:
    """Validate a latent (c, i, j): in range and of the given level."""
    c, i, j = latent
    C, L = model.config.channels, model.config.image_size
    if not (0 <= c < C and 0 <= i < L and 0 <= j < L):
        raise UsageError(
            f"{c},{i},{j} is out of range: channel 0..{C - 1}, position 0..{L - 1}", "latent"
        )
    actual = int(model.level_map[i, j])
    if actual != level:
        raise UsageError(
            f"{c},{i},{j} is a latent of level {actual}, not of level {level}", "latent"
        )
    return c, i, j


def latent_statistics(z: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over a batch of latents z (N, C, L, L): (C, L, L) each."""
    if len(z) < 2:
        return z.mean(0), torch.ones_like(z[0])
    return z.mean(0), z.std(0)


def top_variance_latents(std: Tensor, level_map: Tensor, level: int, k: int) -> list[tuple]:
    """The k latents (c, i, j) of a level with the largest standard deviation `std` (C, L, L)."""
    mask = (level_map == level).to(std.device).expand_as(std)
    check_int("top", k, 1, int(mask.sum()))
    scores = torch.where(mask, std, torch.full_like(std, -math.inf))
    flat = torch.topk(scores.flatten(), k).indices
    C, L, _ = std.shape
    return [(int(f // (L * L)), int(f // L % L), int(f % L)) for f in flat]


def traverse_latents(
    z: Tensor,
    latents: Sequence[tuple[int, int, int]],
    mean: Tensor,
    std: Tensor,
    extent: float = 3.0,
    frames: int = 16,
) -> Tensor:
    """Vary one latent at a time from mean - extent*std to mean + extent*std, others fixed.

    Arguments:
        z: (C, L, L) base latents.
        latents: (c, i, j) of each latent to vary.
        mean, std: (C, L, L) statistics that set each latent's scale.

    Returns:
        (len(latents), frames, C, L, L) latents.
    """
    check_int("frames", frames, 2, 1000)
    check_float("extent", extent, 0.0, 100.0, lo_open=True)
    steps = torch.linspace(-extent, extent, frames, dtype=z.dtype, device=z.device)
    out = z.expand(len(latents), frames, *z.shape).clone()
    for k, (c, i, j) in enumerate(latents):
        out[k, :, c, i, j] = mean[c, i, j] + steps * std[c, i, j]
    return out


# --- random walks ----------------------------------------------------------------------------


def random_walk(
    model: RGFlow,
    z: Tensor,
    level: int,
    steps: int,
    step_size: float = 0.2,
    temperature: Temperature = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random walk in the latents of one level, the others fixed.

    The walk is mean-reverting (z <- sqrt(1 - a^2) z + a * eps, eps ~ prior(T), a =
    `step_size`): it wanders without drifting off into the prior's tails, so every frame
    looks like a sample.

    Arguments:
        z: (B, C, L, L) starting latents (B walks at once).

    Returns:
        (steps + 1, B, C, L, L) latents, the start first.
    """
    check_int("steps", steps, 1, 1000)
    check_float("step_size", step_size, 0.0, 1.0, lo_open=True)
    check_level(model.config.levels, level)
    mask = (model.level_map == level).to(z.device)
    keep = math.sqrt(1 - step_size**2)
    path = [z]
    for _ in range(steps):
        eps = model.sample_latents(len(z), temperature, generator).to(z.device, z.dtype)
        path.append(torch.where(mask, keep * path[-1] + step_size * eps, path[-1]))
    return torch.stack(path)
