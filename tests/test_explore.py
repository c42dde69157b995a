"""Exploring a model: sample, encode/decode, mix, receptive fields, traversals, walks, probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import perturb, tiny_config
from PIL import Image
from typer.testing import CliRunner

from rgflow_cli.main import app
from rgflow_core import build_model, cone_latents, latent_levels, load_model, save_model
from rgflow_core.codec import decode_images, encode_images
from rgflow_core.geometry import generator_cone, latents_by_level
from rgflow_core.images import read_images
from rgflow_core.latents import load_latents
from rgflow_core.mixing import mix_latents, random_walk, traverse_latents
from rgflow_core.msds import write_msds
from rgflow_core.probe import fit_ridge, msds_targets, r2_score
from rgflow_core.receptive import receptive_field, rf_extent

runner = CliRunner()


def _save(path: Path, seed: int = 0, **cfg) -> Path:
    save_model(perturb(build_model(tiny_config(**cfg)), scale=0.3, seed=seed), path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny perturbed checkpoints: grey 8x8 (K=2, 3 levels), RGB 8x8, RGB 32x32 for MSDS."""
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "grey": _save(root / "grey.safetensors"),
        "grey2": _save(root / "grey2.safetensors", seed=7),
        "rgb": _save(root / "rgb.safetensors", seed=1, channels=3),
        "msds": _save(
            root / "msds.safetensors",
            seed=2,
            image_size=32,
            channels=3,
            kernel_size=4,
            n_layers=(1, 1, 1, 1),
            n_res=1,
        ),
    }


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> dict[str, Path]:
    """Random 8x8 PNGs (grey and RGB) and a few bad inputs."""
    root = tmp_path_factory.mktemp("img")
    gen = np.random.default_rng(0)
    out = {}
    for k in range(3):
        out[f"g{k}"] = root / f"g{k}.png"
        Image.fromarray(gen.integers(0, 256, (8, 8), dtype=np.uint8)).save(out[f"g{k}"])
        out[f"c{k}"] = root / f"c{k}.png"
        Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(out[f"c{k}"])
    out["big"] = root / "big.png"
    Image.fromarray(gen.integers(0, 256, (12, 10), dtype=np.uint8)).save(out["big"])
    out["text"] = root / "notes.png"
    out["text"].write_text("not an image")
    return out


ON_A_DEVICE = {  # the commands that take --device
    name
    for name, command in typer.main.get_command(app).commands.items()
    if any(param.name == "device" for param in command.params)
}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _ok(args: list[str]) -> str:
    """Run a command that must succeed; on the CPU, whose bytes these tests compare with
    the CPU's (a GPU's float kernels differ in the last bits)."""
    args = [str(a) for a in args]
    if args[0] in ON_A_DEVICE and "--device" not in args:
        args += ["--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


# --- sample ---


def test_sample_grid_files_and_seed(ckpts, tmp_path):
    args = ["sample", "-c", ckpts["rgb"], "-n", "5", "--device", "cpu", "--nrow", "3"]
    _ok([*args, "-o", tmp_path / "a.png", "--out-dir", tmp_path / "each", "--seed", "3"])
    _ok([*args, "-o", tmp_path / "b.png", "--seed", "3", "--level-temperature", "0=0.2,1=0.8"])
    _ok([*args, "-o", tmp_path / "c.png", "--seed", "3"])
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 5 and _pixels(files[0]).shape == (8, 8, 3)
    grid = _pixels(tmp_path / "a.png")
    assert grid.shape == (2 + 2 * 10, 2 + 3 * 10, 3)  # make_grid: 2 rows x 3 columns, padding 2
    np.testing.assert_array_equal(grid[2:10, 2:10], _pixels(files[0]))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "c.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    _ok([*args, "-o", tmp_path / "z.png", "--seed", "3", "--zoom", "3"])
    zoomed = _pixels(tmp_path / "z.png")
    assert zoomed.shape == (3 * grid.shape[0], 3 * grid.shape[1], 3)
    np.testing.assert_array_equal(zoomed[::3, ::3], grid)  # each pixel a 3 x 3 square


def test_sample_uses_env_checkpoint_and_says_which(ckpts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RGFLOW_CHECKPOINT", raising=False)
    run = tmp_path / "runs" / "r1" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.safetensors").write_bytes(ckpts["grey"].read_bytes())
    result = runner.invoke(app, ["sample", "-n", "2", "-o", "s.png", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "last.safetensors" in result.output and (tmp_path / "s.png").is_file()
    monkeypatch.setenv("RGFLOW_CHECKPOINT", str(ckpts["rgb"]))
    _ok(["sample", "-n", "2", "-o", "t.png", "--device", "cpu"])
    assert _pixels(tmp_path / "t.png").shape[-1] == 3


# --- encode / decode ---


def test_encode_decode_is_exact_on_png_pixels(ckpts, pngs, tmp_path):
    images = [pngs["c0"], pngs["c1"], pngs["c2"]]
    out = _ok(["encode", "-c", ckpts["rgb"], *images, "-o", tmp_path / "z.safetensors"])
    assert "bpd" in out
    data = load_latents(tmp_path / "z.safetensors")
    assert data.z.shape == (3, 3, 8, 8) and torch.isfinite(data.bpd).all()
    assert data.names == [str(p) for p in images]
    # the per-level views are the entries of z at each level's positions
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "z.safetensors")
    levels = latent_levels(8, 2)
    for h, view in latents_by_level(data.z, levels).items():
        torch.testing.assert_close(tensors[f"level_{h}"], view, rtol=0, atol=0)
        assert (levels[tuple(tensors[f"positions_{h}"].T)] == h).all()

    _ok(["decode", "-c", ckpts["rgb"], tmp_path / "z.safetensors", "--out-dir", tmp_path / "d"])
    for p in images:
        np.testing.assert_array_equal(_pixels(tmp_path / "d" / p.name), _pixels(p))
    single = tmp_path / "one.safetensors"
    _ok(["encode", "-c", ckpts["grey"], pngs["g1"], "-o", single, "--json"])
    _ok(["decode", "-c", ckpts["grey"], single, "-o", tmp_path / "one.png"])
    np.testing.assert_array_equal(_pixels(tmp_path / "one.png"), _pixels(pngs["g1"]))


def test_decode_refuses_latents_of_another_model(ckpts, pngs, tmp_path):
    z = tmp_path / "z.safetensors"
    _ok(["encode", "-c", ckpts["grey"], pngs["g0"], "-o", z])
    other = runner.invoke(app, ["decode", "-c", str(ckpts["rgb"]), str(z), "-o", "x.png"])
    assert other.exit_code != 0 and "another model" in str(other.exception)
    assert "channels=1 (model: 3)" in str(other.exception)
    same_shape = runner.invoke(
        app, ["decode", "-c", str(ckpts["grey2"]), str(z), "-o", str(tmp_path / "y.png")]
    )
    assert same_shape.exit_code == 0 and "warning" in same_shape.output


# --- mix ---


def test_mix_latents_takes_high_levels_from_the_first():
    levels = latent_levels(16, 2)  # 4 levels
    za, zb = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    for s in (1, 2, 3):
        z = mix_latents(za, zb, s, levels)
        high = levels >= s
        assert torch.equal(z[..., high], za[..., high]) and torch.equal(
            z[..., ~high], zb[..., ~high]
        )
        assert torch.equal(z[..., :: 2**s, :: 2**s], za[..., :: 2**s, :: 2**s])
    assert torch.equal(mix_latents(za, za, 2, levels), za)


def test_mix_cli(ckpts, pngs, tmp_path):
    c = ckpts["rgb"]
    _ok(["mix", "-c", c, pngs["c0"], pngs["c0"], "--scale", "1", "-o", tmp_path / "same.png"])
    np.testing.assert_array_equal(_pixels(tmp_path / "same.png"), _pixels(pngs["c0"]))
    args = ["mix", "-c", c, pngs["c0"], pngs["c1"], "--zoom", "2"]
    _ok([*args, "--scale", "2", "-o", tmp_path / "m.png", "--grid", tmp_path / "g.png"])
    _ok([*args, "--all-scales", "-o", tmp_path / "all.png"])
    assert _pixels(tmp_path / "m.png").shape == (8, 8, 3)
    one, every = _pixels(tmp_path / "g.png"), _pixels(tmp_path / "all.png")
    assert every.shape[1] == one.shape[1] and every.shape[0] > one.shape[0]  # H-1 = 2 rows
    # the mixed image is the decoding of a's latents of level 2 with b's of levels 0 and 1
    model = load_model(c)
    z, _ = encode_images(model, read_images([pngs["c0"], pngs["c1"]], 3, 8))
    expected = decode_images(model, mix_latents(z[:1], z[1:], 2, model.level_map))
    np.testing.assert_array_equal(_pixels(tmp_path / "m.png"), expected[0].permute(1, 2, 0))
    cells = 8 * 2  # zoom 2
    panel_row = _pixels(tmp_path / "g.png")[-cells - 4 : -4]
    assert panel_row.shape[0] == cells


# --- receptive fields ---


@pytest.mark.parametrize("block_grid", ["shifted_first", "aligned_first"])
def test_generator_cone_is_the_transpose_of_the_encoder_cone(block_grid):
    L, K = 16, 2
    cones = {}
    for a, b in [(0, 0), (5, 3), (8, 8), (2, 12), (4, 6)]:
        latent = torch.zeros(L, L, dtype=torch.bool)
        latent[a, b] = True
        cones[a, b] = generator_cone(latent, K, block_grid)
    for i in range(L):
        for j in range(L):
            pixel = torch.zeros(L, L, dtype=torch.bool)
            pixel[i, j] = True
            reach = cone_latents(pixel, K, block_grid)  # latents that pixel (i, j) can change
            for (a, b), cone in cones.items():
                assert bool(cone[i, j]) == bool(reach[a, b])


def test_receptive_field_follows_the_aligned_first_cone():
    cfg = tiny_config(image_size=8, n_layers=(1, 1, 1), block_grid="aligned_first")
    model = perturb(build_model(cfg).double(), scale=0.5, seed=3)
    positions = torch.tensor([[1, 1], [2, 6], [4, 4], [0, 0]])
    rf = receptive_field(model, positions, samples=2, generator=torch.Generator().manual_seed(0))
    for (i, j), field in zip(positions.tolist(), rf):
        one = torch.zeros(8, 8, dtype=torch.bool)
        one[i, j] = True
        cone = generator_cone(one, 2, "aligned_first")
        assert (field[~cone] == 0).all(), (i, j)
        assert field[cone].sum() > 0, (i, j)


def test_receptive_field_is_zero_outside_the_cone_and_grows_with_level():
    cfg = tiny_config(image_size=16, n_layers=(1, 1, 1, 1))
    model = perturb(build_model(cfg).double(), scale=0.5, seed=3)
    levels = model.level_map
    positions = torch.tensor([[1, 1], [7, 8], [2, 2], [6, 10], [4, 4], [12, 4], [8, 8], [0, 0]])
    rf = receptive_field(model, positions, samples=2, generator=torch.Generator().manual_seed(0))
    assert rf.shape == (8, 16, 16) and rf.dtype == torch.float64
    support = []
    for (i, j), field in zip(positions.tolist(), rf):
        one = torch.zeros(16, 16, dtype=torch.bool)
        one[i, j] = True
        cone = generator_cone(one, 2)
        assert (field[~cone] == 0).all(), (i, j)  # exactly zero, not just small
        assert field[i, j] > 0 or field[cone].sum() > 0
        support.append((int(levels[i, j]), int((field > 0).sum()), rf_extent(field).pixels))
    by_level = {}
    for h, n, ext in support:
        by_level.setdefault(h, []).append((n, ext))
    assert sorted(by_level) == [0, 1, 2, 3]
    sizes = [min(n for n, _ in by_level[h]) for h in range(4)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    extents = [np.mean([e for _, e in by_level[h]]) for h in range(4)]
    assert all(a < b for a, b in zip(extents, extents[1:])), extents


def test_receptive_field_cli_json(ckpts, tmp_path):
    args = ["receptive-field", "-c", ckpts["grey"], "-o", tmp_path / "rf.png", "--samples", "2"]
    out = _ok([*args, "--json", "--per-level", "2", "--zoom", "2"])
    report = json.loads(out)
    assert {r["level"] for r in report["latents"]} == {0, 1, 2}
    assert len(report["latents"]) == 6
    with Image.open(tmp_path / "rf.png") as figure:  # three rows of two fields, a colour bar
        assert figure.size[0] >= 2 * 60 + 100 and figure.size[1] >= 3 * 60
    mean = {
        h: np.mean([r["extent"] for r in report["latents"] if r["level"] == h]) for h in range(3)
    }
    assert mean[0] < mean[1] <= mean[2]
    out = _ok([*args, "--levels", "0,2"])
    assert "level 1" not in out and "level 2" in out


# --- traversals and walks ---


def test_traverse_and_walk_move_only_the_chosen_latents(tiny_model):
    z = torch.randn(1, 8, 8, dtype=torch.float64)
    mean, std = torch.zeros_like(z), torch.full_like(z, 2.0)
    out = traverse_latents(z, [(0, 1, 3), (0, 2, 2)], mean, std, extent=3.0, frames=5)
    assert out.shape == (2, 5, 1, 8, 8)
    torch.testing.assert_close(out[0, :, 0, 1, 3], torch.linspace(-6, 6, 5, dtype=torch.float64))
    changed = (out != z).any(dim=(0, 1))[0]
    assert changed.sum() == 2 and changed[1, 3] and changed[2, 2]

    z0 = tiny_model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    path = random_walk(tiny_model, z0, 1, steps=4, generator=torch.Generator().manual_seed(1))
    assert path.shape == (5, 3, 1, 8, 8) and torch.equal(path[0], z0)
    moved = (path != z0).any(dim=(0, 1, 2))
    assert torch.equal(moved, tiny_model.level_map == 1)


def _frames(path: Path) -> int:
    with Image.open(path) as gif:
        return gif.n_frames


def test_traverse_cli(ckpts, pngs, tmp_path):
    base = ["traverse", "-c", ckpts["grey"], "--level", "1", "--frames", "4", "--zoom", "1"]
    _ok([*base, "--top", "2", "-o", tmp_path / "t.gif", "--samples", "8"])
    assert _frames(tmp_path / "t.gif") == 6  # there and back: F + F - 2
    strip = _pixels(tmp_path / "t.png")
    assert strip.shape[0] > 2 * 8 and strip.shape[1] > 4 * 8
    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):
        (data / f"{k}.png").write_bytes(pngs[f"g{k}"].read_bytes())
    out = _ok(
        [
            *base,
            "--latent",
            "0,2,0",
            "--data",
            data,
            "--image",
            pngs["g1"],
            "-o",
            tmp_path / "u.gif",
        ]
    )
    assert "latent 0,2,0" in out and (tmp_path / "u.png").is_file()


def test_walk_cli(ckpts, tmp_path):
    _ok(
        [
            "walk",
            "-c",
            ckpts["rgb"],
            "--level",
            "2",
            "--steps",
            "3",
            "-n",
            "2",
            "-o",
            tmp_path / "w.gif",
        ]
    )
    assert _frames(tmp_path / "w.gif") == 4


# --- probe ---


def test_ridge_recovers_a_linear_factor():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=gen, dtype=torch.float64)
    y = x[:, :2] @ torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64) + 4
    fit = fit_ridge(x[:150], y[:150], generator=gen)
    assert r2_score(y[150:], fit.predict(x[150:])) > 0.99
    wide = torch.randn(20, 50, generator=gen, dtype=torch.float64)  # more features than rows
    assert (
        fit_ridge(wide, wide[:, :1], alpha=1e-6).predict(wide).sub(wide[:, :1]).abs().max() < 1e-3
    )
    labels = torch.zeros(4, 16, 6)
    labels[..., 2] = torch.tensor([0.0, 45.0, 90.0, 180.0]).view(4, 1)
    labels[..., 3:] = 7.0
    targets = msds_targets("msds2", labels, torch.tensor([0.0, 45.0, 90.0, 180.0]))
    torch.testing.assert_close(
        targets["global"][:, 1], torch.tensor([1.0, 0.0, -1.0, 1.0], dtype=torch.float64)
    )
    assert targets["local"].shape == (4, 48) and bool((targets["local"] == 7).all())
    targets = msds_targets("msds1", labels, torch.full((4, 3), 100.0))
    assert targets["global"].shape == (4, 3) and targets["local"].shape == (4, 32)
    torch.testing.assert_close(  # angle 45 degrees: (sin 90, cos 90) for every ellipse
        targets["local"][1].view(16, 2), torch.tensor([[1.0, 0.0]] * 16, dtype=torch.float64)
    )


@pytest.mark.parametrize("name", ["msds1", "msds2"])
def test_probe_cli(ckpts, tmp_path, name):
    write_msds(tmp_path, name, 24, 12, seed=0, workers=1)
    args = ["probe", "-c", ckpts["msds"], "--data-root", tmp_path, "--dataset", name]
    args += ["-o", tmp_path / "probe.png"]
    report = json.loads(_ok([*args, "--json", "--workers", "1"]))
    assert report["train_images"] == 24 and report["test_images"] == 12
    levels = ["0", "1", "2", "3", "all"]
    assert [r["level"] for r in report["results"]] == levels * 2  # global, then local
    assert [r["target"].split(":")[0] for r in report["results"]] == ["global"] * 5 + ["local"] * 5
    assert sum(r["latents"] for r in report["results"][:4]) == 3 * 32 * 32
    with Image.open(report["chart"]) as chart:
        assert chart.size[0] > 300 and chart.size[1] > 200
    assert all(np.isfinite(r["r2_test"]) for r in report["results"])
    assert "R²" in _ok([*args, "--workers", "1"])
    limited = json.loads(_ok([*args, "--max-images", "10", "--workers", "1", "--json"]))
    assert limited["train_images"] == limited["test_images"] == 10
    if name == "msds1":  # a model of another image shape needs --resize
        grey = [*args[:2], ckpts["grey"], *args[3:], "--max-images", "6", "--workers", "1"]
        refused = runner.invoke(app, [str(a) for a in grey])
        assert refused.exit_code != 0 and "--resize" in str(refused.exception)
        assert json.loads(_ok([*grey, "--resize", "--json"]))["results"][0]["latents"] == 48


# --- bad input ---


BAD = [
    (["encode", "{g}", "{missing}"], "does not exist"),
    (["encode", "{text}"], "not a readable image"),
    (["encode", "{big}"], "--resize"),
    (["encode", "{c0}"], "mode RGB"),
    (["sample", "-n", "0"], "--num: must be in 1..100000, got 0"),
    (["sample", "--temperature", "0"], "--temperature: must be > 0"),
    (["sample", "--temperature", "nan"], "--temperature: must be a finite number"),
    (["sample", "--level-temperature", "5=0.3"], "--level-temperature: 5 is out of range"),
    (["sample", "--level-temperature", "0=inf"], "--level-temperature: must be a finite"),
    (["sample", "--level-temperature", "0:0.3"], "LEVEL=T"),
    (["mix", "{g}", "{g}", "--scale", "0"], "--scale: 0 is out of range"),
    (["mix", "{g}", "{g}", "--scale", "3"], "--scale: 3 is out of range"),
    (["mix", "{g}", "{big}", "--scale", "1"], "--resize"),
    (["receptive-field", "--levels", "3"], "--levels: 3 is out of range"),
    (["traverse", "--level", "4"], "--level: 4 is out of range"),
    (["traverse", "--level", "1", "--latent", "0,1,1"], "level 0, not of level 1"),
    (["traverse", "--level", "0", "--top", "99"], "'--top'"),
    (["traverse", "--level", "1", "--top", "13"], "--top: must be in 1..12, got 13"),
    (["walk", "--level", "-1"], "--level: -1 is out of range"),
    (["decode", "{z_rgb}"], "another model"),
    (["decode", "{text}"], "not a readable safetensors"),
    (["probe", "--data-root", "{nodata}"], "make-msds"),
]


@pytest.fixture(scope="module")
def bad_inputs(ckpts, pngs, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    z_rgb = root / "z.safetensors"
    _ok(["encode", "-c", ckpts["rgb"], pngs["c0"], "-o", z_rgb])
    return {
        "g": pngs["g0"],
        "c0": pngs["c0"],
        "big": pngs["big"],
        "text": pngs["text"],
        "missing": root / "nope.png",
        "z_rgb": z_rgb,
        "nodata": root / "nodata",
    }


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line(ckpts, bad_inputs, tmp_path, monkeypatch, run_main, args, expected):
    monkeypatch.chdir(tmp_path)
    args = [a.format(**{k: str(v) for k, v in bad_inputs.items()}) for a in args]
    code, output = run_main(*args, "-c", str(ckpts["grey"]), "--device", "cpu")
    assert code != 0 and "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], output
    assert not list(tmp_path.iterdir())  # nothing written


def test_no_checkpoint_found(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RGFLOW_CHECKPOINT", raising=False)
    code, output = run_main("sample", "-n", "2")
    assert code == 1 and output.startswith("error: no checkpoint given")
    assert len(output.strip().splitlines()) == 1
