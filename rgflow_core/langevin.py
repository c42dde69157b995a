"""Posterior sampling by annealed, Metropolis-adjusted Langevin dynamics (MALA).

Given an exact log-density log p(v) and its gradient, a Langevin step proposes
`v' = v + e * grad log p(v) + sqrt(2 e) * noise` and accepts it with the Metropolis-Hastings
probability, so that the chain's stationary distribution is exactly p, whatever the step
size e. Chains start from a poor guess and far from the posterior's bulk, so the first part
of the run (the burn-in) anneals the temperature T of the target p^(1/T) from a hot start
down to 1, which lets them leave a local mode, and adapts each chain's step size towards the
acceptance rate that is optimal for MALA (0.574) and a per-coordinate scale of the steps
(from the running mean of squared gradients: coordinates whose density is sharp, such as
the pixels of a flat background, get small steps, the others larger ones). The second part
runs at T = 1 with the step sizes fixed and averages a function of the states: an estimate
of its posterior mean.

References: Roberts and Tweedie, "Exponential convergence of Langevin distributions and
their discrete approximations", Bernoulli 2 (1996); Roberts and Rosenthal, "Optimal
scaling of discrete approximations to Langevin diffusions", JRSS B 60 (1998).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

TARGET_ACCEPT = 0.574  # the optimal MALA acceptance rate in high dimension
_ADAPT = 0.5  # log step-size change per unit of acceptance error, during the burn-in


@dataclass
class Chains:
    """The end of a run of B chains.

    v: (B, ...) final states. log_prob: (B,) their log-density at T = 1.
    mean: (...) the average of `transform(v)` over the chains and the steps after the burn-in.
    accept_rate: fraction of accepted proposals after the burn-in (all steps if none).
    step_size: (B,) the adapted step sizes.
    """

    v: Tensor
    log_prob: Tensor
    mean: Tensor
    accept_rate: float
    step_size: Tensor


def _value_and_grad(log_prob: Callable[[Tensor], Tensor], v: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = v.detach().requires_grad_(True)
        lp = log_prob(x)
        (grad,) = torch.autograd.grad(lp.sum(), x)
    # a non-finite density is a state the chain must never accept (see the acceptance test)
    return torch.nan_to_num(lp.detach(), nan=-math.inf), torch.nan_to_num(grad)


def _preconditioner(second: Tensor) -> Tensor:
    """Per-coordinate step-size factors (B, ...) of mean 1 per chain from the running mean
    of squared gradients: for a Gaussian of std s the squared gradient averages 1 / s^2,
    so 1 / E[g^2] makes the steps proportional to each coordinate's own spread."""
    flat = second.flatten(1)
    inverse = 1 / (flat + 1e-2 * flat.mean(1, keepdim=True) + 1e-12)
    return (inverse / inverse.mean(1, keepdim=True)).view_as(second)


def _randn(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise drawn on the CPU (so that a seed gives the same chains on any
    device) and moved to `like`'s device."""
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def annealed_mala(
    log_prob: Callable[[Tensor], Tensor],
    v0: Tensor,
    steps: int,
    *,
    step_size: float = 0.01,
    start_temperature: float = 4.0,
    burn_in: float = 0.5,
    transform: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    precondition: bool = True,
) -> Chains:
    """Run B independent MALA chains on log p, annealed from `start_temperature` to 1.

    Arguments:
        log_prob: (B, ...) states -> (B,) log-density (differentiable).
        v0: (B, ...) starting states, one per chain.
        steps: Langevin steps; the first `burn_in` fraction anneals and adapts.
        step_size: the starting step size e of every chain.
        transform: what to average after the burn-in, (B, ...) -> (B, ...) (default: v).
        callback: called after every step with (finished steps, current states).
        precondition: scale each coordinate's steps by 1 / E[grad^2] (a diagonal mass
            matrix, estimated in the burn-in and then fixed).

    Returns:
        The `Chains` at the end.
    """
    B = v0.shape[0]
    transform = transform or (lambda v: v)
    shape = (B,) + (1,) * (v0.dim() - 1)  # broadcasts a per-chain number over a state
    v = v0.detach().clone()
    lp, grad = _value_and_grad(log_prob, v)
    eps = torch.full((B,), float(step_size), dtype=v.dtype, device=v.device)
    second = grad.pow(2)  # running mean of squared gradients: the preconditioner's source
    scale = _preconditioner(second) if precondition else torch.ones_like(v)
    anneal = int(burn_in * steps)
    total, count = torch.zeros_like(v[0]), 0
    accepted, proposed = torch.zeros((), dtype=v.dtype, device=v.device), 0  # no sync per step
    for k in range(steps):
        # geometric cooling: T = T0 at the first step, 1 at the end of the burn-in
        t = start_temperature ** (1 - k / anneal) if k < anneal else 1.0
        e = eps.view(shape) * scale
        forward_mean = v + e * grad / t
        proposal = forward_mean + torch.sqrt(2 * e) * _randn(v.shape, v, generator)
        lp_new, grad_new = _value_and_grad(log_prob, proposal)
        backward_mean = proposal + e * grad_new / t
        # log q(v | v') - log q(v' | v) for the Gaussian proposals of variance 2e
        q_ratio = ((proposal - forward_mean).pow(2) - (v - backward_mean).pow(2)) / (4 * e)
        log_alpha = (lp_new - lp) / t + q_ratio.flatten(1).sum(1)
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
        u = torch.rand(B, generator=generator, dtype=v.dtype).to(v.device)
        accept = torch.log(u) < log_alpha
        v = torch.where(accept.view(shape), proposal, v)
        grad = torch.where(accept.view(shape), grad_new, grad)
        lp = torch.where(accept, lp_new, lp)
        p_accept = log_alpha.clamp(max=0).exp()
        if k < anneal:
            eps = eps * torch.exp(_ADAPT * (p_accept - TARGET_ACCEPT))
            if precondition:
                second = 0.9 * second + 0.1 * grad.pow(2)
                scale = _preconditioner(second)
        else:
            total = total + transform(v).sum(0)
            count += B
        if k >= anneal or anneal == steps:
            accepted = accepted + p_accept.sum()
            proposed += B
        if callback is not None:
            callback(k + 1, v)
    mean = total / count if count else transform(v).mean(0)
    rate = float(accepted) / proposed if proposed else float("nan")
    return Chains(v=v, log_prob=lp, mean=mean, accept_rate=rate, step_size=eps)
