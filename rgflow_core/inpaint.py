"""Inpainting: fill the missing pixels of an image under the model, known pixels fixed.

Three fills, all evaluating log p(x) on the causal cone of the hole only (`ConeLogProb`,
O(log L) block evaluations per step):

* "map": the most likely fill, by gradient ascent on log p(x). On images whose background
  is one flat colour the mode is often that colour everywhere (a black hole on MSDS), far
  from any image the model would draw.
* "langevin": posterior samples, by Metropolis-adjusted Langevin chains on
  p(hole | known pixels) (`rgflow_core.langevin`), started from patches of the image
  itself ranked by the model (`patch_candidates`): plausible, diverse fills.
* "mean": the average of those samples, an estimate of the posterior mean: the fill of
  least expected squared error (highest expected PSNR), but a blur of the plausible fills.

The chains explore only near their starts. On the quick msds1 model the step sizes MALA
accepts are about 1e-4 in logit units (the density is sharp inside each quantisation bin
of a flat background), so 200 steps move a pixel by less than one grey level: there the
samples are, in effect, the model's likeliest patches (benchmarks/inpaint_quality.py).

`local_mean_fill` (diffusion from the hole's border) is the optimiser's starting point
and a baseline; `psnr` scores fills.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 4 (inpainting, O(log L)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rgflow_core.checks import check_choice, check_float, check_int, check_positive
from rgflow_core.cone import Y_MAX, Y_MIN, ConeLogProb, ConeStats, full_log_prob
from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow
from rgflow_core.langevin import annealed_mala
from rgflow_core.preprocess import dequantize, quantize

__all__ = [
    "ConeLogProb",
    "ConeStats",
    "InpaintResult",
    "full_log_prob",
    "inpaint",
    "local_mean_fill",
    "patch_candidates",
    "psnr",
]


# the 4-neighbours of a pixel (periodic, like the disentangler's blocks), in sweep order
_NEIGHBOURS = ((0, -1), (0, 1), (-1, 0), (1, 0))


def local_mean_fill(image: Tensor, mask: Tensor, iterations: int = 0) -> Tensor:
    """Fill the hole of `image` (C, H, W) float by repeated averaging of known neighbours.

    Each sweep sets every missing pixel to the mean of its filled 4-neighbours (periodic,
    like the disentangler's blocks), so the fill diffuses in from the hole's border; the
    default is 2 * W sweeps. The sweeps run on the P missing pixels alone (gathers from
    index tensors built once), so a fill costs O(iterations * P), not O(iterations * H * W).
    A mask that covers the whole image gets the mean grey 0.5.
    """
    mask = mask.to(device=image.device, dtype=torch.bool)
    if bool(mask.all()):
        return torch.full_like(image, 0.5)
    C, H, W = image.shape
    iterations = iterations or 2 * W
    hole = mask.flatten().nonzero().flatten()  # (P,)
    rows, cols = hole // W, hole % W
    position = torch.full((H * W,), -1, dtype=torch.long, device=image.device)
    position[hole] = torch.arange(len(hole), device=image.device)
    neighbour = torch.stack([((rows + di) % H) * W + (cols + dj) % W for di, dj in _NEIGHBOURS])
    slot = position[neighbour]  # (4, P): the neighbour's place in the hole, -1 if known
    missing = (slot >= 0).to(image.dtype)
    flat = image.reshape(C, H * W)
    known_value = flat[:, neighbour] * (1 - missing)  # (C, 4, P)
    slot = slot.clamp(min=0)
    value = torch.zeros(C, len(hole), dtype=image.dtype, device=image.device)
    filled = torch.zeros(len(hole), dtype=image.dtype, device=image.device)
    for _ in range(iterations):
        weight = filled[slot] * missing  # (4, P): a missing neighbour counts once filled
        count = (1 - missing).sum(0) + weight.sum(0)
        total = known_value.sum(1) + (value[:, slot] * weight).sum(1)
        value = total / count.clamp(min=1)
        filled = (count > 0).to(image.dtype)
    out = flat.clone()
    out[:, hole] = value
    return out.view_as(image)


METHODS = ("map", "langevin", "mean")
CHAINS = 16  # the Langevin methods' default number of chains
LANGEVIN_START_TEMPERATURE = 1.0  # no annealing: the chains start among plausible fills
MAX_CANDIDATES = 1024  # image patches ranked for the chains' starts
_CANDIDATE_ENTRIES = 1 << 22  # translations x hole pixels per chunk of the candidate search


def patch_candidates(
    image: Tensor,
    mask: Tensor,
    limit: int = MAX_CANDIDATES,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Patches of the image itself in the hole's shape: its pixels under the hole moved by
    each translation (periodic) that keeps the moved hole off the hole.

    Arguments:
        image: (C, H, W). mask: (H, W) bool, True = missing.
        limit: at most this many translations, drawn at random (from `generator`) when
            there are more.

    Returns:
        (N, C, P) of `image`'s dtype, hole pixels in row-major order; N = 0 when no
        translation misses the hole.
    """
    C, H, W = image.shape
    missing = mask.to(device="cpu", dtype=torch.bool).flatten()
    hole = missing.nonzero().flatten()
    rows, cols = hole // W, hole % W
    shifts = torch.arange(H * W)
    if len(shifts) > limit:  # a random subset; 4x the limit, as some overlap the hole
        shifts = torch.randperm(H * W, generator=generator)[: 4 * limit]
    kept = []
    for chunk in shifts.split(max(1, _CANDIDATE_ENTRIES // max(len(hole), 1))):
        di, dj = (chunk // W).unsqueeze(1), (chunk % W).unsqueeze(1)
        moved = ((rows + di) % H) * W + (cols + dj) % W  # (S, P)
        kept.append(moved[~missing[moved].any(1)])
    moved = torch.cat(kept)[:limit].to(image.device)
    return image.reshape(C, H * W)[:, moved].permute(1, 0, 2)


@dataclass
class InpaintResult:
    """Fills of one image: one per restart (MAP) or per chain (Langevin)."""

    images: Tensor  # (R, C, L, L) uint8, equal to the input outside the hole
    log_prob: Tensor  # (R,) log p(x) in nats of each fill (pixel centres)
    best: int  # restart with the highest log p(x)
    block_evals: int  # block evaluations per image per step (cone)
    full_block_evals: int  # block evaluations of a whole-image pass
    frames: list[Tensor]  # (R, C, L, L) uint8 snapshots during the optimisation
    method: str = "map"
    mean: Tensor | None = None  # (C, L, L) uint8 posterior-mean fill (Langevin methods)
    mean_log_prob: float | None = None  # log p(x) of `mean`
    accept_rate: float | None = None  # Langevin: mean acceptance probability after burn-in

    @property
    def fill(self) -> Tensor:
        """(C, L, L) uint8: the fill the method stands for: the posterior mean for "mean",
        else the most likely restart or chain."""
        if self.method == "mean" and self.mean is not None:
            return self.mean
        return self.images[self.best]

    @property
    def fill_log_prob(self) -> float:
        """log p(x) in nats of `fill`."""
        if self.method == "mean" and self.mean_log_prob is not None:
            return self.mean_log_prob
        return float(self.log_prob[self.best])


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Switch off the gradients of the model's parameters inside the block."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def check_inpaint_args(
    steps: int, lr: float, restarts: int | None, noise: float, method: str = "map"
) -> None:
    """Check `inpaint`'s optimisation settings (before any work)."""
    check_choice("method", method, METHODS)
    check_int("steps", steps, 0, 100_000)
    check_positive("lr", lr, 100.0)
    if restarts is not None:
        check_int("restarts", restarts, 1, 1024)
    check_float("noise", noise, 0.0, 100.0)
    if noise > 0 and method != "map":
        raise UsageError(
            f"applies to method 'map' only: method {method!r} draws its own noise", "noise"
        )


def _hole_pixels(model: RGFlow, values: Tensor) -> Tensor:
    """uint8 (B, C, P) pixels of hole values (B, C, P) in logit space."""
    x, _ = model.preprocess.inverse(values.detach())
    return quantize(x.clamp(0, 1))


def _with_hole(image: Tensor, hole: Tensor, pixels: Tensor) -> Tensor:
    """uint8 (B, C, L, L): copies of `image` (C, L, L) with the hole set to `pixels`
    (B, C, P). Only the hole is decoded: a frame costs a copy of the image, no more."""
    C, H, W = image.shape
    flat = image.reshape(1, C, H * W).repeat(len(pixels), 1, 1)
    flat[:, :, hole.to(flat.device)] = pixels.to(flat.device)
    return flat.view(len(pixels), C, H, W)


def _pixel_log_prob(model: RGFlow, cone: ConeLogProb, pixels: Tensor) -> Tensor:
    """log p(x) (B,) of the images whose hole holds the uint8 `pixels` (B, C, P)."""
    p = next(model.parameters())
    x = dequantize(pixels.to(p.device), noise=False).to(p.dtype)
    with torch.no_grad():
        return cone(model.preprocess(x)[0]).cpu()


def _ascend(
    cone: ConeLogProb,
    v: Tensor,
    steps: int,
    lr: float,
    noise: float,
    generator: torch.Generator | None,
    callback: Callable[[int, Tensor], None],
) -> Tensor:
    """Adam up log p(x) over the hole values v (R, C, P), kept in the logit box."""
    v = v.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = -cone(v).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            if noise > 0:
                std = noise * math.sqrt(2 * lr) * (1 - (step + 1) / steps)
                kick = torch.randn(v.shape, generator=generator, dtype=v.dtype, device="cpu")
                v.add_(std * kick.to(v.device))
            v.clamp_(Y_MIN, Y_MAX)
        callback(step + 1, v)
    return v.detach()


def _starts(
    model: RGFlow,
    cone: ConeLogProb,
    x_known: Tensor,
    mask: Tensor,
    count: int,
    method: str,
    generator: torch.Generator | None,
) -> Tensor:
    """(count, C, P) starting hole values in logit space.

    MAP: the local-mean fill, plus unit noise for all but the first restart. Langevin: the
    image's own patches of highest log p(y) (`patch_candidates`), which sit among the
    plausible fills already, where a chain from the blurred local-mean fill would need
    thousands of small steps to climb the posterior's sharp ridges (measured on the quick
    msds1 model: about 1 nat per step); missing ones as for MAP.
    """
    C, hole = x_known.shape[0], cone.hole
    start = local_mean_fill(x_known, mask).reshape(C, -1)[:, hole]  # (C, P)
    v = model.preprocess(start)[0].clamp(Y_MIN, Y_MAX).unsqueeze(0).repeat(count, 1, 1)
    if count > 1:
        jitter = torch.randn(v[1:].shape, generator=generator, dtype=v.dtype, device="cpu")
        v[1:] = (v[1:] + jitter.to(v.device)).clamp(Y_MIN, Y_MAX)
    if method == "map":
        return v
    patches = patch_candidates(x_known, mask, MAX_CANDIDATES, generator)
    if len(patches) == 0:
        return v
    y = model.preprocess(patches)[0]
    with torch.no_grad():
        logp = torch.cat([_log_py(model, cone, part) for part in y.split(256)])
    best = y[logp.argsort(descending=True)[:count]]
    return torch.cat([best, v[: count - len(best)]])


def _log_py(model: RGFlow, cone: ConeLogProb, v: Tensor) -> Tensor:
    """log p(y) (B,) of hole values v (B, C, P) in logit space: p(x) |dx/dy|."""
    return cone(v) + model.preprocess.inverse(v)[1]


def inpaint(
    model: RGFlow,
    image: Tensor,
    mask: Tensor,
    *,
    method: str = "map",
    steps: int = 300,
    lr: float = 0.05,
    restarts: int | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    frame_every: int = 0,
    progress: Callable[[int], None] | None = None,
) -> InpaintResult:
    """Fill the missing pixels of `image`, the known pixels fixed at their bin centres.

    Methods (the hole's values live in logit space):
    * "map": Adam ascends log p(x) (kept inside the logit box of [0, 1]) from the local-mean
      fill (all restarts but the first with unit noise added). With `noise` T > 0 each step
      adds noise of std T * sqrt(2 lr), annealed to zero by the last step.
    * "langevin": `restarts` chains (default `CHAINS`) sample the posterior
      p(hole | known pixels) by Metropolis-adjusted Langevin dynamics
      (`rgflow_core.langevin`; `lr` is the first step size, adapted in the burn-in, the
      first half of the steps), started from the image's own patches of highest
      likelihood: every fill is a posterior sample; `best` is the most likely one.
    * "mean": the same chains; `fill` is their average after the burn-in, an estimate of
      the posterior mean: the fill of least expected squared error, but a blur of the
      plausible fills rather than one of them. The chains explore around their starts
      and rarely cross between far-apart fills, so the average is over the started ones.

    Arguments:
        image: (C, L, L) uint8. mask: (L, L) bool, True = missing (at least one pixel).
        restarts: MAP restarts (default 1) or Langevin chains (default `CHAINS`).
        frame_every: keep a snapshot every this many steps (0: none).
        progress: called with the number of finished steps.

    Returns:
        An `InpaintResult`; fills are uint8 and equal to `image` outside the hole.
    """
    check_inpaint_args(steps, lr, restarts, noise, method)
    mask = mask.to(torch.bool).cpu()
    if not bool(mask.any()):
        raise UsageError("marks no pixel as missing", "mask")
    count = restarts or (1 if method == "map" else CHAINS)
    p = next(model.parameters())
    x_known = dequantize(image.to(p.device), noise=False).to(p.dtype)
    cone = ConeLogProb(model, model.preprocess(x_known)[0], mask)
    hole = cone.hole
    v = _starts(model, cone, x_known, mask, count, method, generator)

    image = image.cpu()
    frames = [_with_hole(image, hole, _hole_pixels(model, v))] if frame_every else []

    def step_done(step: int, values: Tensor) -> None:
        if frame_every and (step % frame_every == 0 or step == steps):
            frames.append(_with_hole(image, hole, _hole_pixels(model, values)))
        if progress is not None:
            progress(step)

    chains = None
    with _frozen(model):  # only the hole is sampled or optimised: no weight gradients
        if method == "map":
            v = _ascend(cone, v, steps, lr, noise, generator, step_done)
        else:
            # the chains sample y in logit space: p(y) = p(x) |dx/dy|, x = its image
            chains = annealed_mala(
                lambda u: _log_py(model, cone, u), v, steps, step_size=lr,
                start_temperature=LANGEVIN_START_TEMPERATURE,
                transform=lambda u: model.preprocess.inverse(u)[0].clamp(0, 1),
                generator=generator, callback=step_done,
            )  # fmt: skip
            v = chains.v

    pixels = _hole_pixels(model, v)
    logp = _pixel_log_prob(model, cone, pixels)
    result = InpaintResult(
        images=_with_hole(image, hole, pixels),
        log_prob=logp,
        best=int(torch.argmax(logp)),
        block_evals=cone.stats.cone_blocks,
        full_block_evals=cone.stats.full_blocks,
        frames=frames,
        method=method,
    )
    if chains is not None:
        mean_pixels = quantize(chains.mean).unsqueeze(0)  # (1, C, P)
        result.mean = _with_hole(image, hole, mean_pixels)[0]
        result.mean_log_prob = float(_pixel_log_prob(model, cone, mean_pixels)[0])
        result.accept_rate = chains.accept_rate
    return result


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 arrays of pixels."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
