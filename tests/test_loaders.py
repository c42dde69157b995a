"""The dataset loaders on small files in the documented layouts: CelebA (JPEGs of 178x218
and the official split file) checked against the paper's preprocessing, MNIST on IDX files
written here."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF

from rgflow_core.config import load_preset
from rgflow_core.data import load_dataset

# CelebA's official split: 0 train, 1 validation, 2 test; files listed out of split order
PARTITION = {"000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2, "000004.jpg": 0,
             "000005.jpg": 0, "000006.jpg": 2, "000007.jpg": 1}  # fmt: skip


def _face(seed: int) -> Image.Image:
    """A 178x218 picture (the aligned CelebA size): smooth shapes, edges, some texture,
    different in every part, so that a wrong crop or order shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:218, 0:178]
    r = np.sqrt((x - 89) ** 2 / 50**2 + (y - 109) ** 2 / 70**2)
    base = np.stack(
        [120 + 80 * np.cos(3 * r + seed), 100 + 60 * (r < 1), 90 + 40 * np.sin(x / 9 + y / 13)],
        -1,
    )
    base[: 30 + 10 * seed] += 40  # a band whose height tells the images apart
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture
def celeba_root(tmp_path):
    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    for i, name in enumerate(PARTITION):
        _face(i).save(base / "img_align_celeba" / name, quality=95)
    lines = "".join(f"{name} {split}\n" for name, split in PARTITION.items())
    (base / "list_eval_partition.txt").write_text(lines)
    return tmp_path


def _paper(path) -> torch.Tensor:
    """What the paper's code (utils/data_utils.py) makes of a CelebA file: PIL images
    through torchvision's CenterCrop(148) and Resize(32) (bilinear), as uint8."""
    with Image.open(path) as img:
        return TF.pil_to_tensor(
            transforms.Compose([transforms.CenterCrop(148), transforms.Resize(32)])(
                img.convert("RGB")
            )
        )


def test_celeba_split_crop_and_resize_match_the_papers_code(celeba_root):
    preset = load_preset("celeba32", {"data_root": str(celeba_root)})
    assert preset.data.center_crop == 148 and preset.data.flip
    data = load_dataset(preset.data, preset.model)
    folder = celeba_root / "celeba/img_align_celeba"
    train = [n for n, s in PARTITION.items() if s == 0]
    test = [n for n, s in PARTITION.items() if s == 2]
    assert data.train.shape == (3, 3, 32, 32) and data.test.shape == (2, 3, 32, 32)
    assert data.train.dtype == torch.uint8
    expected_train = torch.stack([_paper(folder / n) for n in train])
    expected_test = torch.stack([_paper(folder / n) for n in test])
    for ours, paper in ((data.train, expected_train), (data.test, expected_test)):
        diff = (ours.int() - paper.int()).abs()
        # both resizes are bilinear with antialiasing (PIL's always is; ours asks for it);
        # they differ in rounding only: by at most one grey level, in 0.14% of the values
        # of such pictures with torchvision 0.29, 9% with 0.22 (the oldest we accept)
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.15
    # the images are the listed ones, in their order: each is much nearer its own file's
    # crop than any other's
    distance = (data.train.float()[:, None] - expected_train.float()[None]).abs().mean((2, 3, 4))
    assert torch.equal(distance.argmin(1), torch.arange(3))
    # a resize without antialiasing would be far off (mean 3.4 grey levels): the check can fail
    sharp = TF.resize(
        TF.center_crop(TF.pil_to_tensor(Image.open(folder / train[0])), [148, 148]),
        [32, 32],
        antialias=False,
    )
    assert (sharp.int() - expected_train[0].int()).abs().float().mean() > 1


def test_celeba_validation_images_are_not_used(celeba_root):
    # the validation split (1) is never read: a missing validation image does not matter
    (celeba_root / "celeba/img_align_celeba/000002.jpg").unlink()
    preset = load_preset("celeba32", {"data_root": str(celeba_root)})
    assert len(load_dataset(preset.data, preset.model).test) == 2


def _write_idx(path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: magic (0, 0, type 0x08 = uint8, dims), sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files_and_pads_to_32(tmp_path):
    raw = tmp_path / "MNIST/raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    for prefix, array in images.items():
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", array)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(len(array)) % 10)
    preset = load_preset("mnist32", {"data_root": str(tmp_path)})
    data = load_dataset(preset.data, preset.model)
    assert data.train.shape == (5, 1, 32, 32) and data.test.shape == (3, 1, 32, 32)
    for ours, written in ((data.train, images["train"]), (data.test, images["t10k"])):
        assert torch.equal(ours[:, 0, 2:30, 2:30], torch.from_numpy(written).to(torch.uint8))
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert int(ours[:, 0][:, border].max()) == 0  # padded with black, 2 pixels a side
