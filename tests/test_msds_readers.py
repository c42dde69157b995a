"""MSDS factor readers: errors against the labels, hand-made ellipses, circular distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rgflow_core import msds
from rgflow_core.errors import DataError, UsageError
from rgflow_core.msds_readers import (
    Ellipses,
    angle_distance,
    colour_distance,
    global_factor,
    local_factors,
    read_ellipses,
    validate_readers,
)

# Measured on 300 test images, seed 0 (msds1 / msds2): colour MAE 0.0001 / 0.0, angle mean
# 0.023 / 0.023, p90 0.047 / 0.048, max 0.30 / 0.66 degrees, centres off 0.13% / 0.04%,
# global error 2.78 RMS (mean colour: 4.84) / 1.20 degrees (circular mean: 2.78).
LIMITS = {
    "colour_mae": 0.05,
    "colour_rms": 0.5,
    "angle_mean": 0.1,
    "angle_p90": 0.1,
    "angle_max": 2.0,
    "centre_wrong": 0.01,
}
GLOBAL_LIMITS = {"msds1": 3.5, "msds2": 1.6}


@pytest.mark.parametrize("name", msds.MSDS_NAMES)
def test_readers_match_the_labels(name):
    errors = validate_readers(name, n=300, seed=0)
    for key, limit in LIMITS.items():
        assert errors[key] < limit, (key, errors[key])
    assert errors["global_error"] < GLOBAL_LIMITS[name]
    assert errors["global_error"] < 0.7 * errors["global_error_mean"]  # midrange beats mean


@pytest.mark.parametrize("name", msds.MSDS_NAMES)
def test_factors_have_the_documented_shapes_and_ranges(name):
    images, labels, _ = msds.render_msds(name, "test", 0, 20, seed=3)
    x = images.transpose(0, 3, 1, 2)
    ellipses = read_ellipses(x)
    assert ellipses.colour.shape == (20, 16, 3) and ellipses.colour.dtype == np.float32
    assert ellipses.angle.shape == (20, 16) and ellipses.centre.shape == (20, 16, 2)
    assert ((ellipses.angle >= 0) & (ellipses.angle < 180)).all()
    # torch input reads the same, and reading in chunks changes nothing
    from_torch = read_ellipses(torch.from_numpy(x.copy()))
    alone = read_ellipses(x[7:8])
    for field in ("colour", "angle", "centre"):
        np.testing.assert_array_equal(getattr(ellipses, field), getattr(from_torch, field))
        np.testing.assert_array_equal(getattr(ellipses, field)[7:8], getattr(alone, field))
    base = global_factor(name, ellipses)
    local = local_factors(name, ellipses)
    if name == "msds1":
        assert base.shape == (20, 3) and local is ellipses.angle
    else:
        assert base.shape == (20,) and ((base >= 0) & (base < 180)).all()
        assert local is ellipses.colour


def _hand_made(angle: float, colour: tuple[int, int, int], k: int, jitter: tuple[int, int]):
    """One ellipse drawn as the spec says, on an otherwise black image: (1, 3, 32, 32)."""
    mask = Image.new("L", (8, 8), 0)
    ImageDraw.Draw(mask).ellipse([1, 3, 7, 5], fill=255)
    alpha = np.asarray(mask.rotate(angle, resample=Image.Resampling.BICUBIC)).astype(int)
    image = np.zeros((32, 32, 3), np.uint8)
    top, left = 8 * (k // 4) + jitter[1], 8 * (k % 4) + jitter[0]
    tile = (np.array(colour) * alpha[..., None] + 127) // 255
    rows, cols = slice(max(top, 0), top + 8), slice(max(left, 0), left + 8)
    image[rows, cols] = tile[max(-top, 0) : 32 - top, max(-left, 0) : 32 - left]
    return image.transpose(2, 0, 1)[None], (left + 4, top + 4)


@pytest.mark.parametrize(
    ("angle", "k", "jitter"),
    [(30.0, 6, (1, -1)), (123.4, 0, (-1, -1)), (2.5, 15, (1, 1)), (177.0, 9, (0, 1))],
)
def test_a_hand_made_ellipse_is_read_back(angle, k, jitter):
    image, centre = _hand_made(angle, (200, 100, 50), k, jitter)
    ellipses = read_ellipses(image)
    np.testing.assert_array_equal(ellipses.colour[0, k], [200, 100, 50])
    assert angle_distance(ellipses.angle[0, k], angle) < 0.5
    np.testing.assert_array_equal(ellipses.centre[0, k], centre)


def test_angle_distance_wraps_at_180_degrees():
    assert angle_distance(179.0, 1.0) == pytest.approx(2.0)
    assert angle_distance(1.0, 179.0) == pytest.approx(2.0)
    assert angle_distance(10.0, 190.0) == pytest.approx(0.0)
    assert angle_distance(0.0, 90.0) == pytest.approx(90.0)
    d = angle_distance(np.linspace(-360, 360, 97)[:, None], np.linspace(0, 180, 13))
    assert d.shape == (97, 13) and (d >= 0).all() and (d <= 90).all()


def test_colour_distance_is_euclidean():
    assert colour_distance(np.array([0, 0, 0]), np.array([3, 4, 0])) == pytest.approx(5.0)
    a = np.zeros((2, 16, 3), np.float32)
    assert colour_distance(a, a + 1).shape == (2, 16)


def test_global_factor_midrange_and_wrap():
    offsets = np.linspace(0.5, 44.5, 16)  # the midrange of the offsets is 22.5
    for base in (0.0, 10.0, 150.0, 170.0):
        angles = ((base + offsets) % 180)[None].astype(np.float32)
        ellipses = Ellipses(np.zeros((1, 16, 3), np.float32), angles, np.zeros((1, 16, 2)))
        assert angle_distance(global_factor("msds2", ellipses)[0], base) < 1e-4
    colour = (np.array([40.0, 128.0, 200.0]) + np.linspace(-32, 32, 16)[:, None])[None]
    ellipses = Ellipses(colour.astype(np.float32), np.zeros((1, 16)), np.zeros((1, 16, 2)))
    np.testing.assert_allclose(global_factor("msds1", ellipses)[0], [40, 128, 200])


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="transpose"):
        read_ellipses(np.zeros((2, 32, 32, 3), np.uint8))
    ellipses = read_ellipses(np.zeros((0, 3, 32, 32), np.uint8))
    assert ellipses.angle.shape == (0, 16)
    with pytest.raises(UsageError):
        global_factor("msds3", ellipses)
    with pytest.raises(UsageError):
        local_factors("dsprites", ellipses)
