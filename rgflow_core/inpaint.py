"""Inpainting by maximum likelihood, evaluating only the causal cone of the hole.

Filling the missing pixels of an image means maximising log p(x) of the whole image over
them, the known pixels held fixed. Every block bijector of RG-Flow mixes only the pixels
of its own K x K block, so a change of the hole changes only the blocks whose inputs it
reaches: at each level the changed set grows by one block and is then halved by the
decimation to the coarser sub-lattice, which keeps it at O(1) blocks per level and
O(log L) blocks in all (see `rgflow_core.geometry.causal_cone`).

`ConeLogProb` runs the flow once on the known image, caches every sub-layer's input, the
log-determinant of every block and the prior log-density of every latent, and then
evaluates log p(x) for new hole values by gathering only the touched blocks' rows (index
tensors built once), running the block bijectors on those rows, and adding the cached
terms of everything else. Forward and backward cost O(log L) block evaluations per step.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 4 (inpainting, O(log L)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rgflow_core.checks import check_float, check_int, check_positive
from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow
from rgflow_core.geometry import from_blocks, to_blocks
from rgflow_core.preprocess import ALPHA, dequantize, quantize

# logit-space values of x = 0 and x = 1: the hole is kept inside this box
Y_MIN = math.log(ALPHA / (1 - ALPHA))
Y_MAX = -Y_MIN


def _block_pixels(M: int, kernel_size: int, shift: int) -> Tensor:
    """(n*n, K*K) flat pixel index (into M*M) of every slot of every block, in row order."""
    index = torch.arange(M * M).view(1, 1, M, M)
    return to_blocks(index, kernel_size, shift).flatten(1)  # (n*n, K*K)


@dataclass
class _Sublayer:
    """Index tensors of the touched blocks of one sub-layer (all built once)."""

    bijector: nn.Module
    pixels: Tensor  # (n_t * K*K,) flat pixel index of each slot of the touched blocks
    from_new: Tensor  # (n_t * K*K,) bool: slot's input is in the previous changed set
    new_index: Tensor  # (n_t * K*K,) index into the previous changed values (0 if unused)
    cached: Tensor  # (1, C, n_t * K*K) cached input values of the slots
    blocks: int  # n_t, number of touched blocks


@dataclass
class _Level:
    sublayers: list[_Sublayer]
    latent_slots: Tensor  # indices into the decimator's changed set that are latents
    coarse_slots: Tensor  # indices into it that go on to the next level


@dataclass
class ConeStats:
    """Block evaluations of one log p(x) evaluation: cone vs the whole image."""

    cone_blocks: int
    full_blocks: int
    per_level: list[int] = field(default_factory=list)


class ConeLogProb(nn.Module):
    """log p(x) of an image as a function of its missing pixels, evaluated on the cone.

    Arguments:
        model: the RG-Flow (its parameters are not trained here).
        y: (C, L, L) the image in logit space; values in the hole are ignored.
        mask: (L, L) bool, True where pixels are missing (the variables).

    Calling it with hole values `v` (B, C, P) in logit space (P = mask.sum(), pixels in
    row-major order of the mask) returns log p(x) in nats, shape (B,), of the images equal
    to `y` outside the hole and `v` inside, including the logit preprocessing term.
    """

    def __init__(self, model: RGFlow, y: Tensor, mask: Tensor) -> None:
        super().__init__()
        L, C = model.config.image_size, model.config.channels
        mask = mask.to(torch.bool).cpu()
        if mask.shape != (L, L) or y.shape != (C, L, L):
            raise UsageError(
                f"image {tuple(y.shape)} and mask {tuple(mask.shape)} do not fit", "mask"
            )
        self.model = model
        self.channels = C
        self.hole = mask.flatten().nonzero().flatten().to(y.device)  # (P,)
        self.levels: list[_Level] = []
        self.stats = ConeStats(0, 0)
        with torch.no_grad():
            const = self._build(model, y.detach(), mask)
        self.register_buffer("const", const)

    def _build(self, model: RGFlow, y: Tensor, mask: Tensor) -> Tensor:
        """One pass over the known image: cache values and constants, build the indices."""
        K, L, C = model.config.kernel_size, model.config.image_size, self.channels
        device = y.device
        pre_ladj = -model.preprocess.inverse(y.reshape(-1, 1))[1].view(C, L * L)
        const = pre_ladj[:, ~mask.flatten().to(device)].sum()

        x = y.unsqueeze(0)  # (1, C, M, M): the known image's values entering level h
        prev = self.hole  # flat pixel indices of the changed values, in their order
        for h, level in enumerate(model.levels):
            M = L // 2**h
            sublayers = []
            for layer, shift in ((level.disentangler, K // 2), (level.decimator, 0)):
                rows = to_blocks(x, K, shift)  # (n*n, C, K, K)
                out, ladj = layer.bijector(rows.reshape(rows.shape[0], -1))  # ladj (n*n,)
                slots = _block_pixels(M, K, shift).to(device)  # (n*n, K*K)
                position = torch.full((M * M,), -1, dtype=torch.long, device=device)
                position[prev] = torch.arange(len(prev), device=device)
                touched = (position[slots] >= 0).any(dim=1)  # (n*n,) blocks to re-evaluate
                const = const + ladj[~touched].sum()
                pixels = slots[touched].flatten()
                from_new = position[pixels] >= 0
                sublayers.append(
                    _Sublayer(
                        bijector=layer.bijector,
                        pixels=pixels,
                        from_new=from_new,
                        new_index=position[pixels].clamp(min=0),
                        cached=x.flatten(2)[:, :, pixels],
                        blocks=int(touched.sum()),
                    )
                )
                self.stats.full_blocks += slots.shape[0]
                x = from_blocks(out.view_as(rows), M, shift)
                prev = pixels
            changed = torch.zeros(M * M, dtype=torch.bool, device=device)
            changed[prev] = True
            top = h == len(model.levels) - 1
            rows_i, cols_i = prev // M, prev % M
            coarse = (rows_i % 2 == 0) & (cols_i % 2 == 0) & (not top)
            is_latent = torch.ones(M, M, dtype=torch.bool, device=device)
            if not top:
                is_latent[::2, ::2] = False
            logp = model.prior.log_prob(x.reshape(-1, 1)).view(C, M * M)
            const = const + logp[:, is_latent.flatten() & ~changed].sum()
            self.levels.append(
                _Level(
                    sublayers=sublayers,
                    latent_slots=(~coarse).nonzero().flatten(),
                    coarse_slots=coarse.nonzero().flatten(),
                )
            )
            blocks = sum(s.blocks for s in sublayers)
            self.stats.per_level.append(blocks)
            self.stats.cone_blocks += blocks
            x = x[..., ::2, ::2]
            prev = (rows_i[coarse] // 2) * (M // 2) + cols_i[coarse] // 2
        return const

    def forward(self, v: Tensor) -> Tensor:
        """Hole values (B, C, P) in logit space -> log p(x) (B,) in nats."""
        B, C = v.shape[0], self.channels
        logp = self.const - self.model.preprocess.inverse(v)[1]
        values = v  # (B, C, n_changed): the changed values, in the order of `prev` above
        for level in self.levels:
            for sub in level.sublayers:
                slots = torch.where(sub.from_new, values[:, :, sub.new_index], sub.cached)
                n = sub.blocks
                rows = slots.view(B, C, n, -1).permute(0, 2, 1, 3).reshape(B * n, -1)
                out, ladj = sub.bijector(rows)  # (B*n, C*K*K), (B*n,)
                logp = logp + ladj.view(B, n).sum(1)
                values = out.view(B, n, C, -1).permute(0, 2, 1, 3).reshape(B, C, -1)
            latents = values[:, :, level.latent_slots]
            logp = logp + self.model.prior.log_prob(latents)
            values = values[:, :, level.coarse_slots]
        return logp

    def full_image(self, y: Tensor, v: Tensor) -> Tensor:
        """(B, C, L, L) images: `y` (C, L, L) outside the hole, `v` (B, C, P) inside."""
        B, C, L = v.shape[0], self.channels, y.shape[-1]
        flat = y.reshape(1, C, L * L).expand(B, C, L * L).clone()
        flat[:, :, self.hole] = v
        return flat.view(B, C, L, L)


def full_log_prob(model: RGFlow, y: Tensor) -> Tensor:
    """log p(x) (B,) of whole images y (B, C, L, L) in logit space: the reference."""
    return model.log_prob(y) - model.preprocess.inverse(y)[1]


def local_mean_fill(image: Tensor, mask: Tensor, iterations: int = 0) -> Tensor:
    """Fill the hole of `image` (C, L, L) float by repeated averaging of known neighbours.

    Each sweep sets every missing pixel to the mean of its filled 4-neighbours (periodic,
    like the disentangler's blocks), so the fill diffuses in from the hole's border.
    A mask that covers the whole image gets the mean grey 0.5.
    """
    mask = mask.to(image.device)
    if bool(mask.all()):
        return torch.full_like(image, 0.5)
    x = torch.where(mask, torch.zeros_like(image), image)
    known = (~mask).to(image.dtype)
    filled = known.clone()
    iterations = iterations or 2 * image.shape[-1]
    shifts = ((1, -1), (-1, -1), (1, -2), (-1, -2))
    for _ in range(iterations):
        total = sum(torch.roll(x * filled, s, d) for s, d in shifts)
        count = sum(torch.roll(filled, s, d) for s, d in shifts)
        mean = total / count.clamp(min=1)
        x = torch.where(mask, mean, x)
        filled = torch.where(mask, (count > 0).to(image.dtype), known)
    return x


@dataclass
class InpaintResult:
    """Fills of one image: one per restart."""

    images: Tensor  # (R, C, L, L) uint8, equal to the input outside the hole
    log_prob: Tensor  # (R,) log p(x) in nats of each fill (pixel centres)
    best: int  # restart with the highest log p(x)
    block_evals: int  # block evaluations per image per step (cone)
    full_block_evals: int  # block evaluations of a whole-image pass
    frames: list[Tensor]  # (R, C, L, L) uint8 snapshots during the optimisation


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


def check_inpaint_args(steps: int, lr: float, restarts: int, noise: float) -> None:
    """Check `inpaint`'s optimisation settings (before any work)."""
    check_int("steps", steps, 0, 100_000)
    check_positive("lr", lr, 100.0)
    check_int("restarts", restarts, 1, 1024)
    check_float("noise", noise, 0.0, 100.0)


def inpaint(
    model: RGFlow,
    image: Tensor,
    mask: Tensor,
    *,
    steps: int = 300,
    lr: float = 0.05,
    restarts: int = 1,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    frame_every: int = 0,
    progress: Callable[[int], None] | None = None,
) -> InpaintResult:
    """Fill the missing pixels of `image` by maximising log p(x) of the whole image.

    Adam ascends log p(x) over the missing pixels in logit space (kept inside the logit
    box of [0, 1]), the known pixels fixed at their bin centres. The first restart starts
    from the local-mean fill, the others from noise around it. With `noise` T > 0 each step
    adds Langevin noise of std T * sqrt(2 lr), annealed to zero by the last step, for
    diverse fills.

    Arguments:
        image: (C, L, L) uint8. mask: (L, L) bool, True = missing (at least one pixel).
        frame_every: keep a snapshot every this many steps (0: none).
        progress: called with the number of finished steps.

    Returns:
        An `InpaintResult`; fills are uint8 and equal to `image` outside the hole.
    """
    check_inpaint_args(steps, lr, restarts, noise)
    mask = mask.to(torch.bool).cpu()
    if not bool(mask.any()):
        raise UsageError("marks no pixel as missing", "mask")
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    C = image.shape[0]
    y, _ = model.preprocess(dequantize(image.to(device), noise=False).to(dtype))
    cone = ConeLogProb(model, y, mask)
    hole = cone.hole

    start = local_mean_fill(dequantize(image.to(device), noise=False).to(dtype), mask.to(device))
    v0 = model.preprocess(start)[0].reshape(C, -1)[:, hole].clamp(Y_MIN, Y_MAX)
    v = v0.unsqueeze(0).repeat(restarts, 1, 1)
    if restarts > 1:
        jitter = torch.randn(v[1:].shape, generator=generator, dtype=dtype, device="cpu")
        v[1:] = (v[1:] + jitter.to(device)).clamp(Y_MIN, Y_MAX)
    v = v.requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)

    def snapshot(values: Tensor) -> Tensor:
        x, _ = model.preprocess.inverse(cone.full_image(y, values.detach()))
        filled = quantize(x.clamp(0, 1))
        return torch.where(mask.to(device), filled, image.to(device)).cpu()

    frames = [snapshot(v)] if frame_every else []
    with _frozen(model):  # only the hole is optimised: no weight gradients
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = -cone(v).sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                if noise > 0:
                    std = noise * math.sqrt(2 * lr) * (1 - (step + 1) / steps)
                    kick = torch.randn(v.shape, generator=generator, dtype=dtype, device="cpu")
                    v.add_(std * kick.to(device))
                v.clamp_(Y_MIN, Y_MAX)
            if frame_every and ((step + 1) % frame_every == 0 or step + 1 == steps):
                frames.append(snapshot(v))
            if progress is not None:
                progress(step + 1)

    images = snapshot(v)
    with torch.no_grad():
        y_final, _ = model.preprocess(dequantize(images.to(device), noise=False).to(dtype))
        logp = cone(y_final.flatten(2)[:, :, hole]).cpu()
    return InpaintResult(
        images=images,
        log_prob=logp,
        best=int(torch.argmax(logp)),
        block_evals=cone.stats.cone_blocks,
        full_block_evals=cone.stats.full_blocks,
        frames=frames,
    )


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 arrays of pixels."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
