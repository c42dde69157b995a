"""Datasets on disk -> uint8 image tensors in memory, and the batches a training step eats.

Every dataset is decoded once (in parallel) into a uint8 tensor (N, C, L, L): at 32x32 a
split of 200,000 RGB images is 600 MB, and a small model on a 2-core CPU would otherwise
spend its time decoding PNGs. Random horizontal flips and dequantisation noise are applied
per batch. Nothing is ever downloaded: a missing dataset is a `DataError` that names the
files expected and where.

Layouts under the data root (torchvision's where it has one):

* msds1, msds2: `ROOT/msds1/{train,test}/*.png` + `labels.npz`; generated on first use
  by training (never by evaluation).
* mnist32: `ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` (padded to 32).
* cifar10: `ROOT/cifar-10-batches-py/` (the python version of CIFAR-10).
* celeba32: `ROOT/celeba/img_align_celeba/*.jpg` + `ROOT/celeba/list_eval_partition.txt`
  (the official split; centre crop 148, resize 32).
* chair600: any tree of images under `ROOT/chair600/` (seeded split).
* folder: `ROOT` itself, with `train/` and `test/` subfolders or a seeded split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from rgflow_core.config import DATASETS, DataConfig, ModelConfig
from rgflow_core.errors import DataError
from rgflow_core.images import open_image, to_8bit
from rgflow_core.msds import MSDS_NAMES, msds_complete, read_msds, write_msds

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class ImageData:
    """The train and test splits of a dataset as uint8 (N, C, L, L) tensors."""

    name: str
    train: Tensor
    test: Tensor
    source: Path

    def describe(self) -> str:
        n_train, n_test = len(self.train), len(self.test)
        return f"{self.name}: {n_train} train + {n_test} test images from {self.source}"


def load_dataset(
    data: DataConfig,
    model: ModelConfig,
    progress: ProgressFn | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    generate: bool = True,
) -> ImageData:
    """Load a dataset as in-memory uint8 tensors.

    Only the `splits` asked for are decoded; the others are empty tensors. A missing MSDS
    set is generated when `generate` is True (training), and is an error otherwise.
    """
    if data.dataset not in DATASETS:
        raise DataError(f"unknown dataset {data.dataset!r}; choose one of {', '.join(DATASETS)}")
    root = Path(data.data_root)
    if data.dataset in MSDS_NAMES:
        readers, source = _load_msds(root, data, progress, generate)
    else:
        loader = {
            "mnist32": _load_mnist,
            "cifar10": _load_cifar10,
            "celeba32": _load_celeba,
            "chair600": _load_chair600,
            "folder": _load_folder,
        }[data.dataset]
        readers, source = loader(root, data, model, progress)
    want = (model.channels, model.image_size, model.image_size)
    loaded = {}
    for split in ("train", "test"):
        images = readers[split]() if split in splits else torch.empty(0, *want, dtype=torch.uint8)
        if tuple(images.shape[1:]) != want:
            raise DataError(
                f"{data.dataset} {split} images are {tuple(images.shape[1:])} (C, H, W) but the "
                f"model takes {want}; set image_size/channels to match"
            )
        loaded[split] = images.contiguous()
    if "train" in splits and len(loaded["train"]) == 0:
        raise DataError(f"{data.dataset}: no training images in {source}")
    return ImageData(data.dataset, loaded["train"], loaded["test"], source)


# --- the datasets -----------------------------------------------------------------------


def read_msds_images(
    root: str | Path, name: str, split: str, limit: int | None = None, workers: int = 0
) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """One MSDS split as uint8 images (N, 3, 32, 32), labels (N, 16, 6) and global factor
    (see `rgflow_core.msds.read_msds`), optionally only the first `limit` images."""
    images, labels, factor = read_msds(root, name, split, workers, limit)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, factor


def _load_msds(root: Path, data: DataConfig, progress: ProgressFn | None, generate: bool):
    name = data.dataset
    if not msds_complete(root, name) and not generate:
        raise DataError(
            f"no complete {name} set in {root / name}; point to it with {{data_root}}, or "
            f"generate it (the make-msds command) into {root}"
        )
    if not msds_complete(root, name):
        total = data.train_size + data.test_size
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(f"generating {name} in {root / name}", done, total)

        write_msds(root, name, data.train_size, data.test_size, seed=0, progress=advance)

    def reader(split: str) -> Callable[[], Tensor]:
        def read() -> Tensor:
            if progress:
                progress(f"reading {name} {split}", 0, 1)
            return read_msds_images(root, name, split)[0]

        return read

    return {split: reader(split) for split in ("train", "test")}, root / name


def _load_mnist(root: Path, data: DataConfig, model: ModelConfig, progress):
    from torchvision.datasets import MNIST

    missing = (
        "MNIST not found: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte in {root / 'MNIST' / 'raw'}/ "
        "(torchvision's layout)"
    )
    pad = lambda ds: F.pad(ds.data.unsqueeze(1), (2, 2, 2, 2))  # noqa: E731 - 28 -> 32
    return _torchvision_splits(MNIST, root, missing, pad), root / "MNIST"


def _load_cifar10(root: Path, data: DataConfig, model: ModelConfig, progress):
    from torchvision.datasets import CIFAR10

    source = root / "cifar-10-batches-py"
    missing = (
        "CIFAR-10 not found or incomplete: put the python version (data_batch_1 .. "
        f"data_batch_5, test_batch, batches.meta) in {source}/ (torchvision's layout)"
    )
    channels_first = lambda ds: torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # noqa: E731
    return _torchvision_splits(CIFAR10, root, missing, channels_first), source


def _torchvision_splits(dataset_class, root: Path, missing: str, to_images) -> dict:
    """Readers of the train and test splits of a torchvision dataset class, never
    downloading: a missing dataset is a DataError saying `missing`."""

    def read(train: bool) -> Tensor:
        try:
            ds = dataset_class(str(root), train=train, download=False)
        except RuntimeError as err:
            raise DataError(missing) from err
        return to_images(ds)

    return {"train": lambda: read(True), "test": lambda: read(False)}


def _load_celeba(root: Path, data: DataConfig, model: ModelConfig, progress):
    base = root / "celeba"
    images_dir = base / "img_align_celeba"
    partition = base / "list_eval_partition.txt"
    expected = (
        f"CelebA not found: put the aligned images in {images_dir}/ (000001.jpg ...) and the "
        f"official split file in {partition} (torchvision's layout); or use any folder of "
        "face images with the preset key dataset: folder and {data_root}"
    )
    if not images_dir.is_dir() or not partition.is_file():
        raise DataError(expected)
    names: dict[int, list[Path]] = {0: [], 1: [], 2: []}
    for number, line in enumerate(partition.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{partition}:{number}: expected '<file> <0|1|2>', got {line!r}")
        names[int(parts[1])].append(images_dir / parts[0])
    missing = [p for p in names[0][:1] + names[2][:1] if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]} is listed in {partition} but missing; {expected}")
    # official split: 0 train, 1 validation, 2 test
    return {
        "train": lambda: _decode_files(names[0], data, model, progress, "decoding CelebA train"),
        "test": lambda: _decode_files(names[2], data, model, progress, "decoding CelebA test"),
    }, base


def _load_chair600(root: Path, data: DataConfig, model: ModelConfig, progress):
    folder = root / "chair600"
    if not folder.is_dir():
        raise DataError(
            f"3D chairs not found: put the rendered chair images (any tree of PNG/JPEG "
            f"files) under {folder}/"
        )
    return _split_folder(folder, data, model, progress), folder


def _load_folder(root: Path, data: DataConfig, model: ModelConfig, progress):
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (set it with {{data_root}})")
    if (root / "train").is_dir() and (root / "test").is_dir():

        def read(split: str) -> Tensor:
            files = _image_files(root / split)
            return _decode_files(files, data, model, progress, f"decoding {split}")

        return {"train": lambda: read("train"), "test": lambda: read("test")}, root
    return _split_folder(root, data, model, progress), root


def _split_folder(folder: Path, data: DataConfig, model: ModelConfig, progress):
    """A folder without its own split: a seeded permutation, `test_fraction` held out."""
    files = _image_files(folder)
    n_test = int(len(files) * data.test_fraction)
    if len(files) - n_test < 1:
        raise DataError(f"{folder} holds {len(files)} images: too few to train on")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(data.split_seed))
    test_files = [files[i] for i in order[:n_test]]
    train_files = [files[i] for i in order[n_test:]]
    return {
        "train": lambda: _decode_files(train_files, data, model, progress, "decoding train"),
        "test": lambda: _decode_files(test_files, data, model, progress, "decoding test"),
    }


def _image_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise DataError(
            f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)"
        )
    return files


# --- decoding ---------------------------------------------------------------------------


class _Files(Dataset):
    """Decode, centre-crop and resize one image file per item (run in DataLoader workers).

    A file that cannot be used gives its error message (a str) instead of a tensor, so
    that the main process reports it in one line rather than a worker's traceback.
    """

    def __init__(self, files: list[Path], channels: int, size: int, crop: int) -> None:
        self.files = files
        self.mode = "RGB" if channels == 3 else "L"
        self.size = size
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor | str:
        try:
            return self._decode(self.files[index])
        except DataError as err:
            return str(err)

    def _decode(self, path: Path) -> Tensor:
        image = TF.pil_to_tensor(to_8bit(open_image(path)).convert(self.mode))
        h, w = image.shape[1:]
        if self.crop:
            if min(h, w) < self.crop:
                raise DataError(f"{path} is {w}x{h}, smaller than center_crop={self.crop}")
            image = TF.center_crop(image, [self.crop, self.crop])
            image = TF.resize(image, [self.size, self.size], antialias=True)
        elif (h, w) != (self.size, self.size):
            raise DataError(
                f"{path} is {w}x{h} but the model takes {self.size}x{self.size}; resize the "
                f"images or set the preset key center_crop (e.g. to {min(h, w)}) to crop and "
                "resize them"
            )
        return image


def _decode_files(
    files: list[Path], data: DataConfig, model: ModelConfig, progress, what: str
) -> Tensor:
    if not files:
        return torch.empty(0, model.channels, model.image_size, model.image_size, dtype=torch.uint8)
    dataset = _Files(files, model.channels, model.image_size, data.center_crop)
    workers = min(os.cpu_count() or 1, 16) if len(files) > 2000 else 0
    loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=list)
    out = torch.empty(
        len(files), model.channels, model.image_size, model.image_size, dtype=torch.uint8
    )
    done = 0
    for batch in loader:
        for item in batch:
            if isinstance(item, str):
                raise DataError(item)
            out[done] = item
            done += 1
        if progress:
            progress(what, done, len(files))
    return out


# --- batches ----------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders (and flips) epoch `epoch`: a function of seed and epoch only,
    so that a resumed run sees exactly the batches an uninterrupted one would."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    )


def train_batches(
    images: Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
    flip: bool = False,
    start: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Tensor]:
    """Shuffled global batches of one epoch (the last, incomplete one dropped), from batch
    `start` on; with `world` > 1, this rank's share (every world-th image) of each."""
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(len(images), generator=gen)
    flips = torch.rand(len(images), generator=gen) < 0.5 if flip else None
    for b in range(start, len(images) // batch_size):
        index = order[b * batch_size : (b + 1) * batch_size][rank::world]
        batch = images[index]
        if flips is not None:
            f = flips[index]
            batch[f] = batch[f].flip(-1)
        yield batch
