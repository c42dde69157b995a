"""Block geometry, latent levels, causal cones and the locality of the flow."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, tiny_config

from rgflow_core import build_model, causal_cone, cone_latents, latent_levels
from rgflow_core.errors import ConfigError
from rgflow_core.geometry import from_blocks, num_levels, to_blocks


@pytest.mark.parametrize("shift", [0, 2])
def test_blocks_round_trip_and_content(shift):
    x = torch.arange(2 * 3 * 8 * 8).view(2, 3, 8, 8)
    blocks = to_blocks(x, 4, shift)
    assert blocks.shape == (2 * 2 * 2, 3, 4, 4)
    assert torch.equal(from_blocks(blocks, 8, shift), x)
    # first block of the shifted grid starts at (shift, shift); the last one wraps around
    assert torch.equal(blocks[0], x[0, :, shift : shift + 4, shift : shift + 4])
    if shift:
        assert blocks[3, 0, 3, 3] == x[0, 0, 1, 1]


def test_num_levels():
    assert num_levels(32, 4) == 4
    assert num_levels(4, 4) == 1
    assert num_levels(16, 2) == 4


def test_latent_levels():
    levels = latent_levels(32, 4)
    assert levels.shape == (32, 32) and levels.dtype == torch.long
    assert levels[0, 0] == 3 and levels[8, 8] == 3 and levels[4, 0] == 2
    assert levels[2, 6] == 1 and levels[1, 0] == 0 and levels[31, 31] == 0
    # level h holds 3/4 of the sub-lattice h; the top level keeps its whole K x K sub-lattice
    counts = torch.bincount(levels.flatten())
    assert counts.tolist() == [768, 192, 48, 16]
    for s in range(4):
        assert bool((levels[:: 2**s, :: 2**s] >= s).all())
        assert int((levels >= s).sum()) == (32 // 2**s) ** 2


@pytest.mark.parametrize("block_grid", ["shifted_first", "aligned_first"])
@pytest.mark.parametrize("pixel", [(5, 5), (0, 0), (15, 9)])
def test_locality_of_level0_latents(pixel, block_grid):
    K, L = 4, 16
    cfg = tiny_config(
        image_size=L, channels=3, kernel_size=K, n_layers=(1, 1, 1), block_grid=block_grid
    )
    model = perturb(build_model(cfg).double())
    y = torch.randn(1, 3, L, L, dtype=torch.double)
    y2 = y.clone()
    y2[0, 1, pixel[0], pixel[1]] += 1.0
    with torch.no_grad():
        diff = (model(y)[0] != model(y2)[0]).any(dim=1)[0]  # (L, L) changed latents
    level0 = latent_levels(L, K) == 0
    rows, cols = (diff & level0).nonzero(as_tuple=True)
    assert len(rows) > 0
    # all changed level-0 latents lie in a 2K x 2K window (periodic: measure extents mod L)
    for coords in (rows, cols):
        spread = min(int(((coords - c) % L).max()) for c in coords)
        assert spread < 2 * K
    # far latents are bitwise equal: everything changed lies inside the causal cone
    pixels = torch.zeros(L, L, dtype=torch.bool)
    pixels[pixel] = True
    assert not bool((diff & ~cone_latents(pixels, K, block_grid)).any())


def test_causal_cone_shrinks_to_blocks_per_level():
    pixels = torch.zeros(32, 32, dtype=torch.bool)
    pixels[13, 18] = True
    cone = causal_cone(pixels, 4)
    assert len(cone) == 4

    def box(M: int, rows: range, cols: range) -> torch.Tensor:
        mask = torch.zeros(M, M, dtype=torch.bool)
        for r in rows:
            for c in cols:
                mask[r % M, c % M] = True
        return mask

    # worked out by hand, K = 4. Level 0: the shifted blocks start at 2 mod 4, so pixel
    # (13, 18) is in rows 10-13, cols 18-21; those rows and columns meet the aligned
    # blocks of rows 8-15 and cols 16-23 (four blocks); their 16 even-even pixels go on.
    expected = [
        (box(32, range(13, 14), range(18, 19)), box(32, range(10, 14), range(18, 22)),
         box(32, range(8, 16), range(16, 24))),
        # level 1 (16 x 16): rows 4-7, cols 8-11 come in; shifted blocks rows 2-9, cols
        # 6-13; aligned blocks rows 0-11, cols 4-15
        (box(16, range(4, 8), range(8, 12)), box(16, range(2, 10), range(6, 14)),
         box(16, range(0, 12), range(4, 16))),
        # level 2 (8 x 8): rows 0-5, cols 2-7 come in; the shifted blocks that wrap around
        # (rows and cols 6, 7, 0, 1) and the others cover everything
        (box(8, range(0, 6), range(2, 8)), box(8, range(8), range(8)), box(8, range(8), range(8))),
        (box(4, range(4), range(4)), box(4, range(4), range(4)), box(4, range(4), range(4))),
    ]  # fmt: skip
    for h, (level, (inputs, disentangler, decimator)) in enumerate(zip(cone, expected)):
        assert torch.equal(level["input"], inputs), h
        assert torch.equal(level["disentangler"], disentangler), h
        assert torch.equal(level["decimator"], decimator), h
        latents = decimator.clone()
        if h < 3:  # the even-even pixels go on to the next level; at the top none do
            latents[::2, ::2] = False
        assert torch.equal(level["latents"], latents), h


def test_each_order_stays_in_its_own_cone():
    """The Jacobian's support lies in the cone of the model's own order, and the two orders
    reach different latents: the order is a real difference, which the cones follow."""
    K, L = 2, 8
    pixels = torch.zeros(L, L, dtype=torch.bool)
    pixels[3, 4] = True
    y = torch.randn(1, 1, L, L, dtype=torch.double)
    reaches = {}
    for block_grid in ("shifted_first", "aligned_first"):
        cfg = tiny_config(image_size=L, kernel_size=K, n_layers=(1, 1, 1), block_grid=block_grid)
        model = perturb(build_model(cfg).double())
        J = torch.autograd.functional.jacobian(lambda v, m=model: m(v)[0], y)[0, 0, :, :, 0, 0]
        reaches[block_grid] = J[:, :, 3, 4] != 0
        assert not bool((reaches[block_grid] & ~cone_latents(pixels, K, block_grid)).any())
    assert not torch.equal(reaches["shifted_first"], reaches["aligned_first"])


def test_block_grid_orders_differ():
    pixels = torch.zeros(16, 16, dtype=torch.bool)
    pixels[5, 6] = True
    a = cone_latents(pixels, 4, "shifted_first")
    b = cone_latents(pixels, 4, "aligned_first")
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="block_grid"):
        causal_cone(pixels, 4, "diagonal")
