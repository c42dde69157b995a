"""Residual MLP conditioners for the block bijectors, in plain differentiable torch.

A conditioner f maps a flattened block (C*K*K features) to C*K*K outputs: `n_res`
residual blocks `x <- (x + g(x)) / sqrt(2)`, where g alternates Swish (learnable beta
per feature) and weight-normalised Linear layers with widths
[C*K*K, n_hidden (n_mlp times), C*K*K].

Coupling layers need two conditioners, s and t, on the same input: `ResidualMLP` holds
`n_nets` of them stacked along a leading axis, so each Linear of all nets is one batched
matmul. This module is the reference a researcher reads and edits; `rgflow_core.kernels`
evaluates the same nets faster (and is tested equal to this code in float64).

References: Hu et al., "RG-Flow", arXiv:2010.00029, appendix (network details);
Salimans and Kingma, "Weight normalization", arXiv:1602.07868.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

RES_SCALE = 1.0 / math.sqrt(2.0)  # keeps the residual stream's variance from growing


@dataclass
class LinearWeights:
    """Effective weights of one stacked Linear: weight (n_nets, in, out), bias (n_nets, 1, out)."""

    weight: Tensor
    bias: Tensor


class ResidualMLP(nn.Module):
    """`n_nets` residual MLPs of identical shape, evaluated together.

    Arguments:
        features: width of the residual stream (C*K*K).
        hidden: width of the hidden layers.
        n_res: number of residual blocks.
        n_mlp: number of hidden layers per residual block.
        n_nets: number of independent nets stacked (2 for s and t).
        masks: optional list of (out, in) 0/1 masks, one per Linear of a residual block
            (MADE-style autoregressive masks); the same masks are used in every block.

    Parameters per Linear i (stacked over nets): direction `v[i]` (n, out, in), norm
    `g[i]` (n, out, 1), `bias[i]` (n, 1, out) and the Swish slope `beta[i]` (n, 1, in)
    of the activation before it.
    """

    def __init__(
        self,
        features: int,
        hidden: int,
        n_res: int,
        n_mlp: int,
        n_nets: int = 2,
        masks: list[Tensor] | None = None,
    ) -> None:
        super().__init__()
        widths = [features] + [hidden] * n_mlp + [features]
        self.features = features
        self.n_res = n_res
        self.n_linear = len(widths) - 1  # Linears per residual block
        self.v = nn.ParameterList()
        self.g = nn.ParameterList()
        self.bias = nn.ParameterList()
        self.beta = nn.ParameterList()
        for _ in range(n_res):
            for fan_in, fan_out in zip(widths[:-1], widths[1:]):
                bound = math.sqrt(2.81 * 3 / fan_in)
                v = torch.empty(n_nets, fan_out, fan_in).uniform_(-bound, bound)
                self.v.append(nn.Parameter(v))
                self.g.append(nn.Parameter(torch.ones(n_nets, fan_out, 1)))
                self.bias.append(nn.Parameter(torch.zeros(n_nets, 1, fan_out)))
                self.beta.append(nn.Parameter(torch.ones(n_nets, 1, fan_in)))
        if masks is not None:
            for i, mask in enumerate(masks):
                self.register_buffer(f"mask{i}", mask.to(torch.get_default_dtype()))
        self.masked = masks is not None
        # Weight norm starts at W = v: g is set to the row norms of the (masked) directions.
        with torch.no_grad():
            for i in range(len(self.v)):
                self.g[i].copy_(self.direction(i).norm(dim=2, keepdim=True).clamp_min(1e-12))

    def train(self, mode: bool = True) -> ResidualMLP:
        if mode:  # the folded weights `rgflow_core.kernels.folded` keeps for evaluation
            self.__dict__.pop("_folded", None)
        return super().train(mode)

    def direction(self, i: int) -> Tensor:
        """The direction v of Linear i, with its autoregressive mask applied if any."""
        v = self.v[i]
        if self.masked:
            v = v * getattr(self, f"mask{i % self.n_linear}")
        return v

    def weights(self) -> list[LinearWeights]:
        """Effective weight-normalised weights W = g v / |v| of every Linear, transposed
        for `x @ W`."""
        out = []
        for i, (g, b) in enumerate(zip(self.g, self.bias)):
            v = self.direction(i)
            w = v * (g / v.norm(dim=2, keepdim=True).clamp_min(1e-12))  # (n, out, in)
            out.append(LinearWeights(w.transpose(1, 2), b))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate every net on the same input: (N, F) -> (n_nets, N, F)."""
        weights = self.weights()
        stream = x.unsqueeze(0)  # broadcast over the nets
        for r in range(self.n_res):
            h = stream
            for i in range(r * self.n_linear, (r + 1) * self.n_linear):
                h = h * torch.sigmoid(self.beta[i] * h)  # Swish
                h = h @ weights[i].weight + weights[i].bias
            stream = (stream + h) * RES_SCALE
        return stream
