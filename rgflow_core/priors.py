"""Factorised priors over the latent z, with a temperature.

At temperature T, `LaplacePrior` has scale T/sqrt(2) (unit variance at T=1: the sparse
prior of RG-Flow) and `GaussianPrior` has standard deviation T. The temperature may be a
tensor broadcastable to z, e.g. one value per latent level.

`PRIORS` is the registry the config's `prior` names come from.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

Temperature = float | Tensor


class FactorisedPrior(nn.Module):
    """Independent latents: z = T * e / `unit`, e drawn from a standard distribution whose
    standard deviation is `unit`, so that z has variance T**2."""

    unit: float = 1.0

    def log_density(self, z: Tensor, scale: Tensor) -> Tensor:
        """Elementwise log-density of z at `scale` = T / `unit`."""
        raise NotImplementedError

    def standard_sample(self, shape, device, dtype, generator) -> Tensor:
        """Draws e of the standard distribution."""
        raise NotImplementedError

    def log_prob(self, z: Tensor, temperature: Temperature = 1.0) -> Tensor:
        """Log-density of z summed over all non-batch dimensions: (B,)."""
        scale = torch.as_tensor(temperature, dtype=z.dtype, device=z.device) / self.unit
        return self.log_density(z, scale).expand_as(z).flatten(1).sum(1)

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
        e = self.standard_sample(shape, device, dtype, generator)
        return e * (torch.as_tensor(temperature, dtype=e.dtype, device=e.device) / self.unit)


class LaplacePrior(FactorisedPrior):
    """Independent Laplace latents with variance T**2 (scale T / sqrt(2))."""

    unit = math.sqrt(2.0)  # the standard Laplace distribution's standard deviation

    def log_density(self, z: Tensor, scale: Tensor) -> Tensor:
        return -torch.log(2 * scale) - z.abs() / scale

    def standard_sample(self, shape, device, dtype, generator) -> Tensor:
        u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
        # inverse CDF of the standard Laplace, with u kept off 0 so log stays finite
        u = u.clamp(torch.finfo(u.dtype).tiny, 1.0) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())


class GaussianPrior(FactorisedPrior):
    """Independent Gaussian latents with standard deviation T."""

    def log_density(self, z: Tensor, scale: Tensor) -> Tensor:
        return -0.5 * (z / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)

    def standard_sample(self, shape, device, dtype, generator) -> Tensor:
        return torch.randn(shape, device=device, dtype=dtype, generator=generator)


PRIORS: dict[str, type[FactorisedPrior]] = {"laplace": LaplacePrior, "gaussian": GaussianPrior}
