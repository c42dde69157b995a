"""Receptive fields of latents: where in the image each latent acts.

RF_l = E_{z ~ prior} sum_{c, c'} |d x_{c'} / d z_{c, l}|, the mean absolute derivative of
the generated pixels with respect to latent l. It is exactly zero outside the latent's
`generator_cone`, and its extent roughly doubles from one level to the next.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 5 (receptive fields).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rgflow_core.checks import check_float, check_int
from rgflow_core.codec import Progress, _noop, model_device
from rgflow_core.flow import RGFlow
from rgflow_core.geometry import level_positions
from rgflow_core.priors import Temperature


def _generate_pixels(model: RGFlow) -> Callable[[Tensor], Tensor]:
    """G: z -> pixels in [0, 1] (not clamped, so the derivative is the flow's own)."""

    def G(z: Tensor) -> Tensor:
        y, _ = model.inverse(z)
        x, _ = model.preprocess.inverse(y)
        return x

    return G


def _jvp(fn: Callable[[Tensor], Tensor], primal: Tensor, tangent: Tensor) -> Tensor:
    """J(primal) @ tangent, forward mode (exact zeros stay exact zeros)."""
    try:
        with warnings.catch_warnings():
            # torch.func's first use scripts a helper with the deprecated torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            return torch.func.jvp(fn, (primal,), (tangent,))[1]
    except (RuntimeError, NotImplementedError):
        # Some fused or custom kernels lack forward-mode rules: double-backward instead.
        return torch.autograd.functional.jvp(fn, primal, tangent)[1]


def receptive_field(
    model: RGFlow,
    positions: Tensor,
    samples: int = 16,
    temperature: Temperature = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    progress: Progress = _noop,
) -> Tensor:
    """Receptive fields of the latents at `positions`, by Monte Carlo over the prior.

    x = G(z) are the generated pixels in [0, 1] (before clamping); the expectation is a
    mean over `samples` draws of z at `temperature`. Derivatives are exact (forward-mode
    automatic differentiation, one tangent per latent channel and sample).

    Arguments:
        positions: (P, 2) latent positions (i, j).

    Returns:
        (P, L, L) float tensor on the CPU; zero exactly outside each latent's
        `generator_cone`.
    """
    check_int("samples", samples, 1, 10_000)
    check_int("batch_size", batch_size, 1)
    device, dtype = model_device(model)
    C, L = model.config.channels, model.config.image_size
    positions = positions.long().view(-1, 2)
    P = len(positions)
    z = model.sample_latents(samples, temperature, generator)  # (N, C, L, L)
    # one task per (sample, position, channel): its own primal row and one-hot tangent
    n_idx, p_idx, c_idx = torch.meshgrid(
        torch.arange(samples), torch.arange(P), torch.arange(C), indexing="ij"
    )
    n_idx, p_idx, c_idx = n_idx.flatten(), p_idx.flatten(), c_idx.flatten()
    rf = torch.zeros(P, L, L, dtype=torch.float64)
    G = _generate_pixels(model)
    for start in range(0, len(n_idx), batch_size):
        n, p, c = (t[start : start + batch_size] for t in (n_idx, p_idx, c_idx))
        primal = z[n.to(device)]
        tangent = torch.zeros_like(primal)
        i, j = positions[p, 0], positions[p, 1]
        tangent[torch.arange(len(n), device=device), c.to(device), i.to(device), j.to(device)] = 1
        dx = _jvp(G, primal, tangent).detach()  # (b, C, L, L)
        rf.index_add_(0, p, dx.abs().sum(1).double().cpu())
        progress(len(n))
    return (rf / samples).to(dtype)


def representative_positions(level_map: Tensor, level: int, count: int) -> Tensor:
    """Up to `count` latent positions of a level, nearest to the image centre first."""
    pos = level_positions(level_map.cpu(), level)
    L = level_map.shape[-1]
    d2 = ((pos.double() - L / 2) ** 2).sum(1)
    order = torch.argsort(d2, stable=True)  # ties keep row-major order
    return pos[order[:count]]


@dataclass(frozen=True)
class Extent:
    """How far a receptive field reaches: pixels where RF > `threshold` * max(RF)."""

    pixels: int  # number of such pixels
    rows: int  # height of their bounding box (periodic images may wrap: at most L)
    cols: int  # width of their bounding box


def rf_extent(rf: Tensor, threshold: float = 0.01) -> Extent:
    """The extent of one (L, L) receptive field."""
    check_float("threshold", threshold, 0.0, 1.0)
    peak = float(rf.max())
    if not peak > 0:
        return Extent(0, 0, 0)
    inside = rf > threshold * peak
    rows = inside.any(1).nonzero().flatten()
    cols = inside.any(0).nonzero().flatten()
    return Extent(
        int(inside.sum()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    )
