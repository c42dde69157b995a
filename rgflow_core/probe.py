"""A linear probe of disentanglement: how well each RG level's latents predict a factor.

A ridge regression is fitted on the latents of training images and scored by R^2 on
held-out images, once per level and once for all latents together. On MSDS the factors
are known (`labels.npz`), so the probe says at which scale each kind of information
lives: a disentangled model puts the image-wide (global) factor in the high levels and
the per-ellipse (local) factors in the low ones.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rgflow_core.checks import check_float
from rgflow_core.errors import UsageError
from rgflow_core.geometry import latents_by_level


def msds_targets(name: str, labels: Tensor, factor: Tensor) -> dict[str, Tensor]:
    """The factors of MSDS images as regression targets: {"global": (N, d), "local": (N, d)}.

    msds1: global = base colour (N, 3); local = each ellipse's angle (N, 32).
    msds2: global = base angle (N, 2); local = each ellipse's colour (N, 48).
    Angles are defined modulo 180 degrees, so an angle a enters as (sin 2a, cos 2a), which
    is continuous across the wrap-around.

    Arguments:
        labels: (N, 16, 6) per-ellipse labels (x, y, angle, r, g, b) from `labels.npz`.
        factor: the global factor from `labels.npz` (msds1 (N, 3), msds2 (N,)).
    """
    labels = torch.as_tensor(labels, dtype=torch.float64)
    factor = torch.as_tensor(factor, dtype=torch.float64)
    N = len(labels)

    def circle(degrees: Tensor) -> Tensor:
        angle = torch.deg2rad(2 * degrees)
        return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(N, -1)

    if name == "msds1":
        return {"global": factor.view(N, -1), "local": circle(labels[..., 2])}
    if name == "msds2":
        return {"global": circle(factor.view(N)), "local": labels[..., 3:].reshape(N, -1)}
    raise UsageError(f"unknown MSDS set {name!r}; use msds1 or msds2", "name")


def r2_score(y_true: Tensor, y_pred: Tensor) -> float:
    """Coefficient of determination over all outputs: 1 - SSE / SST (SST about the mean)."""
    sse = ((y_true - y_pred) ** 2).sum()
    sst = ((y_true - y_true.mean(0)) ** 2).sum()
    return float(1 - sse / sst) if sst > 0 else float("nan")


RIDGE_GRID = tuple(10.0**e for e in range(-3, 6))


@dataclass(frozen=True)
class RidgeFit:
    """A linear read-out y = ((x - x_mean) / x_std) @ weight + y_mean."""

    weight: Tensor  # (D, d)
    x_mean: Tensor  # (D,)
    x_std: Tensor  # (D,)
    y_mean: Tensor  # (d,)
    alpha: float  # the ridge penalty used

    def predict(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, d)."""
        x = (x.to(self.weight.dtype) - self.x_mean) / self.x_std
        return x @ self.weight + self.y_mean


def _ridge_solutions(x: Tensor, y: Tensor, alphas: Sequence[float]) -> list[Tensor]:
    """Closed-form ridge weights argmin |x w - y|^2 + alpha |w|^2 for every alpha.

    One eigendecomposition serves all alphas: of x^T x (D x D) when D <= N, else of the
    Gram matrix x x^T (N x N) through w = x^T (x x^T + alpha I)^-1 y.
    """
    N, D = x.shape
    if D <= N:
        s, v = torch.linalg.eigh(x.T @ x)
        proj = v.T @ (x.T @ y)  # (D, d)
        return [v @ (proj / (s.clamp_min(0) + a).unsqueeze(1)) for a in alphas]
    s, u = torch.linalg.eigh(x @ x.T)
    proj = u.T @ y  # (N, d)
    return [x.T @ (u @ (proj / (s.clamp_min(0) + a).unsqueeze(1))) for a in alphas]


def fit_ridge(
    x: Tensor,
    y: Tensor,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
) -> RidgeFit:
    """Ridge regression of y (N, d) on x (N, D), features standardised, in float64.

    With `alpha=None` the penalty is chosen from `RIDGE_GRID` (scaled by N) by the R^2 on a
    random fifth of the rows held out, and the model is then refitted on all rows.
    """
    x = x.double().flatten(1)
    y = y.double().view(len(y), -1)
    N = len(x)
    if N < 2:
        raise UsageError(f"a linear probe needs at least 2 training images, got {N}", "x")

    def standardise(rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, std = x[rows].mean(0), x[rows].std(0).clamp_min(1e-8)
        return (x[rows] - mean) / std, mean, std, y[rows].mean(0)

    if alpha is None:
        perm = torch.randperm(N, generator=generator)
        n_val = max(1, N // 5)
        val, fit = perm[:n_val], perm[n_val:]
        if len(fit) < 2:
            fit = val = perm
        xs, mean, std, ym = standardise(fit)
        alphas = [a * len(fit) for a in RIDGE_GRID]
        scores = [
            r2_score(y[val], ((x[val] - mean) / std) @ w + ym)
            for w in _ridge_solutions(xs, y[fit] - ym, alphas)
        ]
        best = max(
            range(len(alphas)), key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k]
        )
        alpha = RIDGE_GRID[best] * N
    check_float("alpha", alpha, 0.0)
    xs, mean, std, ym = standardise(torch.arange(N))
    (w,) = _ridge_solutions(xs, y - ym, [alpha])
    return RidgeFit(w, mean, std, ym, float(alpha))


@dataclass(frozen=True)
class ProbeResult:
    """How well one group of latents linearly predicts the global factor."""

    level: str  # "0", "1", ... or "all"
    latents: int  # number of latent variables (channels x positions)
    r2_test: float
    r2_train: float
    alpha: float


def probe_levels(
    z_train: Tensor,
    y_train: Tensor,
    z_test: Tensor,
    y_test: Tensor,
    level_map: Tensor,
    alpha: float | None = None,
    seed: int = 0,
) -> list[ProbeResult]:
    """Linear read-out of a target from each level's latents (and from all of them).

    Arguments:
        z_train, z_test: (N, C, L, L) latents.
        y_train, y_test: (N, d) targets (see `msds_targets`).

    Returns:
        One `ProbeResult` per level, then one for all latents together.
    """
    groups = latents_by_level(z_train, level_map)
    tests = latents_by_level(z_test, level_map)
    groups["all"], tests["all"] = z_train.flatten(1), z_test.flatten(1)
    results = []
    for key, x in groups.items():
        fit = fit_ridge(x, y_train, alpha, torch.Generator().manual_seed(seed))
        x_test = tests[key].flatten(1)
        results.append(
            ProbeResult(
                level=str(key),
                latents=x.flatten(1).shape[1],
                r2_test=r2_score(y_test.double(), fit.predict(x_test)),
                r2_train=r2_score(y_train.double(), fit.predict(x.flatten(1))),
                alpha=fit.alpha,
            )
        )
    return results
