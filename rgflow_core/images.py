"""Reading and writing images: model-shaped uint8 tensors in, PNG files and grids out."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize
from torchvision.utils import make_grid

from rgflow_core.checkpoint import atomic_write_bytes
from rgflow_core.errors import DataError

MODES = {1: "L", 3: "RGB"}


def read_image(path: str | Path, channels: int, size: int, resize_to_fit: bool = False) -> Tensor:
    """One image file as uint8 (C, L, L).

    An image of another size or mode than (channels, size) is an error unless
    `resize_to_fit`, which converts the mode, centre-crops to a square and resizes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image") from err
    want = MODES[channels]
    if not resize_to_fit:
        if img.size != (size, size):
            raise DataError(
                f"{path} is {img.size[0]}x{img.size[1]}, the model takes {size}x{size} "
                "(pass --resize to crop and resize it)"
            )
        if img.mode != want and not (img.mode in ("RGBA", "P", "LA", "I;16") and _same(img, want)):
            raise DataError(
                f"{path} has mode {img.mode}, the model takes {want} "
                f"({channels} channel{'s' if channels > 1 else ''}; pass --resize to convert)"
            )
    x = pil_to_tensor(img.convert(want))
    if resize_to_fit:
        x = center_crop(x, [min(x.shape[1:])])
        x = resize(x, [size, size], antialias=True)
    return x


def _same(img: Image.Image, want: str) -> bool:
    """Whether a palette/alpha image is really of mode `want` (e.g. an RGBA PNG, opaque)."""
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema() != (255, 255):
        return False
    converted = img.convert("RGB")
    if want == "RGB":
        return True
    r, g, b = converted.split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def read_images(
    paths: Sequence[str | Path], channels: int, size: int, resize_to_fit: bool = False
) -> Tensor:
    """Several image files as uint8 (B, C, L, L)."""
    return torch.stack([read_image(p, channels, size, resize_to_fit) for p in paths])


def to_pil(image: Tensor) -> Image.Image:
    """uint8 (C, H, W) or float in [0, 1] -> PIL image (L or RGB)."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def write_image(image: Tensor, path: str | Path) -> Path:
    """Write one image (C, H, W) as PNG (atomically); return the path."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> Tensor:
    """(B, C, H, W) uint8 or [0, 1] float -> one uint8 (C, H', W') grid image."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    grid = make_grid(images.detach().cpu(), nrow=nrow, padding=padding, pad_value=pad_value)
    if images.shape[1] == 1:
        grid = grid[:1]
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8)


def write_grid(images: Tensor, path: str | Path, nrow: int = 8, zoom: int = 1) -> Path:
    """Write a batch of images as one PNG grid (atomically), each pixel enlarged to a
    `zoom` x `zoom` square; return the path."""
    grid = image_grid(images, nrow=nrow)
    if zoom > 1:
        grid = grid.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)
    return write_image(grid, path)
