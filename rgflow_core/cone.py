"""log p(x) of an image as a function of its missing pixels, evaluated on the causal cone.

Every block bijector of RG-Flow mixes only the pixels of its own K x K block, so a change
of the hole changes only the blocks whose inputs it reaches: at each level the changed set
grows by one block and is then halved by the decimation to the coarser sub-lattice, which
keeps it at O(1) blocks per level and O(log L) blocks in all (see
`rgflow_core.geometry.causal_cone`).

`ConeLogProb` runs the flow once on the known image, caches every sub-layer's input, the
log-determinant of every block and the prior log-density of every latent, and then
evaluates log p(x) for new hole values by gathering only the touched blocks' rows (index
tensors built once), running the block bijectors on those rows, and adding the cached
terms of everything else. Forward and backward cost O(log L) block evaluations per step.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 4 (inpainting, O(log L)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow
from rgflow_core.geometry import from_blocks, to_blocks
from rgflow_core.preprocess import ALPHA

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
    latent_slots: Tensor  # indices into the last sub-layer's changed set that are latents
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
            for layer in level.sublayers():
                shift = layer.shift
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
