"""Units in one place: dequantisation, the logit preprocessing bijector, bits per dim.

An 8-bit image k becomes x = (k + u) / 256 in [0, 1]^D (u ~ U[0, 1): dequantisation);
`Preprocess` maps x to logit space, y = logit(0.05 + 0.9 x), and its log-determinant
is part of the likelihood, so log p(x) = log p_flow(y) + ladj. Bits per dimension are the
negative log-likelihood of the discrete image: (NLL / D + ln 256) / ln 2. `image_bpd`, the
training objective, puts these together; training, evaluation, encoding and the benchmark
all call it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ALPHA = 0.05  # keeps the logit away from +-infinity at black and white pixels


def dequantize(
    k: Tensor, generator: torch.Generator | None = None, noise: bool | Tensor = True
) -> Tensor:
    """uint8 (or integer-valued) images -> x in [0, 1): (k + u) / 256.

    `noise`: True draws u ~ U[0, 1) (from `generator`); a tensor is u itself (a batch's
    noise drawn elsewhere, broadcastable to k); False takes u = 0.5, the centre of each
    bin, so that `quantize` recovers k exactly.
    """
    k = k.float() if not k.is_floating_point() else k
    if isinstance(noise, Tensor):
        u = noise.to(k.device, k.dtype)
    elif noise:
        u = torch.rand(k.shape, generator=generator, device=k.device, dtype=k.dtype)
    else:
        u = torch.full_like(k, 0.5)
    return (k + u) / 256.0


def quantize(x: Tensor) -> Tensor:
    """x in [0, 1] -> uint8 pixel values (the bin that x falls in)."""
    return (x * 256.0).floor().clamp(0, 255).to(torch.uint8)


class Preprocess(nn.Module):
    """Bijector x in [0,1]^D <-> y = logit(ALPHA + (1 - 2 ALPHA) x), with log-determinants."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (y, ladj), ladj (B,) = log |dy/dx| summed over pixels."""
        p = ALPHA + (1 - 2 * ALPHA) * x
        y = torch.log(p) - torch.log1p(-p)
        ladj = (math.log(1 - 2 * ALPHA) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, ladj

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y -> (x, ladj). Not clamped: samples may leave [0, 1]; `RGFlow.decode` clamps."""
        p = torch.sigmoid(y)
        x = (p - ALPHA) / (1 - 2 * ALPHA)
        # log dp/dy = log p + log(1 - p) = -softplus(-y) - softplus(y)
        log_dp = -nn.functional.softplus(-y) - nn.functional.softplus(y)
        ladj = (log_dp - math.log(1 - 2 * ALPHA)).flatten(1).sum(1)
        return x, ladj


def bits_per_dim(log_px: Tensor, dims: int) -> Tensor:
    """Bits per dimension of 8-bit data from log p(x) in nats of x in [0, 1]^D."""
    return (-log_px / dims + math.log(256.0)) / math.log(2.0)


def image_bpd(
    flow: nn.Module, x: Tensor, *, net: nn.Module | None = None, amp: bool = False
) -> Tensor:
    """The objective: bits per dimension (B,) of dequantised images under an RG-Flow.

    Arguments:
        flow: an `RGFlow` (its `preprocess`, `prior` and `config` are used).
        x: (B, C, L, L) dequantised images in [0, 1] (see `dequantize`).
        net: the module that runs the bijection when it is not `flow` itself (its
            DistributedDataParallel wrapper).
        amp: run the bijection under bf16 autocast; densities are summed in x's dtype.
    """
    y, ladj_pre = flow.preprocess(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        z, ladj = (net or flow)(y)
    logp = flow.prior.log_prob(z.to(x.dtype)) + ladj.to(x.dtype) + ladj_pre
    return bits_per_dim(logp, flow.config.dims)
