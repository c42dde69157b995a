"""Residual MLP conditioners for the block bijectors.

A conditioner f maps a flattened block (C*K*K features) to C*K*K outputs:
`n_res` residual blocks `x <- (x + g(x)) / sqrt(2)`, where g alternates Swish (learnable
beta per feature) and weight-normalised Linear layers with widths
[C*K*K, n_hidden (n_mlp times), C*K*K].

Coupling layers need two conditioners, s and t, on the same input. `ResidualMLP` holds
`n_nets` of them stacked along a leading axis, so each Linear of all nets is one batched
matmul, and the weight norm is computed once per call of `weights()` (once per coupling
layer per pass over the data), not once per use.

Speed (a 2-core CPU spends as long on the elementwise work around the small matmuls as on
the matmuls): the residual scale 1/sqrt(2) is folded into the last Linear of each block,
`x <- x / sqrt(2) + g'(x)` with g' = g / sqrt(2), and the evaluation is written out by
hand, forward (`residual_mlp`) and backward (`residual_mlp_backward`), so that a training
step saves two tensors per Linear (its input and the Swish sigmoid) and runs few, mostly
in-place, elementwise kernels. `ResidualMLPFunction` joins the two for autograd.

References: Hu et al., "RG-Flow", arXiv:2010.00029, appendix (network details).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

RES_SCALE = 1.0 / math.sqrt(2.0)


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
        """Effective (weight-normalised, masked) weights of every Linear, transposed for matmul.

        The last Linear of each residual block comes scaled by `RES_SCALE` (see the module
        docstring), as `residual_mlp` expects.
        """
        out = []
        for i, (v, g, b) in enumerate(zip(self.v, self.g, self.bias)):
            v = self._direction(v, i)
            scale = g / v.norm(dim=2, keepdim=True).clamp_min(1e-12)  # (n, out, 1)
            if i % self.n_linear == self.n_linear - 1:
                scale, b = scale * RES_SCALE, b * RES_SCALE
            out.append(LinearWeights((v * scale).transpose(1, 2), b))
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
        ws, bs, betas = restrict(
            [w.weight for w in weights],
            [w.bias for w in weights],
            list(self.beta),
            self.n_res,
            in_idx,
            out_idx,
        )
        spec = MLPSpec(self.n_res, self.features, in_idx, out_idx)
        if torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return ResidualMLPFunction.apply(x, spec, *ws, *bs, *betas)
        return residual_mlp(x, ws, bs, betas, spec)


@dataclass(frozen=True)
class MLPSpec:
    """Shape of a residual MLP evaluation.

    `in_idx` (`out_idx`): the features of the residual stream that the input holds (that
    are computed at the output); None for all `features`.
    """

    n_res: int
    features: int
    in_idx: slice | None = None
    out_idx: slice | None = None

    def overlap(self, a: slice | None, b: slice | None) -> tuple[slice, slice] | None:
        """Features held by both of two parts of the stream, as positions in a and in b."""
        a = a or slice(0, self.features)
        b = b or slice(0, self.features)
        lo, hi = max(a.start, b.start), min(a.stop, b.stop)
        if lo >= hi:
            return None
        return slice(lo - a.start, hi - a.start), slice(lo - b.start, hi - b.start)


def restrict(
    weights: list[Tensor],
    biases: list[Tensor],
    betas: list[Tensor],
    n_res: int,
    in_idx: slice | None,
    out_idx: slice | None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The parameters `residual_mlp` uses when only features `in_idx` of the input are
    non-zero (zero inputs stay zero through Swish) and only `out_idx` of the output are
    wanted: views of the first Linear's rows and Swish and of the last Linear's columns."""
    weights, biases, betas = list(weights), list(biases), list(betas)
    if in_idx is not None:
        weights[0], betas[0] = weights[0][:, in_idx, :], betas[0][..., in_idx]
    if out_idx is not None:
        weights[-1], biases[-1] = weights[-1][..., out_idx], biases[-1][..., out_idx]
    return weights, biases, betas


def residual_mlp(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    betas: list[Tensor],
    spec: MLPSpec,
    saved: list[Tensor] | None = None,
) -> Tensor:
    """The computation of `ResidualMLP.forward` as a pure function of tensors.

    Arguments:
        x: (N, F_in) input.
        weights, biases, betas: effective parameters of every Linear and Swish, restricted
            by `restrict`.
        saved: if given, receives what `residual_mlp_backward` needs (the input and the
            sigmoid of every Swish).

    Returns:
        (n_nets, N, F_out): the nets' outputs.

    Pure and differentiable by autograd (its in-place kernels only touch fresh tensors
    that autograd does not keep), so that `torch.compile` can fuse it; without autograd
    it runs fewer kernels.
    """
    n_linear = len(weights) // spec.n_res
    in_place = saved is None and not torch.is_grad_enabled()
    stream, cols = x.unsqueeze(0), spec.in_idx  # broadcast over the nets until block 0 ends
    for r in range(spec.n_res):
        h = stream
        for i in range(r * n_linear, (r + 1) * n_linear):
            sig = torch.mul(h, betas[i]).sigmoid_()
            if saved is not None:
                saved += [h, sig]
            swish = sig.mul_(h) if in_place else h * sig  # h * sigmoid(beta * h)
            if i == len(weights) - 1:
                h = _output_linear(biases[i], swish, weights[i], x.dtype)
            else:
                h = torch.baddbmm(biases[i], swish, weights[i])
        out_cols = spec.out_idx if r == spec.n_res - 1 else None
        shared = spec.overlap(cols, out_cols)
        if shared is not None:  # h is g(x) / sqrt(2): add x / sqrt(2)
            h[..., shared[1]].add_(stream[..., shared[0]], alpha=RES_SCALE)
        stream, cols = h, out_cols
    return stream


def _output_linear(bias: Tensor, x: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """The nets' last Linear, in `dtype` (the input's) even under autocast.

    The outputs s and t are only as precise as this matmul, and their rounding errors add
    up over every coupling layer into the log-determinant: with it in bf16 the quick
    model's test bpd moved by 0.016, with it in float32 by 0.002. It is the smallest
    Linear of the net, so this costs little.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return torch.baddbmm(bias, x, weight)
    with torch.autocast(x.device.type, enabled=False):
        return torch.baddbmm(bias.to(dtype), x.to(dtype), weight.to(dtype))


def residual_mlp_backward(
    grad: Tensor,
    saved: list[Tensor],
    weights: list[Tensor],
    betas: list[Tensor],
    spec: MLPSpec,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Gradients of `residual_mlp` from the gradient of its output and its `saved` tensors.

    Returns:
        gradients of x, of the weights, of the biases and of the betas.
    """
    n_linear = len(weights) // spec.n_res
    n = len(weights)
    grad_w, grad_b, grad_beta = [None] * n, [None] * n, [None] * n
    out_cols = spec.out_idx
    for r in reversed(range(spec.n_res)):
        cols = spec.in_idx if r == 0 else None
        g = grad  # gradient of the block's output, then of each Linear's input
        for i in reversed(range(r * n_linear, (r + 1) * n_linear)):
            h, sig = saved[2 * i], saved[2 * i + 1]
            grad_w[i] = torch.bmm((h * sig).transpose(1, 2), g)
            grad_b[i] = g.sum(1, keepdim=True)
            g_swish = torch.bmm(g, weights[i].transpose(1, 2))
            # swish = h * sig, sig = sigmoid(beta * h): with q = g_swish * sig' * h,
            # d/dh = g_swish * sig + beta * q and d/dbeta = q * h
            q = torch.ops.aten.sigmoid_backward(g_swish, sig).mul_(h)
            grad_beta[i] = (q * h).sum(1, keepdim=True)
            g = torch.addcmul(g_swish.mul_(sig), q, betas[i])
        shared = spec.overlap(cols, out_cols)
        if shared is not None:  # the residual connection
            g[..., shared[0]].add_(grad[..., shared[1]], alpha=RES_SCALE)
        grad, out_cols = g, cols
    return grad.sum(0), grad_w, grad_b, grad_beta  # x was broadcast over the nets


class ResidualMLPFunction(torch.autograd.Function):
    """`residual_mlp` with the hand-written backward pass `residual_mlp_backward`.

    apply(x, spec, *weights, *biases, *betas) -> (n_nets, N, F_out).
    """

    @staticmethod
    def forward(ctx, x: Tensor, spec: MLPSpec, *params: Tensor) -> Tensor:
        n = len(params) // 3
        weights, biases, betas = params[:n], params[n : 2 * n], params[2 * n :]
        saved: list[Tensor] = []
        out = residual_mlp(x, weights, biases, betas, spec, saved)
        ctx.spec, ctx.n = spec, n
        ctx.save_for_backward(*weights, *betas, *saved)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        n = ctx.n
        tensors = ctx.saved_tensors
        weights, betas, saved = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        grad_x, grad_w, grad_b, grad_beta = residual_mlp_backward(
            grad.contiguous(), list(saved), weights, betas, ctx.spec
        )
        return grad_x, None, *grad_w, *grad_b, *grad_beta
