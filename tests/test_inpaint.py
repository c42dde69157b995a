"""Inpainting: the causal-cone evaluation of log p(x) is exact, cheap, and the CLI is safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config
from PIL import Image

from rgflow_core import build_model, causal_cone, save_model
from rgflow_core.inpaint import ConeLogProb, full_log_prob, inpaint, local_mean_fill


def _mask(L: int, *squares: tuple[int, int, int]) -> torch.Tensor:
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i, j, size in squares:
        rows = torch.arange(i, i + size) % L  # periodic: a hole may wrap around
        cols = torch.arange(j, j + size) % L
        mask[rows.view(-1, 1), cols.view(1, -1)] = True
    return mask


CASES = [
    (dict(image_size=16, channels=3, kernel_size=4, n_layers=(2, 1, 1)), [(5, 6, 3)]),
    (dict(image_size=16, channels=3, kernel_size=4, n_layers=(2, 1, 1)), [(14, 15, 4), (3, 3, 1)]),
    (dict(image_size=8, channels=1, kernel_size=2, n_layers=(2, 1, 1)), [(2, 3, 2)]),
    (dict(image_size=8, channels=1, kernel_size=2, n_layers=(2, 1, 1)), [(0, 0, 8)]),
]


@pytest.mark.parametrize("cfg, squares", CASES)
def test_cone_log_prob_and_gradient_equal_full_recomputation(cfg, squares):
    model = perturb(build_model(tiny_config(**cfg)).double(), seed=1)
    C, L = model.config.channels, model.config.image_size
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(C, L, L, generator=gen, dtype=torch.double)
    mask = _mask(L, *squares)
    cone = ConeLogProb(model, y, mask)  # cached with the hole's old values in y
    v = torch.randn(3, C, int(mask.sum()), generator=gen, dtype=torch.double)
    v.requires_grad_(True)
    logp = cone(v)
    y_full = cone.full_image(y, v.detach()).requires_grad_(True)
    ref = full_log_prob(model, y_full)
    torch.testing.assert_close(logp, ref, rtol=1e-12, atol=1e-10)
    (grad,) = torch.autograd.grad(logp.sum(), v)
    (grad_ref,) = torch.autograd.grad(ref.sum(), y_full)
    torch.testing.assert_close(grad, grad_ref.flatten(2)[:, :, cone.hole], rtol=1e-10, atol=1e-12)


def test_cone_blocks_match_geometry():
    model = build_model(tiny_config(image_size=32, channels=1, kernel_size=4, n_layers=(1,) * 4))
    mask = _mask(32, (13, 18, 3))
    cone = ConeLogProb(model, torch.zeros(1, 32, 32), mask)
    geometry = causal_cone(mask, 4)
    for h, level in enumerate(cone.levels):
        M = 32 // 2**h
        for sub, key in zip(level.sublayers, ("disentangler", "decimator")):
            touched = torch.zeros(M * M, dtype=torch.bool)
            touched[sub.pixels] = True
            assert torch.equal(touched.view(M, M), geometry[h][key])


def test_block_evaluations_grow_with_levels_not_area():
    counts, full = [], []
    for L in (32, 64, 128, 256):
        H = L.bit_length() - 2  # L = 4 * 2**(H-1)
        cfg = tiny_config(image_size=L, kernel_size=4, n_layers=(1,) * H, n_hidden=4, n_res=1)
        mask = _mask(L, (L // 2 - 4, L // 2 - 4, 8))
        cone = ConeLogProb(build_model(cfg), torch.zeros(1, L, L), mask)
        counts.append(cone.stats.cone_blocks)
        full.append(cone.stats.full_blocks)
        assert sum(cone.stats.per_level) == cone.stats.cone_blocks
    # a fixed hole adds the same number of blocks per extra level: linear in log L
    steps = [b - a for a, b in zip(counts[:-1], counts[1:])]
    assert len(set(steps)) == 1 and steps[0] > 0
    assert counts[-1] < 3 * counts[0]
    assert full[-1] > 60 * full[0]


def test_inpaint_keeps_known_pixels_and_raises_likelihood():
    model = perturb(build_model(tiny_config(image_size=16, channels=3, kernel_size=4)), seed=2)
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=gen)
    mask = _mask(16, (6, 6, 4))
    result = inpaint(model, image, mask, steps=0)
    start = result.log_prob[0]
    result = inpaint(model, image, mask, steps=15, lr=0.1, restarts=3, noise=0.5, generator=gen)
    assert result.images.dtype == torch.uint8 and result.images.shape == (3, 3, 16, 16)
    assert torch.equal(result.images[:, :, ~mask], image[:, ~mask].expand(3, -1, -1))
    assert float(result.log_prob.max()) > float(start)
    assert result.best == int(result.log_prob.argmax())
    assert result.block_evals < result.full_block_evals


def test_local_mean_fill_interpolates_from_the_border():
    image = torch.full((1, 8, 8), 0.25)
    image[:, :, 4:] = 0.75
    mask = _mask(8, (2, 2, 4))
    fill = local_mean_fill(image, mask)
    assert torch.equal(fill[:, ~mask], image[:, ~mask])
    assert float(fill[:, mask].min()) >= 0.25 and float(fill[:, mask].max()) <= 0.75
    assert torch.equal(local_mean_fill(image, torch.ones(8, 8, dtype=torch.bool)), image * 0 + 0.5)


# ---- command line, through the real entry point --------------------------------------


@pytest.fixture
def files(tmp_path):
    save_model(perturb(build_model(tiny_config(channels=3)), scale=0.3), tmp_path / "m.safetensors")
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8, generator=gen).numpy()
    Image.fromarray(pixels).save(tmp_path / "img.png")
    hole = torch.zeros(8, 8, dtype=torch.uint8)
    hole[2:5, 3:6] = 255
    Image.fromarray(hole.numpy()).save(tmp_path / "mask.png")
    Image.fromarray(torch.zeros(8, 8, dtype=torch.uint8).numpy()).save(tmp_path / "none.png")
    Image.fromarray(torch.full((8, 8), 200, dtype=torch.uint8).numpy()).save(tmp_path / "all.png")
    Image.fromarray(torch.zeros(16, 16, dtype=torch.uint8).numpy()).save(tmp_path / "big.png")
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB")))


def test_cli_fills_and_writes_figures(files, run_main):
    d = files
    code, out = run_main(
        "inpaint", d / "img.png", d / "mask.png", "-c", d / "m.safetensors",
        "-o", d / "filled.png", "--steps", "5", "--restarts", "2", "--noise", "0.3",
        "--compare", d / "cmp.png", "--original", d / "img.png", "--gif", d / "p.gif",
        "--out-dir", d / "fills", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, out
    filled, original = _pixels(d / "filled.png"), _pixels(d / "img.png")
    known = torch.ones(8, 8, dtype=torch.bool)
    known[2:5, 3:6] = False
    assert torch.equal(filled[known], original[known])
    assert (d / "cmp.png").is_file() and (d / "p.gif").is_file()
    assert sorted(p.name for p in (d / "fills").iterdir()) == ["fill_00.png", "fill_01.png"]
    assert "PSNR" in out and "block evaluations per step" in out


def test_cli_empty_and_full_masks(files, run_main):
    d = files
    base = ["-c", d / "m.safetensors", "--steps", "2", "--device", "cpu"]
    code, out = run_main("inpaint", d / "img.png", d / "none.png", *base, "-o", d / "o.png")
    assert code == 0 and "no pixel" in out
    assert (d / "o.png").read_bytes() != b"" and torch.equal(
        _pixels(d / "o.png"), _pixels(d / "img.png")
    )
    code, out = run_main("inpaint", d / "img.png", d / "all.png", *base, "-o", d / "s.png")
    assert code == 0 and "sampling" in out


@pytest.mark.parametrize(
    "image, mask, extra, message",
    [
        ("img.png", "big.png", [], "must have the image's size"),
        ("img.png", "notes.png", [], "not a readable image"),
        ("notes.png", "mask.png", [], "not a readable image"),
        ("big.png", "big.png", [], "--resize"),
        ("img.png", "missing.png", [], "does not exist"),
        ("img.png", "mask.png", ["--restarts", "0"], "--restarts"),
    ],
)
def test_cli_bad_inputs(files, run_main, image, mask, extra, message):
    d = files
    args = [d / image, d / mask, "-c", d / "m.safetensors", "-o", d / "o.png", *extra]
    code, out = run_main("inpaint", *args, "--device", "cpu")
    assert code != 0
    assert message in out and "Traceback" not in out
    assert out.strip().startswith("error:") and len(out.strip().splitlines()) == 1


def test_cli_resize(files, run_main):
    d = files
    args = [d / "big.png", d / "big.png", "-c", d / "m.safetensors", "--resize", "--steps", "1"]
    code, out = run_main("inpaint", *args, "-o", d / "o.png", "--device", "cpu")
    assert code == 0, out
