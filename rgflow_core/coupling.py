"""Block bijectors: invertible maps of one flattened K x K block (D = C*K*K features).

Both act on a (N, D) matrix whose rows are blocks, return `(z, ladj)` with ladj of
shape (N,) in nats, and share their weights across all rows (all blocks of a sub-layer).

* `RNVPBlock` (default): `n_layers` affine coupling layers with a checkerboard mask
  inside the block. Each layer owns two residual MLPs s and t and applies the coupling
  twice, first to the complement B of the checkerboard A, then to A:
  `x_B <- x_B * exp(s(x_A)) + t(x_A)`, `s = tanh(a * f_s)`, `t = b * f_t`.
* `ARBlock`: `n_layers` autoregressive affine layers (MADE-masked residual MLPs) with
  alternating variable order; forward is one pass, the inverse is exact and sequential.

The gains a, b start at zero, so every block bijector is the identity at initialisation.

Training speed: a coupling pass in the forward direction runs as one autograd node,
`CouplingFunction`, whose backward pass is written out by hand (see `rgflow_core.nets`);
the inverse direction, autocast and `torch.compile` use the plain differentiable
`coupling_pass`.

References: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803;
Germain et al., "MADE", arXiv:1502.03509; Hu et al., "RG-Flow", arXiv:2010.00029.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from rgflow_core.nets import (
    LinearWeights,
    MLPSpec,
    ResidualMLP,
    residual_mlp,
    residual_mlp_backward,
    restrict,
)


def checkerboard_order(channels: int, kernel_size: int) -> Tensor:
    """Permutation of the C*K*K block features putting the checkerboard A = {(i+j) even} first."""
    K = kernel_size
    ij = torch.arange(K)
    black = ((ij.view(K, 1) + ij.view(1, K)) % 2 == 0).expand(channels, K, K).flatten()
    return torch.cat([black.nonzero().flatten(), (~black).nonzero().flatten()])


class PermuteFeatures(torch.autograd.Function):
    """x[:, order] for a permutation `order` with inverse `unorder`.

    Both directions are gathers (`index_select`), much faster on CPU than advanced
    indexing and its scatter-add backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, unorder: Tensor) -> Tensor:
        ctx.save_for_backward(unorder)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (unorder,) = ctx.saved_tensors
        return grad.index_select(1, unorder), None, None


class CouplingLayer(nn.Module):
    """One RNVP layer on a block split in checkerboard halves (x_A, x_B).

    Arguments:
        features: D = C*K*K, features ordered with A first (see `checkerboard_order`).
        hidden, n_res, n_mlp: shape of the residual MLPs s and t.
    """

    def __init__(self, features: int, hidden: int, n_res: int, n_mlp: int) -> None:
        super().__init__()
        self.half = features // 2
        self.net = ResidualMLP(features, hidden, n_res, n_mlp, n_nets=2)
        self.gain_s = nn.Parameter(torch.zeros(features))
        self.gain_t = nn.Parameter(torch.zeros(features))
        self._a = slice(0, self.half)
        self._b = slice(self.half, features)
        self.compiled = False  # evaluate passes with the torch.compile'd kernel

    def _pass(
        self,
        cond: Tensor,
        move: Tensor,
        w: list[LinearWeights],
        src: slice,
        dst: slice,
        inverse: bool,
    ) -> tuple[Tensor, Tensor]:
        spec = MLPSpec(self.net.n_res, self.net.features, src, dst)
        weights, biases, betas = restrict(
            [x.weight for x in w], [x.bias for x in w], list(self.net.beta), spec.n_res, src, dst
        )
        gain = torch.stack([self.gain_s[dst], self.gain_t[dst]]).unsqueeze(1)  # (2, 1, D/2)
        if self.compiled:
            return _compiled_coupling_pass()(
                cond, move, weights, biases, betas, gain, spec, inverse
            )
        if inverse or not torch.is_grad_enabled() or torch.is_autocast_enabled(cond.device.type):
            return coupling_pass(cond, move, weights, biases, betas, gain, spec, inverse)
        return CouplingFunction.apply(cond, move, gain, spec, *weights, *biases, *betas)

    def forward(self, xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w = self.net.weights()
        xb, ladj1 = self._pass(xa, xb, w, self._a, self._b, False)
        xa, ladj2 = self._pass(xb, xa, w, self._b, self._a, False)
        return xa, xb, ladj1 + ladj2

    def inverse(self, xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w = self.net.weights()
        xa, ladj2 = self._pass(xb, xa, w, self._b, self._a, True)
        xb, ladj1 = self._pass(xa, xb, w, self._a, self._b, True)
        return xa, xb, ladj1 + ladj2


def coupling_pass(
    cond: Tensor,
    move: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    betas: list[Tensor],
    gain: Tensor,
    spec: MLPSpec,
    inverse: bool,
) -> tuple[Tensor, Tensor]:
    """One affine coupling: move <- move * exp(s(cond)) + t(cond) (or its inverse).

    Arguments:
        weights, biases, betas: parameters of the s and t nets, restricted to read the
            features `spec.in_idx` and write `spec.out_idx` (see `restrict`).
        gain: (2, 1, D/2), the gains a of s and b of t of the moved features.

    Returns the new `move` half and the log-determinant per row (negated for the inverse).
    """
    st = residual_mlp(cond, weights, biases, betas, spec) * gain  # (2, N, D/2)
    s = torch.tanh(st[0])
    if inverse:
        return (move - st[1]) * torch.exp(-s), -s.sum(1)
    return torch.addcmul(st[1], move, torch.exp(s)), s.sum(1)


class CouplingFunction(torch.autograd.Function):
    """`coupling_pass` (forward direction) with a hand-written backward pass.

    apply(cond, move, gain, spec, *weights, *biases, *betas) -> (new move, ladj).
    """

    @staticmethod
    def forward(ctx, cond: Tensor, move: Tensor, gain: Tensor, spec: MLPSpec, *params: Tensor):
        n = len(params) // 3
        weights, biases, betas = params[:n], params[n : 2 * n], params[2 * n :]
        saved: list[Tensor] = []
        st = residual_mlp(cond, weights, biases, betas, spec, saved)  # (2, N, D/2)
        u = st * gain
        s = u[0].tanh_()
        e = torch.exp(s)
        ctx.spec, ctx.n = spec, n
        ctx.save_for_backward(move, gain, st, s, e, *weights, *betas, *saved)
        return torch.addcmul(u[1], move, e), s.sum(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_move: Tensor, grad_ladj: Tensor):
        n = ctx.n
        move, gain, st, s, e, *rest = ctx.saved_tensors
        weights, betas, saved = rest[:n], rest[n : 2 * n], rest[2 * n :]
        grad_old = grad_move * e  # gradient of the input `move`
        grad_s = torch.addcmul(grad_ladj.unsqueeze(1), grad_old, move)
        grad_u = torch.stack([torch.ops.aten.tanh_backward(grad_s, s), grad_move])
        grad_gain = (grad_u * st).sum(1, keepdim=True)
        grad_cond, grad_w, grad_b, grad_beta = residual_mlp_backward(
            grad_u.mul_(gain), saved, weights, betas, ctx.spec
        )
        return grad_cond, grad_old, grad_gain, None, *grad_w, *grad_b, *grad_beta


@functools.cache
def _compiled_coupling_pass():
    # One compiled graph serves every coupling layer: the weights are arguments, and the
    # number of rows (blocks) is a dynamic dimension, so levels do not recompile.
    return torch.compile(coupling_pass, dynamic=True)


class RNVPBlock(nn.Module):
    """`n_layers` checkerboard coupling layers on (N, C*K*K) blocks."""

    def __init__(
        self, channels: int, kernel_size: int, n_layers: int, hidden: int, n_res: int, n_mlp: int
    ) -> None:
        super().__init__()
        features = channels * kernel_size**2
        order = checkerboard_order(channels, kernel_size)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("unorder", torch.argsort(order), persistent=False)
        self.layers = nn.ModuleList(
            CouplingLayer(features, hidden, n_res, n_mlp) for _ in range(n_layers)
        )
        self.checkpointing = False

    def _run(self, layer: CouplingLayer, fn, xa: Tensor, xb: Tensor):
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, xa, xb, use_reentrant=False)
        return fn(xa, xb)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = PermuteFeatures.apply(x, self.order, self.unorder)
        xa, xb = x.chunk(2, dim=1)
        ladj = x.new_zeros(x.shape[0])
        for layer in self.layers:
            xa, xb, l = self._run(layer, layer.forward, xa, xb)
            ladj = ladj + l
        return PermuteFeatures.apply(torch.cat([xa, xb], dim=1), self.unorder, self.order), ladj

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z = PermuteFeatures.apply(z, self.order, self.unorder)
        za, zb = z.chunk(2, dim=1)
        ladj = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            za, zb, l = self._run(layer, layer.inverse, za, zb)
            ladj = ladj + l
        return PermuteFeatures.apply(torch.cat([za, zb], dim=1), self.unorder, self.order), ladj


def made_masks(features: int, hidden: int, n_mlp: int) -> list[Tensor]:
    """Non-strict MADE masks for widths [D, hidden * n_mlp, D]: output i sees inputs <= i."""
    deg_io = torch.arange(1, features + 1)
    deg_h = torch.arange(hidden) % features + 1
    degrees = [deg_io] + [deg_h] * n_mlp + [deg_io]
    return [
        (d_out.view(-1, 1) >= d_in.view(1, -1)).float()
        for d_in, d_out in zip(degrees[:-1], degrees[1:])
    ]


class ARLayer(nn.Module):
    """Autoregressive affine layer: z_i = x_i * exp(s_i(x_<i)) + t_i(x_<i).

    The masked residual MLP's output i depends on x_<=i; shifting it by one position
    gives conditioners that see x_<i only (the first variable gets s = t = 0).
    With `reverse`, the variable order is reversed.
    """

    def __init__(self, features: int, hidden: int, n_res: int, n_mlp: int, reverse: bool) -> None:
        super().__init__()
        self.reverse = reverse
        self.net = ResidualMLP(
            features, hidden, n_res, n_mlp, n_nets=2, masks=made_masks(features, hidden, n_mlp)
        )
        self.gain_s = nn.Parameter(torch.zeros(features))
        self.gain_t = nn.Parameter(torch.zeros(features))

    def _scale_shift(self, x: Tensor, w: list[LinearWeights]) -> tuple[Tensor, Tensor]:
        st = F.pad(self.net(x, w)[..., :-1], (1, 0))  # (2, N, D), shifted: sees x_<i
        return torch.tanh(self.gain_s * st[0]), self.gain_t * st[1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.reverse:
            x = x.flip(1)
        s, t = self._scale_shift(x, self.net.weights())
        z = x * torch.exp(s) + t
        return (z.flip(1) if self.reverse else z), s.sum(1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.reverse:
            z = z.flip(1)
        w = self.net.weights()
        x = torch.zeros_like(z)
        # Variable i needs x_<i only, so D passes recover x exactly, one variable each.
        for i in range(z.shape[1]):
            s, t = self._scale_shift(x, w)
            xi = (z[:, i] - t[:, i]) * torch.exp(-s[:, i])
            x = torch.cat([x[:, :i], xi.unsqueeze(1), x[:, i + 1 :]], dim=1)
        return (x.flip(1) if self.reverse else x), -s.sum(1)


class ARBlock(nn.Module):
    """`n_layers` autoregressive layers on (N, C*K*K) blocks, alternating variable order."""

    def __init__(
        self, channels: int, kernel_size: int, n_layers: int, hidden: int, n_res: int, n_mlp: int
    ) -> None:
        super().__init__()
        features = channels * kernel_size**2
        self.layers = nn.ModuleList(
            ARLayer(features, hidden, n_res, n_mlp, reverse=bool(i % 2)) for i in range(n_layers)
        )
        self.checkpointing = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ladj = x.new_zeros(x.shape[0])
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                x, l = checkpoint(layer, x, use_reentrant=False)
            else:
                x, l = layer(x)
            ladj = ladj + l
        return x, ladj

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ladj = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, l = layer.inverse(z)
            ladj = ladj + l
        return z, ladj
