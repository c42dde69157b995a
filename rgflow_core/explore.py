"""Exploring a trained RG-Flow: sampling, encoding, scale mixing, receptive fields,
factor traversals, random walks and a linear disentanglement probe.

Everything here is tensor in, tensor out: no files, no printing. Latents `z` have the
image's shape (B, C, L, L); `model.level_map` (L, L) gives the RG level of each position.

References: Hu et al., "RG-Flow: a hierarchical and explainable flow model based on
renormalization group and sparse prior", arXiv:2010.00029, sections 4-5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rgflow_core import msds
from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow
from rgflow_core.geometry import from_blocks, num_levels, to_blocks
from rgflow_core.preprocess import bits_per_dim, dequantize
from rgflow_core.priors import Temperature

Progress = Callable[[int], None]


def _noop(_: int) -> None:
    pass


def _device_dtype(model: RGFlow) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


# --- levels -------------------------------------------------------------------------------


def check_level(model: RGFlow, level: int, name: str = "level") -> int:
    """`level` if it is a valid RG level of the model, else a UsageError."""
    H = model.config.levels
    if not 0 <= level < H:
        raise UsageError(f"{name} {level} is out of range: this model has levels 0..{H - 1}")
    return level


def level_positions(level_map: Tensor, level: int) -> Tensor:
    """(N, 2) LongTensor of the (i, j) positions of level `level`, in row-major order."""
    return (level_map == level).nonzero()


def latents_by_level(z: Tensor, level_map: Tensor) -> dict[int, Tensor]:
    """Per-level views of z (B, C, L, L): {level: (B, C, N_level)} in row-major order."""
    H = int(level_map.max()) + 1
    mask = level_map.to(z.device)
    return {h: z[..., mask == h] for h in range(H)}


# --- sampling, encoding, decoding ------------------------------------------------------------


@torch.no_grad()
def sample_images(
    model: RGFlow,
    n: int,
    temperature: Temperature = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    progress: Progress = _noop,
) -> Tensor:
    """n samples from the model as uint8 images (n, C, L, L), drawn in batches.

    `temperature` is a float or a tensor broadcastable to z (e.g. `model.temperature_map`).
    """
    if n < 1:
        raise UsageError(f"the number of samples must be >= 1, got {n}")
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        z = model.sample_latents(count, temperature, generator)
        out.append(model.decode_uint8(z).cpu())
        progress(count)
    return torch.cat(out)


@torch.no_grad()
def encode_images(
    model: RGFlow, images: Tensor, batch_size: int = 256, progress: Progress = _noop
) -> tuple[Tensor, Tensor]:
    """uint8 images (B, C, L, L) -> latents z (B, C, L, L) and bits per dim (B,).

    No dequantisation noise: every pixel sits at the centre of its bin, so
    `decode_images(model, z)` gives back the same uint8 images, and the bpd is that of
    the bin centres (a deterministic number, close to the usual noisy estimate).
    """
    device, _ = _device_dtype(model)
    zs, bpds = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        zs.append(model.encode(batch).cpu())
        x = dequantize(batch, noise=False).to(zs[-1].dtype)
        bpds.append(bits_per_dim(model.log_prob_image(x), model.config.dims).cpu())
        progress(len(batch))
    return torch.cat(zs), torch.cat(bpds)


@torch.no_grad()
def decode_images(
    model: RGFlow, z: Tensor, batch_size: int = 256, progress: Progress = _noop
) -> Tensor:
    """Latents z (B, C, L, L) -> uint8 images (B, C, L, L), decoded in batches."""
    device, dtype = _device_dtype(model)
    out = []
    for start in range(0, len(z), batch_size):
        batch = z[start : start + batch_size].to(device=device, dtype=dtype)
        out.append(model.decode_uint8(batch).cpu())
        progress(len(batch))
    return torch.cat(out)


# --- mixing across scales ------------------------------------------------------------------


def check_scale(model: RGFlow, scale: int) -> int:
    """`scale` if it is a meaningful cut (1..H-1), else a UsageError."""
    H = model.config.levels
    if not 1 <= scale <= H - 1:
        raise UsageError(
            f"--scale {scale} is out of range: this model has {H} levels, so the cut must be "
            f"in 1..{H - 1} (levels >= scale come from the first image)"
        )
    return scale


def mix_latents(z_high: Tensor, z_low: Tensor, scale: int, level_map: Tensor) -> Tensor:
    """Latents of level >= `scale` from `z_high`, those of level < `scale` from `z_low`.

    Both (B, C, L, L) (or broadcastable); returns a new tensor of the broadcast shape.
    """
    high = (level_map >= scale).to(z_high.device)
    return torch.where(high, z_high, z_low)


@torch.no_grad()
def mix_panel(model: RGFlow, a: Tensor, b: Tensor, scales: Sequence[int]) -> Tensor:
    """Rows [a, b, a-high + b-low, b-high + a-low] for each cut in `scales`.

    Arguments:
        a, b: uint8 images (C, L, L).

    Returns:
        uint8 (len(scales), 4, C, L, L).
    """
    for s in scales:
        check_scale(model, s)
    z, _ = encode_images(model, torch.stack([a, b]))
    za, zb = z[:1], z[1:]
    mixes = []
    for s in scales:
        mixes += [mix_latents(za, zb, s, model.level_map), mix_latents(zb, za, s, model.level_map)]
    decoded = decode_images(model, torch.cat(mixes)).view(len(scales), 2, *a.shape)
    originals = torch.stack([a, b]).expand(len(scales), 2, *a.shape)
    return torch.cat([originals, decoded], dim=1)


# --- receptive fields -------------------------------------------------------------------------


def _dilate(mask: Tensor, kernel_size: int, shift: int) -> Tensor:
    """Mark every pixel of each block (grid offset `shift`) that holds a marked pixel."""
    M = mask.shape[-1]
    blocks = to_blocks(mask.view(1, 1, M, M), kernel_size, shift)  # (n*n, 1, K, K)
    hit = blocks.flatten(1).any(dim=1).view(-1, 1, 1, 1).expand_as(blocks)
    return from_blocks(hit, M, shift).view(M, M)


def generator_cone(latents: Tensor, kernel_size: int) -> Tensor:
    """Pixels that a change of some latents can change, in the generating direction.

    `rgflow_core.geometry.causal_cone` follows the encoder (pixels -> latents); the
    generator runs the levels top-down and each level's decimator before its
    disentangler. Both relations are built from the same symmetric "shares a block"
    steps, so this one is the transpose of the encoder's: pixel p is in the cone of
    latent l exactly when l is in `cone_latents(p)`.

    Arguments:
        latents: (L, L) bool mask of latent positions.

    Returns:
        (L, L) bool mask of image pixels.
    """
    L = latents.shape[-1]
    H = num_levels(L, kernel_size)
    latents = latents.bool()
    changed = None
    for h in reversed(range(H)):
        here = latents[:: 2**h, :: 2**h].clone()  # (M, M) level-h sub-lattice
        if changed is not None:
            here[::2, ::2] |= changed
        after_dec = _dilate(here, kernel_size, 0)
        changed = _dilate(after_dec, kernel_size, kernel_size // 2)
    return changed


def _generate_pixels(model: RGFlow) -> Callable[[Tensor], Tensor]:
    """G: z -> pixels in [0, 1] (not clamped, so the derivative is the flow's own)."""

    def G(z: Tensor) -> Tensor:
        y, _ = model.inverse(z)
        x, _ = model.preprocess.inverse(y)
        return x

    return G


def _jvp(fn: Callable[[Tensor], Tensor], primal: Tensor, tangent: Tensor) -> Tensor:
    """J(primal) @ tangent, forward mode (exact zeros stay exact zeros)."""
    try:
        with warnings.catch_warnings():
            # torch.func's first use scripts a helper with the deprecated torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            return torch.func.jvp(fn, (primal,), (tangent,))[1]
    except (RuntimeError, NotImplementedError):
        # Some fused or custom kernels lack forward-mode rules: double-backward instead.
        return torch.autograd.functional.jvp(fn, primal, tangent)[1]


def receptive_field(
    model: RGFlow,
    positions: Tensor,
    samples: int = 16,
    temperature: Temperature = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    progress: Progress = _noop,
) -> Tensor:
    """RF_l = E_{z ~ prior} sum_{c, c'} |d x_{c'} / d z_{c, l}| for latent positions l.

    x = G(z) are the generated pixels in [0, 1] (before clamping); the expectation is a
    Monte-Carlo mean over `samples` draws of z at `temperature`. Derivatives are exact
    (forward-mode automatic differentiation, one tangent per latent channel and sample).

    Arguments:
        positions: (P, 2) latent positions (i, j).

    Returns:
        (P, L, L) float tensor on the CPU; zero exactly outside each latent's
        `generator_cone`.
    """
    if samples < 1:
        raise UsageError(f"--samples must be >= 1, got {samples}")
    device, dtype = _device_dtype(model)
    C, L = model.config.channels, model.config.image_size
    positions = positions.long().view(-1, 2)
    P = len(positions)
    z = model.sample_latents(samples, temperature, generator)  # (N, C, L, L)
    # one task per (sample, position, channel): its own primal row and one-hot tangent
    n_idx, p_idx, c_idx = torch.meshgrid(
        torch.arange(samples), torch.arange(P), torch.arange(C), indexing="ij"
    )
    n_idx, p_idx, c_idx = n_idx.flatten(), p_idx.flatten(), c_idx.flatten()
    rf = torch.zeros(P, L, L, dtype=torch.float64)
    G = _generate_pixels(model)
    for start in range(0, len(n_idx), batch_size):
        n, p, c = (t[start : start + batch_size] for t in (n_idx, p_idx, c_idx))
        primal = z[n.to(device)]
        tangent = torch.zeros_like(primal)
        i, j = positions[p, 0], positions[p, 1]
        tangent[torch.arange(len(n), device=device), c.to(device), i.to(device), j.to(device)] = 1
        dx = _jvp(G, primal, tangent).detach()  # (b, C, L, L)
        rf.index_add_(0, p, dx.abs().sum(1).double().cpu())
        progress(len(n))
    return (rf / samples).to(dtype if dtype.is_floating_point else torch.float32)


def representative_positions(level_map: Tensor, level: int, count: int) -> Tensor:
    """Up to `count` latent positions of a level, nearest to the image centre first."""
    pos = level_positions(level_map.cpu(), level)
    L = level_map.shape[-1]
    d2 = ((pos.double() - L / 2) ** 2).sum(1)
    order = torch.argsort(d2, stable=True)  # ties keep row-major order
    return pos[order[:count]]


@dataclass(frozen=True)
class Extent:
    """How far a receptive field reaches: pixels where RF > `threshold` * max(RF)."""

    pixels: int  # number of such pixels
    rows: int  # height of their bounding box (periodic images may wrap: at most L)
    cols: int  # width of their bounding box


def rf_extent(rf: Tensor, threshold: float = 0.01) -> Extent:
    """The extent of one (L, L) receptive field."""
    peak = float(rf.max())
    if peak <= 0:
        return Extent(0, 0, 0)
    inside = rf > threshold * peak
    rows = inside.any(1).nonzero().flatten()
    cols = inside.any(0).nonzero().flatten()
    return Extent(
        int(inside.sum()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    )


# --- factors: traversals and random walks ------------------------------------------------------


def check_latent(model: RGFlow, level: int, latent: tuple[int, int, int]) -> tuple[int, int, int]:
    """Validate a latent (c, i, j): in range and of the given level."""
    c, i, j = latent
    C, L = model.config.channels, model.config.image_size
    if not (0 <= c < C and 0 <= i < L and 0 <= j < L):
        raise UsageError(
            f"--latent {c},{i},{j} is out of range: channel 0..{C - 1}, position 0..{L - 1}"
        )
    actual = int(model.level_map[i, j])
    if actual != level:
        raise UsageError(
            f"--latent {c},{i},{j} is a latent of level {actual}, not of level {level}"
        )
    return c, i, j


def latent_statistics(z: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over a batch of latents z (N, C, L, L): (C, L, L) each."""
    if len(z) < 2:
        return z.mean(0), torch.ones_like(z[0])
    return z.mean(0), z.std(0)


def top_variance_latents(std: Tensor, level_map: Tensor, level: int, k: int) -> list[tuple]:
    """The k latents (c, i, j) of a level with the largest standard deviation `std` (C, L, L)."""
    mask = (level_map == level).to(std.device).expand_as(std)
    n = int(mask.sum())
    if not 1 <= k <= n:
        raise UsageError(f"--top {k} is out of range: level {level} has {n} latents")
    scores = torch.where(mask, std, torch.full_like(std, -math.inf))
    flat = torch.topk(scores.flatten(), k).indices
    C, L, _ = std.shape
    return [(int(f // (L * L)), int(f // L % L), int(f % L)) for f in flat]


def traverse_latents(
    z: Tensor,
    latents: Sequence[tuple[int, int, int]],
    mean: Tensor,
    std: Tensor,
    extent: float = 3.0,
    frames: int = 16,
) -> Tensor:
    """Vary one latent at a time from mean - extent*std to mean + extent*std, others fixed.

    Arguments:
        z: (C, L, L) base latents.
        latents: (c, i, j) of each latent to vary.
        mean, std: (C, L, L) statistics that set each latent's scale.

    Returns:
        (len(latents), frames, C, L, L) latents.
    """
    if frames < 2:
        raise UsageError(f"--frames must be >= 2, got {frames}")
    if extent <= 0:
        raise UsageError(f"--range must be > 0, got {extent}")
    steps = torch.linspace(-extent, extent, frames, dtype=z.dtype, device=z.device)
    out = z.expand(len(latents), frames, *z.shape).clone()
    for k, (c, i, j) in enumerate(latents):
        out[k, :, c, i, j] = mean[c, i, j] + steps * std[c, i, j]
    return out


def random_walk(
    model: RGFlow,
    z: Tensor,
    level: int,
    steps: int,
    step_size: float = 0.2,
    temperature: Temperature = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random walk in the latents of one level, the others fixed.

    The walk is mean-reverting (z <- sqrt(1 - a^2) z + a * eps, eps ~ prior(T), a =
    `step_size`): it wanders without drifting off into the prior's tails, so every frame
    looks like a sample.

    Arguments:
        z: (B, C, L, L) starting latents (B walks at once).

    Returns:
        (steps + 1, B, C, L, L) latents, the start first.
    """
    if steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    if not 0 < step_size <= 1:
        raise UsageError(f"--step-size must be in (0, 1], got {step_size}")
    check_level(model, level)
    mask = (model.level_map == level).to(z.device)
    keep = math.sqrt(1 - step_size**2)
    path = [z]
    for _ in range(steps):
        eps = model.sample_latents(len(z), temperature, generator).to(z.device, z.dtype)
        path.append(torch.where(mask, keep * path[-1] + step_size * eps, path[-1]))
    return torch.stack(path)


# --- disentanglement probe -----------------------------------------------------------------------


def msds_targets(name: str, factor: Tensor) -> Tensor:
    """The global factor of MSDS images as regression targets (N, d).

    msds1: base colour (N, 3). msds2: the base angle theta (degrees, defined modulo 180)
    as (sin 2 theta, cos 2 theta), continuous across the wrap-around.
    """
    factor = torch.as_tensor(factor, dtype=torch.float64)
    if name == "msds1":
        return factor.view(len(factor), -1)
    if name == "msds2":
        angle = torch.deg2rad(2 * factor.view(-1))
        return torch.stack([angle.sin(), angle.cos()], dim=1)
    raise UsageError(f"unknown MSDS set {name!r}; use msds1 or msds2")


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
        raise UsageError(f"a linear probe needs at least 2 training images, got {N}")

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
    if alpha < 0:
        raise UsageError(f"the ridge penalty must be >= 0, got {alpha}")
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


def read_msds_factors(
    root: str | Path, name: str, split: str, limit: int | None = None, workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Images and global factor of one MSDS split, optionally only the first `limit`.

    Returns:
        images: uint8 (N, 3, 32, 32); factor: (N, 3) base colour (msds1) or (N,) base
        angle in degrees (msds2), as written in `labels.npz`.
    """
    images, _, factor = msds.read_msds(root, name, split, workers, limit)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(factor)
