"""Mixing fidelity: exact reference rows, table shapes, the pair sampler and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config

from rgflow_core import build_model, save_model
from rgflow_core.codec import decode_images, encode_images
from rgflow_core.errors import UsageError
from rgflow_core.fidelity import (
    fidelity_table,
    mix_fidelity,
    reader_error,
    sample_pairs,
)
from rgflow_core.latents import model_fingerprint
from rgflow_core.mixing import mix_latents
from rgflow_core.msds import render_msds, write_msds


def _msds(name: str, n: int, seed: int = 0):
    images, labels, factor = render_msds(name, "test", 0, n, seed)
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), labels, factor


@pytest.fixture(scope="module")
def model():
    """A perturbed float64 RG-Flow on 3x32x32 images, K=4 (4 levels), small nets."""
    cfg = tiny_config(image_size=32, channels=3, kernel_size=4, n_layers=(1, 1, 1, 1), n_res=1)
    return perturb(build_model(cfg).double(), scale=0.2, seed=3).eval()


@pytest.mark.parametrize("name", ["msds1", "msds2"])
def test_reference_rows_are_exact(name):
    images, _, _ = _msds(name, 8)
    a, b = images[:4], images[4:]
    rows = fidelity_table(name, a, b, {1: a, 2: b})
    assert [(r.image, r.scale) for r in rows] == [("a", None), ("b", None), ("mix", 1), ("mix", 2)]
    ref_a, ref_b = rows[0], rows[1]
    assert ref_a.global_from_a == 1.0 and ref_a.global_to_a == 0.0
    assert ref_b.global_from_a == 0.0 and ref_b.local_to_b_mean == ref_b.local_to_b_median == 0.0
    assert ref_a.local_to_b_mean > 10 and ref_b.global_to_a > 5  # unrelated images differ


def _redraw(labels_from: np.ndarray, angles_from: np.ndarray) -> torch.Tensor:
    """MSDS images drawn again with the colours (and places) of `labels_from` and the
    ellipse angles of `angles_from` (labels (N, 16, 6)): a mix made by hand, not by a model."""
    from rgflow_core.msds import ANGLE_STEPS, TILE, _composite, _mask_table

    steps = np.rint(angles_from[..., 2] * ANGLE_STEPS / 180).astype(np.int64) % ANGLE_STEPS
    corner = (labels_from[..., :2] - TILE // 2).astype(np.int64)
    colours = labels_from[..., 3:].astype(np.int64)
    images = _composite(_mask_table()[steps], colours, corner[..., 0], corner[..., 1])
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def test_a_mix_drawn_by_hand_reads_as_global_from_a_and_local_from_b():
    # msds1: the global factor is the base colour, the local one each ellipse's angle. A
    # perfect mix has a's colours with b's angles; the opposite mix is its mirror image.
    images, labels, _ = _msds("msds1", 12)
    a, b, la, lb = images[:6], images[6:], labels[:6], labels[6:]
    assert torch.equal(_redraw(la, la), a)  # the drawing is MSDS's own
    perfect, opposite = _redraw(la, lb), _redraw(lb, la)
    rows = fidelity_table("msds1", a, b, {1: perfect, 2: opposite})
    good, bad = rows[2], rows[3]
    assert good.global_from_a == 1.0 and good.global_to_a < 1  # grey levels
    assert good.local_to_b_median < 0.5 and good.local_to_b_mean < 0.5  # degrees
    assert bad.global_from_a == 0.0 and bad.global_to_a > 10
    assert bad.local_to_b_mean > 20


def test_a_mix_that_copies_every_latent_of_one_image_reproduces_it(model):
    images, _, _ = _msds("msds1", 6)
    a, b = images[:3], images[3:]
    z, _ = encode_images(model, torch.cat([a, b]))
    level_map = model.level_map.cpu()
    H = model.config.levels
    all_a = decode_images(model, mix_latents(z[:3], z[3:], 0, level_map))
    all_b = decode_images(model, mix_latents(z[:3], z[3:], H, level_map))
    assert torch.equal(all_a, a) and torch.equal(all_b, b)
    rows = fidelity_table("msds1", a, b, {0: all_a, H: all_b})
    assert rows[2].global_from_a == 1.0 and rows[2].global_to_a == 0.0
    assert rows[3].global_from_a == 0.0 and rows[3].local_to_b_mean == 0.0


@pytest.mark.parametrize("name", ["msds1", "msds2"])
def test_mix_fidelity_table_shape(model, name):
    images, _, _ = _msds(name, 10, seed=1)
    pairs = sample_pairs(len(images), 7, seed=2)
    seen = []
    rows = mix_fidelity(model, name, images, pairs, batch_size=4, progress=seen.append)
    H = model.config.levels
    assert [r.scale for r in rows] == [None, None, *range(1, H)]
    assert all(r.pairs == 7 for r in rows)
    assert sum(seen) == len(torch.unique(pairs)) + 7 * (H - 1)
    for r in rows:
        assert 0 <= r.global_from_a <= 1 and r.global_to_a >= 0
        assert r.local_to_b_median >= 0 and math.isfinite(r.local_to_b_mean)


def test_sample_pairs_is_seeded_and_never_pairs_an_image_with_itself():
    pairs = sample_pairs(5, 500, seed=7)
    assert pairs.shape == (500, 2) and pairs.dtype == torch.long
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() <= 4
    assert torch.equal(pairs, sample_pairs(5, 500, seed=7))
    assert not torch.equal(pairs, sample_pairs(5, 500, seed=8))
    assert len({tuple(p) for p in pairs.tolist()}) == 20  # every ordered pair of 5 images


def _blank(n: int, shape=(3, 32, 32)) -> np.ndarray:
    return np.zeros((n, *shape), np.uint8)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: sample_pairs(1, 3), "n_images"),
        (lambda: sample_pairs(5, 0), "pairs"),
        (lambda: sample_pairs(5, 3, seed=-1), "seed"),
        (lambda: fidelity_table("msds3", _blank(1), _blank(1), {}), "name"),
        (lambda: fidelity_table("msds1", _blank(1, (32, 32, 3)), _blank(1), {}), "a"),
        (lambda: fidelity_table("msds1", _blank(2), _blank(1), {}), "b"),
        (lambda: fidelity_table("msds1", _blank(1), _blank(1), {1: _blank(2)}), "mixes"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument):
    with pytest.raises(UsageError) as err:
        call()
    assert err.value.argument == argument


def test_mix_fidelity_refuses_bad_pairs_and_models(model):
    images, _, _ = _msds("msds1", 4)
    with pytest.raises(UsageError, match="outside"):
        mix_fidelity(model, "msds1", images, torch.tensor([[0, 4]]))
    grey = build_model(tiny_config())  # 8x8 grey images
    with pytest.raises(UsageError, match="3x32x32"):
        mix_fidelity(grey, "msds1", images, torch.tensor([[0, 1]]))


@pytest.mark.parametrize("name", ["msds1", "msds2"])
def test_reader_error_is_small_on_rendered_images(name):
    images, labels, factor = _msds(name, 20, seed=4)
    floor = reader_error(name, images, labels, factor)
    assert floor.images == 20
    assert floor.local_median < 0.1 and floor.local_mean < 0.5
    assert floor.global_mean < (8.0 if name == "msds1" else 2.0)


# ---- command line, through the real entry point --------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fidelity")
    write_msds(d / "data", "msds1", 1, 12, seed=0, workers=1)
    cfg = tiny_config(image_size=32, channels=3, kernel_size=4, n_layers=(1, 1, 1, 1), n_res=1)
    save_model(perturb(build_model(cfg), scale=0.2, seed=3), d / "m.safetensors")
    return d


def _strict(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cli_json(files, run_main):
    d = files
    args = ["-c", d / "m.safetensors", "--data-root", d / "data", "--dataset", "msds1"]
    code, out = run_main("mix-fidelity", *args, "--pairs", "6", "--seed", "3", "--json",
                         "--device", "cpu")  # fmt: skip
    assert code == 0, out
    payload = _strict(out.strip().splitlines()[-1])
    assert payload["pairs"] == 6 and payload["seed"] == 3 and payload["test_images"] == 12
    assert payload["dataset"] == "msds1" and payload["factors"]["global"] == "base colour"
    rows = payload["rows"]
    assert [r["image"] for r in rows] == ["a", "b", "mix", "mix", "mix"]
    assert [r["scale"] for r in rows] == [None, None, 1, 2, 3]
    assert rows[0]["global_from_a"] == 1.0 and rows[1]["local_to_b_mean"] == 0.0
    assert set(payload["reader_error"]) == {"images", "global_mean", "local_mean", "local_median"}
    from rgflow_core import load_model

    assert payload["fingerprint"] == model_fingerprint(load_model(d / "m.safetensors"))


def test_cli_table(files, run_main):
    d = files
    args = ["-c", d / "m.safetensors", "--data-root", d / "data", "--pairs", "3"]
    code, out = run_main("mix-fidelity", *args, "--device", "cpu")
    assert code == 0, out
    assert "mix S=1" in out and "mix S=3" in out and "readers' error" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pairs", "0"], "--pairs: must be in 1..100000"),
        (["--data-root", "{d}/nowhere"], "not found"),
        (["--dataset", "msds3"], "--dataset"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_bad_inputs_are_one_line(files, run_main, extra, message):
    d = files
    args = ["-c", d / "m.safetensors", "--data-root", d / "data", "--device", "cpu"]
    code, out = run_main("mix-fidelity", *args, *[e.format(d=d) for e in extra])
    assert code != 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    assert message in lines[0] and "Traceback" not in out


def test_cli_refuses_a_model_of_other_images(files, tmp_path, run_main):
    save_model(build_model(tiny_config()), tmp_path / "grey.safetensors")
    args = ["-c", tmp_path / "grey.safetensors", "--data-root", files / "data", "--device", "cpu"]
    code, out = run_main("mix-fidelity", *args)
    assert code == 1 and out.startswith("error:") and "3x32x32" in out
