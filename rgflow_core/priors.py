"""Factorised priors over the latent z, with a temperature.

At temperature T, `LaplacePrior` has scale T/sqrt(2) (unit variance at T=1: the sparse
prior of RG-Flow) and `GaussianPrior` has standard deviation T. The temperature may be a
tensor broadcastable to z, e.g. one value per latent level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

Temperature = float | Tensor


class LaplacePrior(nn.Module):
    """Independent Laplace latents with variance T**2."""

    def log_prob(self, z: Tensor, temperature: Temperature = 1.0) -> Tensor:
        """Log-density of z summed over all non-batch dimensions: (B,)."""
        scale = torch.as_tensor(temperature, dtype=z.dtype, device=z.device) / math.sqrt(2.0)
        logp = -torch.log(2 * scale) - z.abs() / scale
        return logp.expand_as(z).flatten(1).sum(1)

    def sample(
        self,
        shape: tuple[int, ...],
        temperature: Temperature = 1.0,
        *,
        device=None,
        dtype=None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw z of the given shape."""
        u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
        # inverse CDF of the standard Laplace, with u kept off 0 so log stays finite
        u = u.clamp(torch.finfo(u.dtype).tiny, 1.0) - 0.5
        z = -torch.sign(u) * torch.log1p(-2 * u.abs())
        return z * (torch.as_tensor(temperature, dtype=z.dtype, device=z.device) / math.sqrt(2.0))


class GaussianPrior(nn.Module):
    """Independent Gaussian latents with standard deviation T."""

    def log_prob(self, z: Tensor, temperature: Temperature = 1.0) -> Tensor:
        """Log-density of z summed over all non-batch dimensions: (B,)."""
        std = torch.as_tensor(temperature, dtype=z.dtype, device=z.device)
        logp = -0.5 * (z / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
        return logp.expand_as(z).flatten(1).sum(1)

    def sample(
        self,
        shape: tuple[int, ...],
        temperature: Temperature = 1.0,
        *,
        device=None,
        dtype=None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw z of the given shape."""
        z = torch.randn(shape, device=device, dtype=dtype, generator=generator)
        return z * torch.as_tensor(temperature, dtype=z.dtype, device=z.device)


PRIORS = {"laplace": LaplacePrior, "gaussian": GaussianPrior}
