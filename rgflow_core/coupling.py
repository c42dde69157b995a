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
The code below is the plain reference; each layer's `kernel` attribute ("fast" by default)
runs the same maths through `rgflow_core.kernels` instead.

`SUBNETS` is the registry of block bijectors: the config accepts its names, the model is
built from it, its size is known before it is built (`count_parameters`), and the benchmark
counts FLOPs with each class's `macs`. A new subnet is a `BlockBijector` with its
`macs`, added to `SUBNETS`.

References: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803;
Germain et al., "MADE", arXiv:1502.03509; Hu et al., "RG-Flow", arXiv:2010.00029.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from rgflow_core.kernels import (
    MAX_LAYERS_PER_GRAPH,
    CouplingPasses,
    FastMLP,
    PermuteFeatures,
    compiled_forward,
)
from rgflow_core.nets import ResidualMLP


def checkerboard_order(channels: int, kernel_size: int) -> Tensor:
    """Permutation of the C*K*K block features putting the checkerboard A = {(i+j) even} first."""
    K = kernel_size
    ij = torch.arange(K)
    black = ((ij.view(K, 1) + ij.view(1, K)) % 2 == 0).expand(channels, K, K).flatten()
    return torch.cat([black.nonzero().flatten(), (~black).nonzero().flatten()])


def _mlp_macs(features: int, hidden: int, n_res: int, n_mlp: int) -> int:
    """Multiply-adds of one residual MLP on one row."""
    widths = [features] + [hidden] * n_mlp + [features]
    return n_res * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def _layer_parameters(features: int, hidden: int, n_res: int, n_mlp: int) -> int:
    """Parameters of one layer: two stacked residual MLPs (direction v, norm g, bias and
    Swish beta per Linear) and the gains of s and t."""
    widths = [features] + [hidden] * n_mlp + [features]
    per_net = n_res * sum(i * o + 2 * o + i for i, o in zip(widths[:-1], widths[1:]))
    return 2 * per_net + 2 * features


class BlockBijector(nn.Module):
    """What every subnet is: `n_layers` invertible layers on (N, C*K*K) rows (one row per
    block), made as `Block(channels, kernel_size, n_layers, hidden, n_res, n_mlp)`, with
    `forward(x) -> (z, ladj)`, `inverse(z) -> (x, ladj)` and a `checkpointing` switch."""

    checkpointing = False

    @staticmethod
    def count_parameters(features: int, hidden: int, n_res: int, n_mlp: int, n_layers: int) -> int:
        """Number of parameters, computed without building the block: each layer holds two
        residual MLPs and two gains."""
        return n_layers * _layer_parameters(features, hidden, n_res, n_mlp)

    @staticmethod
    def macs(features: int, hidden: int, n_res: int, n_mlp: int, n_layers: int) -> int:
        """Multiply-adds of one forward pass on one block."""
        raise NotImplementedError


class CouplingLayer(nn.Module):
    """One RNVP layer on a block split in checkerboard halves (x_A, x_B).

    Arguments:
        features: D = C*K*K, features ordered with A first (see `checkerboard_order`).
        hidden, n_res, n_mlp: shape of the residual MLPs s and t.
    """

    def __init__(self, features: int, hidden: int, n_res: int, n_mlp: int) -> None:
        super().__init__()
        self.net = ResidualMLP(features, hidden, n_res, n_mlp, n_nets=2)  # s and t
        self.gain_s = nn.Parameter(torch.zeros(features))
        self.gain_t = nn.Parameter(torch.zeros(features))
        self._a = slice(0, features // 2)
        self._b = slice(features // 2, features)
        self.kernel = "fast"  # "reference", "fast" or "compiled" (see rgflow_core.kernels)

    def reference_pass(
        self, cond: Tensor, move: Tensor, src: slice, dst: slice, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        """x_dst <- x_dst * exp(s) + t (or its inverse), s and t computed from x_src.

        The nets see the whole block with the features outside `src` set to zero (the
        coupling mask) and only their outputs at `dst` are used. Returns the new `move`
        (the features `dst`) and the log-determinant per row.
        """
        x = cond.new_zeros(len(cond), self.net.features)
        x[:, src] = cond
        st = self.net(x)[..., dst]  # (2, N, D/2)
        s = torch.tanh(self.gain_s[dst] * st[0])
        t = self.gain_t[dst] * st[1]
        if inverse:
            return (move - t) * torch.exp(-s), -s.sum(1)
        return move * torch.exp(s) + t, s.sum(1)

    def _passes(self):
        if self.kernel == "reference":
            return self.reference_pass
        return CouplingPasses(self, traced=torch.compiler.is_compiling())

    def forward(self, xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        run = self._passes()
        xb, ladj1 = run(xa, xb, self._a, self._b, False)
        xa, ladj2 = run(xb, xa, self._b, self._a, False)
        return xa, xb, ladj1 + ladj2

    # what `kernels.compiled_forward` compiles when coupling layers are compiled one by one
    eager_forward = forward

    def inverse(self, xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        run = self._passes()
        xa, ladj2 = run(xb, xa, self._b, self._a, True)
        xb, ladj1 = run(xa, xb, self._a, self._b, True)
        return xa, xb, ladj1 + ladj2


class RNVPBlock(BlockBijector):
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
        # with the compiled kernel: one graph for the whole block, else one per layer
        self.compile_whole = n_layers <= MAX_LAYERS_PER_GRAPH

    @staticmethod
    def macs(features: int, hidden: int, n_res: int, n_mlp: int, n_layers: int) -> int:
        """Multiply-adds of one forward pass on one block (as the fast kernels run it)."""
        # each pass reads half of the block and writes the other half: the first Linear
        # of the first residual block and the last of the last one are half as wide
        net = _mlp_macs(features, hidden, n_res, n_mlp)
        net -= (features // 2) * hidden + hidden * (features // 2)
        return n_layers * 2 * 2 * net  # two passes (mask, complement) x two nets (s, t)

    def _run(self, fn, xa: Tensor, xb: Tensor):
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, xa, xb, use_reentrant=False)
        return fn(xa, xb)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # dynamo cannot yet trace activation checkpointing of a bound method: checkpointed
        # passes run the fast kernels instead
        compiled = self.layers[0].kernel == "compiled" and not self.checkpointing
        compiled = compiled and torch.is_grad_enabled()
        if compiled and self.compile_whole:
            return compiled_forward()(self, x)
        return self.eager_forward(x, compiled_layers=compiled)

    def eager_forward(self, x: Tensor, compiled_layers: bool = False) -> tuple[Tensor, Tensor]:
        """`forward` without `torch.compile` (what the compiled graph traces), or with each
        coupling layer one compiled graph (`compiled_layers`)."""
        x = PermuteFeatures.apply(x, self.order, self.unorder)
        xa, xb = x.chunk(2, dim=1)
        ladj = x.new_zeros(x.shape[0])
        for layer in self.layers:
            if compiled_layers:
                xa, xb, l = compiled_forward()(layer, xa, xb)
            else:
                xa, xb, l = self._run(layer.forward, xa, xb)
            ladj = ladj + l
        return PermuteFeatures.apply(torch.cat([xa, xb], dim=1), self.unorder, self.order), ladj

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z = PermuteFeatures.apply(z, self.order, self.unorder)
        za, zb = z.chunk(2, dim=1)
        ladj = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            za, zb, l = self._run(layer.inverse, za, zb)
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
        self.kernel = "fast"  # "reference", or "fast"/"compiled": rgflow_core.kernels.FastMLP

    def _mlp(self):
        """The nets as a callable; the fast one computes the weight norm once."""
        return self.net if self.kernel == "reference" else FastMLP(self.net)

    def _scale_shift(self, x: Tensor, mlp) -> tuple[Tensor, Tensor]:
        st = F.pad(mlp(x)[..., :-1], (1, 0))  # (2, N, D), shifted: sees x_<i
        return torch.tanh(self.gain_s * st[0]), self.gain_t * st[1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.reverse:
            x = x.flip(1)
        s, t = self._scale_shift(x, self._mlp())
        z = x * torch.exp(s) + t
        return (z.flip(1) if self.reverse else z), s.sum(1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.reverse:
            z = z.flip(1)
        mlp = self._mlp()
        x = torch.zeros_like(z)
        # Variable i needs x_<i only, so D passes recover x exactly, one variable each.
        for i in range(z.shape[1]):
            s, t = self._scale_shift(x, mlp)
            xi = (z[:, i] - t[:, i]) * torch.exp(-s[:, i])
            x = torch.cat([x[:, :i], xi.unsqueeze(1), x[:, i + 1 :]], dim=1)
        return (x.flip(1) if self.reverse else x), -s.sum(1)


class ARBlock(BlockBijector):
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

    @staticmethod
    def macs(features: int, hidden: int, n_res: int, n_mlp: int, n_layers: int) -> int:
        """Multiply-adds of one forward pass on one block."""
        return n_layers * 2 * _mlp_macs(features, hidden, n_res, n_mlp)  # two nets (s, t)

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


SUBNETS: dict[str, type[BlockBijector]] = {"rnvp": RNVPBlock, "ar": ARBlock}
