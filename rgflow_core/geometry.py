"""Block geometry of the RG hierarchy: sub-lattices, block patching, latent levels, cones.

Level h (0 = finest) acts on the sub-lattice `x[..., ::2**h, ::2**h]`, an M x M image with
M = L / 2**h. Each sub-layer cuts that image into K x K blocks, aligned at multiples of K
(decimator) or shifted by K/2 with periodic wrap-around (disentangler), and applies one
block bijector to all blocks at once: blocks become rows of a (B*n*n, C*K*K) matrix.

Which grid comes first within a level is the model's `block_grid` (`BLOCK_GRIDS`):
"shifted_first" (the paper's text, rgflow's default) or "aligned_first" (the paper's
public code). No translation of the image turns one into the other, so every function
that follows the blocks takes it.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgflow_core.errors import ConfigError, UsageError

# block_grid -> the sub-layers of a level in the order the encoder applies them
BLOCK_GRIDS: dict[str, tuple[str, str]] = {
    "shifted_first": ("disentangler", "decimator"),
    "aligned_first": ("decimator", "disentangler"),
}


def grid_shift(sublayer: str, kernel_size: int) -> int:
    """Offset of a sub-layer's block grid: K/2 for the disentangler, 0 for the decimator."""
    return kernel_size // 2 if sublayer == "disentangler" else 0


def sublayer_order(block_grid: str) -> tuple[str, str]:
    """The sub-layers of a level ("disentangler", "decimator") in encoding order."""
    try:
        return BLOCK_GRIDS[block_grid]
    except KeyError:
        raise ConfigError(
            f"block_grid must be one of {', '.join(BLOCK_GRIDS)}, got {block_grid!r}"
        ) from None


def num_levels(image_size: int, kernel_size: int) -> int:
    """Number of RG levels H such that `image_size == kernel_size * 2**(H-1)`."""
    if kernel_size < 2 or kernel_size % 2:
        raise ConfigError(f"kernel_size must be an even number >= 2, got {kernel_size}")
    ratio, rem = divmod(image_size, kernel_size)
    if rem or ratio < 1 or ratio & (ratio - 1):
        raise ConfigError(
            f"image_size must be kernel_size * 2**(H-1); got image_size={image_size}, "
            f"kernel_size={kernel_size}"
        )
    return ratio.bit_length()


def to_blocks(x: Tensor, kernel_size: int, shift: int = 0) -> Tensor:
    """Cut images into K x K blocks, one block per row.

    Arguments:
        x: (B, C, M, M) images, M a multiple of K.
        shift: offset of the block grid; the image wraps around (periodic boundary).

    Returns:
        (B * n * n, C, K, K) blocks, n = M // K, ordered by (image, block row, block column).
    """
    K = kernel_size
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(-2, -1))
    B, C, M, _ = x.shape
    n = M // K
    x = x.reshape(B, C, n, K, n, K).permute(0, 2, 4, 1, 3, 5)  # (B, n, n, C, K, K)
    return x.reshape(B * n * n, C, K, K)


def from_blocks(blocks: Tensor, image_size: int, shift: int = 0) -> Tensor:
    """Inverse of `to_blocks`: (B*n*n, C, K, K) blocks -> (B, C, M, M) images."""
    N, C, K, _ = blocks.shape
    n = image_size // K
    B = N // (n * n)
    x = blocks.reshape(B, n, n, C, K, K).permute(0, 3, 1, 4, 2, 5)  # (B, C, n, K, n, K)
    x = x.reshape(B, C, image_size, image_size)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(-2, -1))
    return x


def latent_levels(image_size: int, kernel_size: int) -> Tensor:
    """RG level of every latent position.

    Returns:
        (L, L) LongTensor: level of z[:, :, i, j] is min(H-1, v(i, j)), where v(i, j) is
        the largest h with 2**h dividing both i and j.
    """
    H = num_levels(image_size, kernel_size)
    levels = torch.zeros(image_size, image_size, dtype=torch.long)
    for h in range(1, H):
        levels[:: 2**h, :: 2**h] = h
    return levels


def check_level(levels: int, level: int, name: str = "level") -> int:
    """`level` if it is one of the RG levels 0..levels-1, else a UsageError naming `name`."""
    if not 0 <= level < levels:
        raise UsageError(f"{level} is out of range: this model has levels 0..{levels - 1}", name)
    return level


def level_positions(level_map: Tensor, level: int) -> Tensor:
    """(N, 2) LongTensor of the (i, j) positions of level `level`, in row-major order."""
    return (level_map == level).nonzero()


def latents_by_level(z: Tensor, level_map: Tensor) -> dict[int, Tensor]:
    """Per-level views of z (B, C, L, L): {level: (B, C, N_level)} in row-major order."""
    H = int(level_map.max()) + 1
    mask = level_map.to(z.device)
    return {h: z[..., mask == h] for h in range(H)}


def _dilate_to_blocks(mask: Tensor, kernel_size: int, shift: int) -> Tensor:
    """Mark every pixel of each block (of the given grid) that holds a marked pixel."""
    M = mask.shape[-1]
    blocks = to_blocks(mask.view(1, 1, M, M), kernel_size, shift)  # (n*n, 1, K, K)
    hit = blocks.flatten(1).any(dim=1)
    blocks = hit.view(-1, 1, 1, 1).expand_as(blocks)
    return from_blocks(blocks, M, shift).view(M, M)


def causal_cone(
    pixels: Tensor, kernel_size: int, block_grid: str = "shifted_first"
) -> list[dict[str, Tensor]]:
    """Where a change of some input pixels propagates in the forward (encoding) direction.

    Within each level the two sub-layers act in the order `block_grid` gives.

    Arguments:
        pixels: (L, L) bool mask of changed input pixels.
        block_grid: a name in `BLOCK_GRIDS`.

    Returns:
        One dict per level h with (M, M) bool masks on that level's sub-lattice:
        `"input"`: changed values entering level h; `"disentangler"` and `"decimator"`:
        pixels of the blocks that must be re-evaluated in each sub-layer (equivalently,
        the changed values after it); `"latents"`: changed latent variables of level h.
        The union of all `"latents"` (at full resolution) is the set of changed z entries.
    """
    L = pixels.shape[-1]
    H = num_levels(L, kernel_size)
    order = sublayer_order(block_grid)
    changed = pixels.bool()
    cone = []
    for h in range(H):
        level = {"input": changed}
        after = changed
        for name in order:
            after = _dilate_to_blocks(after, kernel_size, grid_shift(name, kernel_size))
            level[name] = after
        latents = after.clone()
        if h < H - 1:
            latents[::2, ::2] = False
        level["latents"] = latents
        cone.append(level)
        changed = after[::2, ::2]
    return cone


def cone_latents(pixels: Tensor, kernel_size: int, block_grid: str = "shifted_first") -> Tensor:
    """(L, L) bool mask of the latents that a change of `pixels` can change."""
    L = pixels.shape[-1]
    out = torch.zeros(L, L, dtype=torch.bool)
    for h, level in enumerate(causal_cone(pixels, kernel_size, block_grid)):
        out[:: 2**h, :: 2**h] |= level["latents"]
    return out


def generator_cone(latents: Tensor, kernel_size: int, block_grid: str = "shifted_first") -> Tensor:
    """Pixels that a change of some latents can change, in the generating direction.

    `causal_cone` follows the encoder (pixels -> latents); the generator runs the levels
    top-down and each level's sub-layers in the reverse of the encoder's order. Both
    relations are built from the same symmetric "shares a block" steps, so this one is the
    transpose of the encoder's: pixel p is in the cone of latent l exactly when l is in
    `cone_latents(p)`.

    Arguments:
        latents: (L, L) bool mask of latent positions.
        block_grid: a name in `BLOCK_GRIDS`.

    Returns:
        (L, L) bool mask of image pixels.
    """
    L = latents.shape[-1]
    H = num_levels(L, kernel_size)
    order = sublayer_order(block_grid)
    latents = latents.bool()
    changed = None
    for h in reversed(range(H)):
        here = latents[:: 2**h, :: 2**h].clone()  # (M, M) level-h sub-lattice
        if changed is not None:
            here[::2, ::2] |= changed
        for name in reversed(order):
            here = _dilate_to_blocks(here, kernel_size, grid_shift(name, kernel_size))
        changed = here
    return changed
