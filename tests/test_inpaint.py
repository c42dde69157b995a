"""Inpainting: the causal-cone evaluation of log p(x) is exact, cheap, and the CLI is safe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config
from PIL import Image

from rgflow_core import build_model, causal_cone, save_model
from rgflow_core.bench import bench_inpaint
from rgflow_core.errors import UsageError
from rgflow_core.inpaint import (
    ConeLogProb,
    full_log_prob,
    inpaint,
    local_mean_fill,
    patch_candidates,
)


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


@pytest.mark.parametrize("block_grid", ["shifted_first", "aligned_first"])
@pytest.mark.parametrize("cfg, squares", CASES)
def test_cone_log_prob_and_gradient_equal_full_recomputation(cfg, squares, block_grid):
    model = perturb(build_model(tiny_config(**cfg, block_grid=block_grid)).double(), seed=1)
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


@pytest.mark.parametrize("block_grid", ["shifted_first", "aligned_first"])
def test_cone_blocks_match_geometry(block_grid):
    cfg = tiny_config(
        image_size=32, channels=1, kernel_size=4, n_layers=(1,) * 4, block_grid=block_grid
    )
    model = build_model(cfg)
    mask = _mask(32, (13, 18, 3))
    cone = ConeLogProb(model, torch.zeros(1, 32, 32), mask)
    geometry = causal_cone(mask, 4, block_grid)
    for h, level in enumerate(cone.levels):
        M = 32 // 2**h
        for sub, key in zip(level.sublayers, model.levels[h].order):
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


def test_local_mean_fill_keeps_its_sweeps_on_the_hole():
    # the same sweeps as averaging the rolled whole image, on random holes and images
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, 12, 12, generator=gen, dtype=torch.double)
    mask = torch.rand(12, 12, generator=gen) < 0.4
    x = torch.where(mask, torch.zeros_like(image), image)
    known, filled = (~mask).double(), (~mask).double()
    for _ in range(24):
        rolled = [(s, d) for d in (-1, -2) for s in (1, -1)]
        total = sum(torch.roll(x * filled, s, d) for s, d in rolled)
        count = sum(torch.roll(filled, s, d) for s, d in rolled)
        x = torch.where(mask, total / count.clamp(min=1), x)
        filled = torch.where(mask, (count > 0).double(), known)
    torch.testing.assert_close(local_mean_fill(image, mask), x, rtol=0, atol=1e-12)


def test_patch_candidates_are_the_image_under_the_moved_hole():
    image = torch.arange(2 * 8 * 8).view(2, 8, 8)
    mask = _mask(8, (7, 6, 2))  # wraps around the bottom edge
    patches = patch_candidates(image, mask)
    hole = mask.flatten().nonzero().flatten()
    assert patches.shape[1:] == (2, len(hole)) and len(patches) == 64 - 9
    flat = image.flatten(1)
    for patch in patches:
        rows, cols = (patch[0] % 64) // 8, patch[0] % 8
        assert not mask[rows, cols].any()  # never a missing pixel
        shift = (rows - hole // 8) % 8, (cols - hole % 8) % 8
        assert len(set(shift[0].tolist())) == 1 and len(set(shift[1].tolist())) == 1
        assert torch.equal(patch[1], flat[1, rows * 8 + cols])
    assert len(patch_candidates(image, mask, limit=5)) == 5
    assert len(patch_candidates(image, torch.ones(8, 8, dtype=torch.bool))) == 0


@pytest.fixture(scope="module")
def colour_model():
    return perturb(build_model(tiny_config(image_size=16, channels=3, kernel_size=4)), seed=2)


def _langevin(model, image, mask, steps, seed=0, method="langevin"):
    gen = torch.Generator().manual_seed(seed)
    return inpaint(model, image, mask, method=method, steps=steps, restarts=4, generator=gen)


def test_langevin_keeps_known_pixels_is_seeded_and_climbs(colour_model):
    gen = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=gen)
    mask = _mask(16, (6, 6, 4))
    starts = _langevin(colour_model, image, mask, steps=0)
    result = _langevin(colour_model, image, mask, steps=20)
    assert result.images.shape == (4, 3, 16, 16) and result.mean.shape == (3, 16, 16)
    for fill in (*result.images, result.mean):
        assert torch.equal(fill[:, ~mask], image[:, ~mask])
    assert torch.isfinite(result.log_prob).all() and math.isfinite(result.mean_log_prob)
    assert 0 < result.accept_rate <= 1 and result.best == int(result.log_prob.argmax())
    # the chains leave their (patch) starts for likelier fills
    assert float(result.log_prob.mean()) > float(starts.log_prob.mean())
    again = _langevin(colour_model, image, mask, steps=20)
    assert torch.equal(again.images, result.images) and torch.equal(again.mean, result.mean)
    assert torch.equal(again.log_prob, result.log_prob)
    assert not torch.equal(_langevin(colour_model, image, mask, 2, seed=1).images, result.images)


def test_the_mean_method_fills_with_the_average_of_the_chains(colour_model):
    image = torch.full((3, 16, 16), 90, dtype=torch.uint8)
    image[:, ::4] = 200
    mask = _mask(16, (5, 5, 3))
    result = _langevin(colour_model, image, mask, steps=6, method="mean")
    assert result.method == "mean" and torch.equal(result.fill, result.mean)
    assert result.fill_log_prob == result.mean_log_prob
    # with no steps the mean is that of the starts: pixel-wise between their extremes
    starts = _langevin(colour_model, image, mask, steps=0, method="mean")
    low, high = starts.images.min(0).values, starts.images.max(0).values
    assert ((starts.mean >= low) & (starts.mean <= high)).all()
    assert torch.equal(_langevin(colour_model, image, mask, 0).fill, starts.images[starts.best])


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(method="gibbs"), "method"),
        (dict(method="langevin", noise=0.5), "noise"),
        (dict(restarts=0), "restarts"),
        (dict(method="mean", steps=-1), "steps"),
    ],
)
def test_inpaint_arguments_are_checked(colour_model, kwargs, argument):
    with pytest.raises(UsageError) as err:
        inpaint(colour_model, torch.zeros(3, 16, 16, dtype=torch.uint8), _mask(16, (1, 1, 2)),
                **kwargs)  # fmt: skip
    assert err.value.argument == argument


def test_bench_times_the_inpaint_loop():
    cfg = tiny_config(image_size=8, channels=3, kernel_size=4, n_layers=(1, 1))
    seen = []
    rows = bench_inpaint(cfg, [8, 16], hole=2, budget_s=0.01, max_reps=2, loop_steps=(1, 3),
                         loop_repeats=1, step_progress=seen.append)  # fmt: skip
    assert [r.image_size for r in rows] == [8, 16] and [r.levels for r in rows] == [2, 3]
    for r in rows:
        assert r.loop_ms_per_step > 0 and math.isfinite(r.loop_setup_ms)
        assert r.cone_blocks < r.full_blocks or r.image_size == 8
    # per size: a warm-up run of 1 step, then runs of 1 and 3 steps, each step reported
    assert seen == [1, 1, 1, 2, 3] * 2
    with pytest.raises(UsageError) as err:
        bench_inpaint(cfg, [8], loop_steps=(3, 3))
    assert err.value.argument == "loop_steps"


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


def test_cli_fills_and_writes_figures(files, run_main, monkeypatch):
    from rgflow_core import figures

    d = files
    panels = []  # what the --compare panel was drawn from (then drawn for real)
    real_panel = figures.image_panel
    monkeypatch.setattr(
        figures, "image_panel", lambda *a, **kw: panels.append(a) or real_panel(*a, **kw)
    )
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
    assert not torch.equal(filled[~known], original[~known])  # 5 noisy steps do not recover it
    assert sorted(p.name for p in (d / "fills").iterdir()) == ["fill_00.png", "fill_01.png"]
    # the panel: the input with its hole painted white, the fill, the original, labelled
    (cells,), _, labels, _ = panels[0]
    hwc = lambda t: t.permute(1, 2, 0)  # noqa: E731
    shown = original.clone()
    shown[~known] = 255
    assert torch.equal(hwc(cells[0]), shown)
    assert torch.equal(hwc(cells[1]), filled) and torch.equal(hwc(cells[2]), original)
    assert labels == ["input (hole white)", "filled", "original"]
    with Image.open(d / "cmp.png") as panel:
        assert panel.format == "PNG" and panel.width >= 2 * panel.height  # cells side by side
    # the GIF: one frame per step (5 steps, frame_every 1) and the start, 4x zoomed; its
    # frames change (the fill moves) and keep the known pixels
    with Image.open(d / "p.gif") as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(torch.from_numpy(np.array(gif.convert("RGB")))[::4, ::4])
        assert gif.size == (32, 32) and gif.info["loop"] == 0
    assert len(frames) >= 5
    assert all(torch.equal(f[known], original[known]) for f in frames)
    assert not torch.equal(frames[0], frames[-1])
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


@pytest.mark.parametrize("method", ["langevin", "mean"])
def test_cli_method_flag(files, run_main, method):
    d = files
    code, out = run_main(
        "inpaint", d / "img.png", d / "mask.png", "-c", d / "m.safetensors", "--method", method,
        "-o", d / f"{method}.png", "--steps", "4", "--restarts", "3", "--out-dir", d / method,
        "--original", d / "img.png", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, out
    assert f"({method})" in out and "acceptance" in out and "PSNR" in out
    filled, original = _pixels(d / f"{method}.png"), _pixels(d / "img.png")
    known = torch.ones(8, 8, dtype=torch.bool)
    known[2:5, 3:6] = False
    assert torch.equal(filled[known], original[known])
    assert len(list((d / method).iterdir())) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "gibbs"], "--method"),
        (["--method", "langevin", "--noise", "0.5"], "--noise: applies to method 'map' only"),
    ],
)
def test_cli_method_errors_are_one_line(files, run_main, extra, message):
    d = files
    args = [d / "img.png", d / "mask.png", "-c", d / "m.safetensors", "-o", d / "o.png", *extra]
    code, out = run_main("inpaint", *args, "--device", "cpu")
    lines = [line for line in out.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), out
    assert message in lines[0] and not (d / "o.png").exists()


def test_cli_bench_inpaint_json_is_strict(run_main, monkeypatch):
    import rgflow_core.bench

    monkeypatch.setattr(rgflow_core.bench, "LOOP_STEPS", (1, 2))
    monkeypatch.setattr(rgflow_core.bench, "LOOP_REPEATS", 1)
    sets = ["--set", "n_hidden=8", "--set", "n_res=1", "--set", "n_layers=[1,1,1,1]"]
    code, out = run_main("bench", "--inpaint", "--sizes", "8", "--hole", "2", *sets, "--json",
                         "--device", "cpu")  # fmt: skip
    assert code == 0, out

    def refuse(constant):
        raise ValueError(constant)

    payload = json.loads(out.strip().splitlines()[-1], parse_constant=refuse)
    (row,) = payload["rows"]
    assert row["loop_ms_per_step"] > 0 and row["loop_setup_ms"] is not None
    assert row["cone_blocks"] > 0 and "inpaint() loop" in payload["loop"]
