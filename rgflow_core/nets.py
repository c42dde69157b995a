"""Residual MLP conditioners for the block bijectors.

A conditioner f maps a flattened block (C*K*K features) to C*K*K outputs:
`n_res` residual blocks `x <- (x + g(x)) / sqrt(2)`, where g alternates Swish (learnable
beta per feature) and weight-normalised Linear layers with widths
[C*K*K, n_hidden (n_mlp times), C*K*K].

Coupling layers need two conditioners, s and t, on the same input. `ResidualMLP` holds
`n_nets` of them stacked along a leading axis, so each Linear of all nets is one batched
matmul, and the weight norm is computed once per call of `weights()` (once per coupling
layer per pass over the data), not once per use.

References: Hu et al., "RG-Flow", arXiv:2010.00029, appendix (network details).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

RES_SCALE = 1.0 / math.sqrt(2.0)


class _SwishFn(torch.autograd.Function):
    """y = x * sigmoid(beta * x), saving only x and beta for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, beta: Tensor) -> Tensor:
        ctx.save_for_backward(x, beta)
        return x * torch.sigmoid(beta * x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, beta = ctx.saved_tensors
        sig = torch.sigmoid(beta * x)
        dsig = sig * (1 - sig)
        grad_x = grad * (sig + beta * x * dsig)
        grad_beta = grad * x * x * dsig
        # beta broadcasts over the row axis; reduce its gradient back to beta's shape
        grad_beta = grad_beta.sum_to_size(beta.shape)
        return grad_x, grad_beta


def swish(x: Tensor, beta: Tensor) -> Tensor:
    """Swish with a learnable slope: x * sigmoid(beta * x)."""
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(beta * x)  # the compiler fuses this and its gradient
    if torch.is_grad_enabled() and (x.requires_grad or beta.requires_grad):
        return _SwishFn.apply(x, beta)
    return x * torch.sigmoid(beta * x)


@dataclass
class LinearWeights:
    """Effective weights of one stacked Linear: weight (n_nets, in, out), bias (n_nets, 1, out)."""

    weight: Tensor
    bias: Tensor


class ResidualMLP(nn.Module):
    """`n_nets` residual MLPs of identical shape, evaluated with batched matmuls.

    Arguments:
        features: width of the residual stream (C*K*K).
        hidden: width of the hidden layers.
        n_res: number of residual blocks.
        n_mlp: number of hidden layers per residual block.
        n_nets: number of independent nets stacked (2 for s and t).
        masks: optional list of (out, in) 0/1 masks, one per Linear of a residual block
            (MADE-style autoregressive masks); the same masks are used in every block.
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
        self.n_linear = len(widths) - 1
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
            for i, v in enumerate(self.v):
                self.g[i].copy_(self._direction(v, i).norm(dim=2, keepdim=True).clamp_min(1e-12))

    def _direction(self, v: Tensor, i: int) -> Tensor:
        if self.masked:
            v = v * getattr(self, f"mask{i % self.n_linear}")
        return v

    def weights(self) -> list[LinearWeights]:
        """Effective (weight-normalised, masked) weights of every Linear, transposed for matmul."""
        out = []
        for i, (v, g, b) in enumerate(zip(self.v, self.g, self.bias)):
            v = self._direction(v, i)
            w = v * (g / v.norm(dim=2, keepdim=True).clamp_min(1e-12))  # (n, out, in)
            out.append(LinearWeights(w.transpose(1, 2), b))
        return out

    def forward(
        self,
        x: Tensor,
        weights: list[LinearWeights] | None = None,
        in_idx: slice | None = None,
        out_idx: slice | None = None,
    ) -> Tensor:
        """Evaluate all nets on one input.

        Arguments:
            x: (N, F) input, or (N, F_in) if `in_idx` is given: then x holds only the
                features `in_idx` of the stream and the others are zero (a coupling mask).
                Zero inputs stay zero through Swish, so only those weight columns are used.
            weights: from `weights()`; computed here if not given.
            out_idx: if given, only these output features are computed (the rest would
                be thrown away by the coupling mask).

        Returns:
            (n_nets, N, F_out) outputs.
        """
        if weights is None:
            weights = self.weights()
        return residual_mlp(
            x,
            [w.weight for w in weights],
            [w.bias for w in weights],
            list(self.beta),
            self.n_res,
            self.features,
            in_idx,
            out_idx,
        )


def residual_mlp(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    betas: list[Tensor],
    n_res: int,
    features: int,
    in_idx: slice | None = None,
    out_idx: slice | None = None,
) -> Tensor:
    """The computation of `ResidualMLP.forward` as a pure function of tensors.

    Pure, so that `torch.compile` can fuse its elementwise work into few kernels and reuse
    one compiled graph for every coupling layer of the same shape.
    """
    n_linear = len(weights) // n_res
    stream = x.unsqueeze(0)  # (1, N, F_in): broadcast over the nets until block 0 ends
    cols = in_idx
    for r in range(n_res):
        last_block = r == n_res - 1
        h = stream
        for j in range(n_linear):
            i = r * n_linear + j
            w, b, beta = weights[i], biases[i], betas[i]
            if j == 0 and cols is not None:
                w, beta = w[:, cols, :], beta[:, :, cols]
            if last_block and j == n_linear - 1 and out_idx is not None:
                w, b = w[:, :, out_idx], b[:, :, out_idx]
            h = torch.baddbmm(b, swish(h, beta), w)
        if cols is not None:
            # zeros outside `cols` join the residual stream now that g(x) fills them
            stream = F.pad(stream, (cols.start, features - cols.stop))
            cols = None
        if last_block and out_idx is not None:
            stream = stream[..., out_idx]
        stream = (stream + h) * RES_SCALE
    return stream
