"""MSDS generation: determinism, factor structure, files on disk, and `rgflow make-msds`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from rgflow_cli.main import app
from rgflow_core import msds
from rgflow_core.errors import DataError, UsageError


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _labels(folder: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(folder / split / msds.LABELS_FILE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("name", msds.MSDS_NAMES)
def test_render_is_deterministic_and_independent_of_chunking(name):
    images, labels, factor = msds.render_msds(name, "train", 0, 6, seed=1)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (6, 16, 6) and labels.dtype == np.float32
    again = msds.render_msds(name, "train", 0, 6, seed=1)
    for a, b in zip((images, labels, factor), again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Image i depends on (seed, split, i) only, not on the chunk that rendered it.
    part = msds.render_msds(name, "train", 4, 2, seed=1)
    for a, b in zip((images[4:], labels[4:], factor[4:]), part, strict=True):
        np.testing.assert_array_equal(a, b)


def test_seed_and_split_change_the_images():
    images = msds.render_msds("msds1", "train", 0, 4, seed=0)[0]
    assert not np.array_equal(images, msds.render_msds("msds1", "train", 0, 4, seed=1)[0])
    assert not np.array_equal(images, msds.render_msds("msds1", "test", 0, 4, seed=0)[0])


def test_write_is_byte_identical_across_worker_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(msds, "_CHUNK", 7)  # several chunks per split, split across workers
    one = msds.write_msds(tmp_path / "a", "msds2", 30, 9, seed=5, workers=1)
    two = msds.write_msds(tmp_path / "b", "msds2", 30, 9, seed=5, workers=2)
    again = msds.write_msds(tmp_path / "c", "msds2", 30, 9, seed=5, workers=2)
    files = _files(one)
    assert len(files) == 39 and files == _files(two) == _files(again)
    for split in msds.SPLITS:
        for key, value in _labels(one, split).items():
            np.testing.assert_array_equal(value, _labels(two, split)[key])
    other = msds.write_msds(tmp_path / "d", "msds2", 30, 9, seed=6, workers=1)
    assert _files(other) != files


def test_read_returns_what_was_rendered(tmp_path):
    msds.write_msds(tmp_path, "msds1", 12, 3, seed=2, workers=1)
    for split, n in (("train", 12), ("test", 3)):
        images, labels, factor = msds.render_msds("msds1", split, 0, n, seed=2)
        for workers in (1, 2):
            read_images, read_labels, _ = msds.read_msds(tmp_path, "msds1", split, workers=workers)
            np.testing.assert_array_equal(read_images, images)
            np.testing.assert_array_equal(read_labels, labels)
        stored = _labels(tmp_path / "msds1", split)
        np.testing.assert_array_equal(stored["factor"], factor)
        assert str(stored["factor_name"]) == "base_colour"
        assert tuple(stored["label_columns"]) == msds.LABEL_COLUMNS
    assert msds.msds_complete(tmp_path, "msds1")


def test_rewrite_with_fewer_images_leaves_no_stale_files(tmp_path):
    msds.write_msds(tmp_path, "msds1", 8, 2, workers=1)
    msds.write_msds(tmp_path, "msds1", 5, 1, workers=1)
    assert sorted(p.name for p in (tmp_path / "msds1" / "train").glob("*.png")) == [
        f"{i:06d}.png" for i in range(5)
    ]
    assert len(msds.read_msds(tmp_path, "msds1", "test", workers=1)[0]) == 1


def test_positions_and_black_background():
    for name in msds.MSDS_NAMES:
        images, labels, _ = msds.render_msds(name, "train", 0, 50, seed=3)
        k = np.arange(16)
        centre_x, centre_y = 8 * (k % 4) + 4, 8 * (k // 4) + 4
        assert set(np.unique(labels[..., 0] - centre_x)) <= {-1, 0, 1}
        assert set(np.unique(labels[..., 1] - centre_y)) <= {-1, 0, 1}
        # Every pixel outside all 8x8 tiles (each spans centre - 4 .. centre + 3) is black.
        covered = np.zeros(images.shape[:3], bool)
        for n, image_labels in enumerate(labels.astype(int)):
            for x, y in image_labels[:, :2]:
                covered[n, max(y - 4, 0) : y + 4, max(x - 4, 0) : x + 4] = True
        assert not images[~covered].any()
        assert images[covered].any()


def test_msds1_shares_one_colour_per_image():
    images, labels, factor = msds.render_msds("msds1", "train", 0, 200, seed=4)
    assert factor.shape == (200, 3)
    assert factor.min() >= 32 and factor.max() <= 223
    colours = labels[..., 3:]
    assert np.all(np.abs(colours - factor[:, None, :]) <= 32)
    assert np.all((labels[..., 2] >= 0) & (labels[..., 2] < 180))
    # Pixels agree: the brightest pixel next to each centre has the ellipse's label colour.
    for n in range(len(images)):
        for x, y, *_, r, g, b in labels[n].astype(int):
            window = images[n, y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)
            brightest = window[window.sum(axis=1).argmax()]
            np.testing.assert_allclose(brightest, (r, g, b), atol=1)


def test_msds2_shares_one_angle_window_per_image():
    _, labels, factor = msds.render_msds("msds2", "train", 0, 200, seed=4)
    assert factor.shape == (200,)
    angles = labels[..., 2]
    assert np.all((angles >= 0) & (angles < 180))
    offsets = (angles - factor[:, None]) % 180
    assert np.all(offsets < 45 + 1e-3)
    # Independently of the stored factor: on the 180-degree circle the 16 angles of an
    # image leave a gap of more than 135 degrees, i.e. they fit in a 45-degree window.
    ordered = np.sort(angles, axis=1)
    gaps = np.diff(np.concatenate([ordered, ordered[:, :1] + 180], axis=1), axis=1)
    assert np.all(gaps.max(axis=1) > 135 - 1e-3)
    colours = labels[..., 3:]
    assert colours.min() >= 0 and colours.max() <= 255
    assert len(np.unique(colours[:, :, 0])) > 200  # colours vary within images, not per image


def test_masks_are_pils_rotated_ellipse():
    # The compositor relies on this: the alpha PIL gets rotating the RGBA ellipse tile.
    table = msds._mask_table()
    for step in (0, 1234, 4500, 9000, 17999):
        tile = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
        ImageDraw.Draw(tile).ellipse([1, 3, 7, 5], fill=(200, 100, 50, 255))
        rotated = tile.rotate(step * 180 / msds.ANGLE_STEPS, resample=Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(np.asarray(rotated)[..., 3], table[step])


def test_invalid_arguments(tmp_path):
    with pytest.raises(UsageError, match="msds1, msds2"):
        msds.render_msds("msds3", "train", 0, 1, seed=0)
    with pytest.raises(UsageError, match="train, test"):
        msds.render_msds("msds1", "val", 0, 1, seed=0)
    with pytest.raises(UsageError, match="1 to 10,000,000 training images"):
        msds.write_msds(tmp_path, "msds1", 0, 1)
    with pytest.raises(UsageError, match="0 to 10,000,000 test images"):
        msds.write_msds(tmp_path, "msds1", 1, -1)
    with pytest.raises(UsageError, match="training images"):
        msds.write_msds(tmp_path, "msds1", 10**12, 1)
    with pytest.raises(UsageError, match="seed: must be an integer"):
        msds.write_msds(tmp_path, "msds1", 1, 1, seed=-1)
    assert not (tmp_path / "msds1").exists()


def test_missing_or_incomplete_set_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="make-msds command") as err:
        msds.read_msds(tmp_path, "msds2", "train")
    assert str(tmp_path / "msds2" / "train" / "labels.npz") in str(err.value)
    msds.write_msds(tmp_path, "msds2", 3, 2, workers=1)
    (tmp_path / "msds2" / "test" / "labels.npz").unlink()
    assert not msds.msds_complete(tmp_path, "msds2")
    with pytest.raises(DataError, match="incomplete"):
        msds.read_msds(tmp_path, "msds2", "test")
    missing = tmp_path / "msds2" / "train" / "000001.png"
    missing.unlink()
    with pytest.raises(DataError, match="000001.png"):
        msds.read_msds(tmp_path, "msds2", "train", workers=1)


def test_output_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot create"):
        msds.write_msds(blocker / "sub", "msds1", 1, 0)


# --- command line -------------------------------------------------------------------------


def test_cli_writes_the_set(tmp_path):
    runner = CliRunner()
    args = ["make-msds", "msds2", "--out", str(tmp_path), "--train", "20", "--test", "5"]
    result = runner.invoke(app, [*args, "--seed", "3", "--workers", "1"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "msds2"
    assert str(folder) in result.output
    assert len(list((folder / "train").glob("*.png"))) == 20
    assert len(list((folder / "test").glob("*.png"))) == 5
    assert _labels(folder, "train")["labels"].shape == (20, 16, 6)
    images = msds.read_msds(tmp_path, "msds2", "test", workers=1)[0]
    np.testing.assert_array_equal(images, msds.render_msds("msds2", "test", 0, 5, seed=3)[0])

    refused = runner.invoke(app, args)
    assert refused.exit_code != 0 and "--force" in str(refused.exception)
    assert runner.invoke(app, [*args, "--force", "--workers", "1"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["make-msds", "msds3"], "msds3"),
        (["make-msds", "msds1", "--train", "-5"], "1 to 10,000,000 training images"),
        (["make-msds", "msds1", "--train", str(10**12)], "1 to 10,000,000 training images"),
        (["make-msds", "msds1", "--seed", "-1"], "'--seed'"),
        (["make-msds", "msds1", "--workers", "-2"], "--workers: must be 0"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, run_main, args, expected):
    code, output = run_main(*args, "--out", str(tmp_path))
    assert code != 0
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1 and expected in error_lines[0]
    assert not (tmp_path / "msds1").exists()


def test_cli_out_is_a_file(tmp_path, run_main):
    blocker = tmp_path / "data"
    blocker.write_text("")
    code, output = run_main("make-msds", "msds1", "--out", str(blocker))
    assert code == 1
    assert output.strip().splitlines() == [f"error: {blocker} is a file; give a folder"]
