"""The fast path: the conditioners and coupling passes of `nets` and `coupling`, rewritten
for speed and tested equal to them in float64.

What makes it faster than the reference (a 2-core CPU spends as long on the elementwise
work around the small matmuls as on the matmuls themselves):

* Restricted weights. A coupling pass feeds the nets one checkerboard half of the block
  (the other half is zero, and zero stays zero through Swish) and keeps one half of their
  output: only those rows of the first Linear and columns of the last are used.
* Folded residual scale. `x <- (x + g(x)) / sqrt(2)` becomes `x <- x / sqrt(2) + g'(x)`
  with the 1/sqrt(2) folded into the last Linear of g.
* Weight norm once per layer and pass over the data, shared by both coupling halves.
* Swish as one in-place pass when evaluating. h * sigmoid(beta h) = silu(beta h) / beta:
  the evaluation weights (`folded`) carry the 1/beta of each Swish in the rows of the
  Linear after it and, inside a residual block, its beta in the columns and bias of the
  Linear before it, so a hidden layer's Swish is one `silu_` instead of three passes.
* A hand-written backward pass (`CouplingFunction`, `ResidualMLPFunction`) that saves one
  tensor per Linear (the input of its Swish; the sigmoid is recomputed, bit for bit, which
  halves the memory a training step keeps) and runs few, mostly in-place, elementwise
  kernels.
* With `compiled`, the training pass of a whole block bijector (its feature permutation,
  the weight norm of every layer and all coupling passes), or of each coupling layer
  where block bijectors are large, is one `torch.compile` graph (`compiled_forward`):
  Inductor fuses the elementwise chains around the matmuls, forward and backward, into
  generated C++ loops.

`coupling.CouplingLayer` and `coupling.ARLayer` choose between the reference and these
kernels with their `kernel` attribute ("reference", "fast" or "compiled"), set for a whole
model by `RGFlow.kernel`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from rgflow_core.nets import RES_SCALE, ResidualMLP

KERNELS = ("reference", "fast", "compiled")


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


# --- the residual MLP --------------------------------------------------------------------


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


@dataclass
class FoldedWeights:
    """A net's effective parameters, with the residual scale folded into each block's last
    Linear: weights (n, in, out), biases (n, 1, out), betas (n, 1, in), one per Linear.

    `prescaled` (see `prescale`): the Swish slopes are folded into the Linears around
    them, and `residual_mlp` evaluates each Swish as silu."""

    weights: list[Tensor]
    biases: list[Tensor]
    betas: list[Tensor]
    prescaled: bool = False

    def restrict(self, in_idx: slice | None, out_idx: slice | None) -> FoldedWeights:
        """The parameters used when only features `in_idx` of the input are non-zero and
        only `out_idx` of the output are wanted: views of the first Linear's rows and
        Swish and of the last Linear's columns."""
        weights, biases, betas = list(self.weights), list(self.biases), list(self.betas)
        if in_idx is not None:
            weights[0], betas[0] = weights[0][:, in_idx, :], betas[0][..., in_idx]
        if out_idx is not None:
            weights[-1], biases[-1] = weights[-1][..., out_idx], biases[-1][..., out_idx]
        return FoldedWeights(weights, biases, betas, self.prescaled)


# the smallest Swish slope `prescale` divides by: a slope of 0 (Swish = h / 2) has no
# silu form, and folding 1/beta of a slope near it would blow the weights up
MIN_PRESCALED_BETA = 1e-4


def prescale(p: FoldedWeights, n_linear: int) -> FoldedWeights:
    """`p` rewritten for evaluating every Swish as silu: h * sigmoid(beta h) = silu(beta h) / beta.

    The 1/beta of each Swish goes into the rows of the Linear that reads it. Inside a
    residual block, the Linear before a Swish also takes its beta (columns and bias), so
    its output is already beta h and the Swish is one in-place `silu_`; the first Swish of
    a block reads the residual stream, which must stay unscaled, and multiplies by beta
    itself. Returns `p` unchanged when a slope is closer to 0 than `MIN_PRESCALED_BETA`.
    """
    if p.prescaled or any(b.abs().min() < MIN_PRESCALED_BETA for b in p.betas):
        return p
    weights = [w / b.transpose(1, 2) for w, b in zip(p.weights, p.betas)]
    biases = list(p.biases)
    for i in range(len(weights)):
        if i % n_linear:  # an inner Swish: its beta goes into the Linear before it
            weights[i - 1] = weights[i - 1] * p.betas[i]
            biases[i - 1] = biases[i - 1] * p.betas[i]
    return FoldedWeights(weights, biases, list(p.betas), prescaled=True)


def fold(net: ResidualMLP) -> FoldedWeights:
    """Effective weights of `net` (weight norm computed once), residual scale folded in;
    each weight a (n, in, out) view of the (n, out, in) directions."""
    weights, biases = [], []
    for i, (g, b) in enumerate(zip(net.g, net.bias)):
        v = net.direction(i)
        scale = g / v.norm(dim=2, keepdim=True).clamp_min(1e-12)  # (n, out, 1)
        if i % net.n_linear == net.n_linear - 1:
            scale, b = scale * RES_SCALE, b * RES_SCALE
        w = (v * scale).transpose(1, 2)
        weights.append(w)
        biases.append(b)
    return FoldedWeights(weights, biases, list(net.beta))


def folded(net: ResidualMLP) -> FoldedWeights:
    """`fold(net)`, kept while `net` is in eval mode and used without autograd, until its
    weights change.

    Decoding one image with the celeba32 architecture reads its 100 M weights once, but
    the weight norm reads and writes them three times more: the explorer and sampling
    reuse the folded weights instead. They are kept `prescale`d and each weight stored
    (n, in, out) in memory: the layout the matmul reads fastest when the rows are few
    (decoding one image). `ResidualMLP.train` drops the cache, so that it costs no memory
    while training.
    """
    if net.training or torch.is_grad_enabled():
        return fold(net)
    try:  # an optimizer step or load_state_dict changes a version or a storage
        key = tuple((p.data_ptr(), p._version) for p in net.parameters())
    except RuntimeError:  # inference tensors keep no version counter
        return fold(net)
    cached = net.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        params = prescale(fold(net), net.n_linear)
        params = replace(params, weights=[w.contiguous() for w in params.weights])
        cached = net.__dict__["_folded"] = (key, params)
    return cached[1]


def residual_mlp(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    betas: list[Tensor],
    spec: MLPSpec,
    saved: list[Tensor] | None = None,
    prescaled: bool = False,
) -> Tensor:
    """`ResidualMLP.forward` on folded, restricted parameters, as a pure function.

    Arguments:
        x: (N, F_in) input.
        weights, biases, betas: from `FoldedWeights.restrict`.
        saved: if given, receives what `residual_mlp_backward` needs (the input of every
            Swish).
        prescaled: the parameters are `prescale`d (evaluation without autograd only).

    Returns:
        (n_nets, N, F_out): the nets' outputs.

    Differentiable by autograd (its in-place kernels only touch fresh tensors that autograd
    does not keep), so that `torch.compile` can fuse it; without autograd it runs fewer
    kernels.
    """
    n_linear = len(weights) // spec.n_res
    in_place = saved is None and not torch.is_grad_enabled()
    stream, cols = x.unsqueeze(0), spec.in_idx  # broadcast over the nets until block 0 ends
    for r in range(spec.n_res):
        h = stream
        for i in range(r * n_linear, (r + 1) * n_linear):
            if prescaled:  # silu(beta * h), the 1/beta in weights[i]; inside a block h is
                # the previous Linear's fresh output, already times beta
                swish = F.silu(h if i % n_linear else h * betas[i], inplace=True)
            else:
                sig = torch.mul(h, betas[i]).sigmoid_()
                if saved is not None:
                    saved.append(h)  # the backward recomputes sig: the same bits, half the memory
                swish = sig.mul_(h) if in_place else h * sig  # h * sigmoid(beta * h)
            if i == len(weights) - 1:
                h = _output_linear(biases[i], swish, weights[i], x.dtype)
            else:
                h = _linear(biases[i], swish, weights[i])
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
        return _linear(bias, x, weight)
    with torch.autocast(x.device.type, enabled=False):
        return _linear(bias.to(dtype), x.to(dtype), weight.to(dtype))


def _linear(bias: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """bias + x @ weight for (n, N, in) x, (n, in, out) weight and (n, 1, out) bias.

    `baddbmm` first copies the broadcast bias into its output, a pass over the whole
    output before the matmul; inside a compiled graph the bias is added by the fused
    elementwise loop that reads the output next, at no extra pass. On this project's CPUs
    the two give the same bits: the replay of the shipped models' first training steps
    (tests/test_builtin.py) checks it.
    """
    if torch.compiler.is_compiling():
        return torch.bmm(x, weight) + bias
    return torch.baddbmm(bias, x, weight)


def residual_mlp_backward(
    grad: Tensor,
    saved: list[Tensor],
    weights: list[Tensor],
    betas: list[Tensor],
    spec: MLPSpec,
    params: bool = True,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Gradients of `residual_mlp` from the gradient of its output and its `saved` tensors.

    Returns:
        gradients of x, of the weights, of the biases and of the betas (None for the
        parameters when `params` is False: frozen weights, as when inpainting, cost only
        the gradient of x).
    """
    n_linear = len(weights) // spec.n_res
    n = len(weights)
    grad_w, grad_b, grad_beta = [None] * n, [None] * n, [None] * n
    out_cols = spec.out_idx
    for r in reversed(range(spec.n_res)):
        cols = spec.in_idx if r == 0 else None
        g = grad  # gradient of the block's output, then of each Linear's input
        for i in reversed(range(r * n_linear, (r + 1) * n_linear)):
            h = saved[i]
            sig = torch.mul(h, betas[i]).sigmoid_()  # as the forward pass computed it
            if params:
                grad_w[i] = torch.bmm((h * sig).transpose(1, 2), g)
                grad_b[i] = g.sum(1, keepdim=True)
            g_swish = torch.bmm(g, weights[i].transpose(1, 2))
            # swish = h * sig, sig = sigmoid(beta * h): with q = g_swish * sig' * h,
            # d/dh = g_swish * sig + beta * q and d/dbeta = q * h
            q = torch.ops.aten.sigmoid_backward(g_swish, sig).mul_(h)
            if params:
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
            grad.contiguous(), list(saved), weights, betas, ctx.spec, any(ctx.needs_input_grad[2:])
        )
        return grad_x, None, *grad_w, *grad_b, *grad_beta


class FastMLP:
    """`net(x)` through the kernels, with the weight norm computed once at construction."""

    def __init__(self, net: ResidualMLP) -> None:
        self.params = folded(net)
        self.spec = MLPSpec(net.n_res, net.features)

    def __call__(self, x: Tensor) -> Tensor:
        p = self.params
        if torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return ResidualMLPFunction.apply(x, self.spec, *p.weights, *p.biases, *p.betas)
        return residual_mlp(x, p.weights, p.biases, p.betas, self.spec, prescaled=p.prescaled)


# --- the coupling pass -------------------------------------------------------------------


def coupling_pass(
    cond: Tensor,
    move: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    betas: list[Tensor],
    gain: Tensor,
    spec: MLPSpec,
    inverse: bool,
    prescaled: bool = False,
) -> tuple[Tensor, Tensor]:
    """One affine coupling: move <- move * exp(s(cond)) + t(cond) (or its inverse).

    Arguments:
        weights, biases, betas: parameters of the s and t nets, restricted to read the
            features `spec.in_idx` and write `spec.out_idx` (`prescale`d if `prescaled`).
        gain: (2, 1, D/2), the gains a of s and b of t of the moved features.

    Returns the new `move` half and the log-determinant per row (negated for the inverse).
    """
    st = residual_mlp(cond, weights, biases, betas, spec, prescaled=prescaled) * gain
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
        grad_gain = (grad_u * st).sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        grad_cond, grad_w, grad_b, grad_beta = residual_mlp_backward(
            grad_u.mul_(gain), saved, weights, betas, ctx.spec, any(ctx.needs_input_grad[4:])
        )
        return grad_cond, grad_old, grad_gain, None, *grad_w, *grad_b, *grad_beta


# The most coupling layers one compiled graph holds: the time to build a graph grows with
# its size (Inductor builds each of its loops with the C++ compiler; the quick model's
# 2-layer graph, forward and backward, takes about 40 s on a 2-core CPU), so a larger
# block bijector compiles each of its coupling layers instead, one graph for them all.
MAX_LAYERS_PER_GRAPH = 2


@functools.cache
def compiled_forward():
    """`module.eager_forward(*inputs)` with autograd, as one compiled graph per module shape:
    the training pass of a whole block bijector (`RNVPBlock`) or of one coupling layer.

    One graph serves every module of a shape: the weights are inputs, and the number of
    rows (blocks) is a dynamic dimension, so levels and batch sizes do not recompile.
    Passes without autograd (evaluation, sampling) stay eager: compiling them would cost
    more than they take.
    """
    import torch._dynamo
    import torch._functorch.config

    dynamo_config = torch._dynamo.config
    # a graph per module shape, direction and activation-checkpointing setting
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 32)
    # building the C++ kernels on a machine without CUDA warns that CUDA_HOME is unset
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    def forward(module, *inputs: Tensor):
        return module.eager_forward(*inputs)

    compiled = torch.compile(forward, dynamic=True)

    def call(module, *inputs: Tensor):
        # keep half the activations for the backward and recompute the cheap elementwise
        # rest (celeba32 at batch 16 peaks at 4.3-4.6 GB instead of 5.5 at the same speed;
        # the quick model's training gives the same bits); set only while these graphs
        # run (and are built), so other torch.compile users keep their own setting
        with torch._functorch.config.patch(activation_memory_budget=0.5):
            return compiled(module, *inputs)

    return call


class CouplingPasses:
    """The two coupling passes of one `CouplingLayer`, sharing one weight-norm evaluation.

    Calling it with (cond, move, src, dst, inverse) does what
    `CouplingLayer.reference_pass` does, through the fastest kernel that applies: the
    hand-written backward (training), or the pure function (inverse, no autograd,
    autocast, or `traced`: inside a compiled graph, where autograd derives the backward
    and Inductor fuses it).
    """

    def __init__(self, layer, traced: bool = False) -> None:
        self.layer = layer
        self.params = fold(layer.net) if traced else folded(layer.net)
        self.traced = traced

    def __call__(
        self, cond: Tensor, move: Tensor, src: slice, dst: slice, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        net = self.layer.net
        spec = MLPSpec(net.n_res, net.features, src, dst)
        p = self.params.restrict(src, dst)
        gain = torch.stack([self.layer.gain_s[dst], self.layer.gain_t[dst]]).unsqueeze(1)
        pure = self.traced or inverse or not torch.is_grad_enabled()
        if pure or torch.is_autocast_enabled(cond.device.type):
            return coupling_pass(
                cond, move, p.weights, p.biases, p.betas, gain, spec, inverse, p.prescaled
            )
        return CouplingFunction.apply(cond, move, gain, spec, *p.weights, *p.biases, *p.betas)
