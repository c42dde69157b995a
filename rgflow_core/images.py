"""Reading and writing images: model-shaped uint8 tensors in, PNG files and grids out.

Nothing here imports the model. Image files are checked before they are decoded: their
size (a crafted file may claim billions of pixels), their mode (a 16-bit image is not
silently clipped to 8 bits) and their shape against the model's.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import functional as TF
from torchvision.utils import make_grid, save_image

from rgflow_core.errors import DataError
from rgflow_core.files import atomic_write_bytes, missing_file_reason

MODES = {1: "L", 3: "RGB"}
MAX_PIXELS = 64 * 2**20  # larger images are refused before they are decoded
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # more than 8 bits per pixel


def open_image(path: str | Path) -> Image.Image:
    """Open and decode an image file, with one clear error for every way it can fail."""
    path = Path(path)
    reason = missing_file_reason(path)
    if reason is not None:
        raise DataError(f"image {path} {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise DataError(
                    f"{path} is {img.width}x{img.height} pixels, more than this tool reads "
                    f"({MAX_PIXELS // 2**20} megapixels)"
                )
            img.load()
    except FileNotFoundError as err:
        raise DataError(f"image {path} does not exist") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{path} is too large to decode safely") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path} is not a readable image") from err
    return img


def read_image(path: str | Path, channels: int, size: int, resize: bool = False) -> Tensor:
    """One image file as uint8 (C, L, L).

    An image of another size or mode than (channels, size) is an error unless
    `resize`, which converts the mode (16-bit values scaled to 8 bits),
    centre-crops to a square and resizes.
    """
    img = open_image(path)
    want = MODES[channels]
    if not resize:
        if img.size != (size, size):
            raise DataError(
                f"{path} is {img.size[0]}x{img.size[1]}, the model takes {size}x{size} "
                "(pass {resize} to crop and resize it)"
            )
        if img.mode != want and not _same(img, want):
            raise DataError(
                f"{path} has mode {img.mode}, the model takes {want} "
                f"({channels} channel{'s' if channels > 1 else ''}; pass {{resize}} to convert)"
            )
    x = TF.pil_to_tensor(to_8bit(img).convert(want))
    if resize:
        x = TF.center_crop(x, [min(x.shape[1:])])
        x = TF.resize(x, [size, size], antialias=True)
    return x


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit or float image scaled to 8-bit grey (PIL's convert would clip at 255)."""
    if img.mode not in _WIDE_MODES:
        return img
    values = np.asarray(img, dtype=np.float64)
    top = 1.0 if img.mode == "F" else 65535.0
    return Image.fromarray(np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8))


def _same(img: Image.Image, want: str) -> bool:
    """Whether a palette or alpha image holds exactly `want` content: opaque, and for a
    grey model with equal colour channels."""
    if img.mode not in ("RGBA", "P", "LA"):
        return False
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema() != (255, 255):
        return False
    if want == "RGB":
        return True
    r, g, b = img.convert("RGB").split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def read_images(
    paths: Sequence[str | Path], channels: int, size: int, resize: bool = False
) -> Tensor:
    """Several image files as uint8 (B, C, L, L)."""
    if not paths:
        raise DataError("no image files given")
    return torch.stack([read_image(p, channels, size, resize) for p in paths])


def read_mask(path: str | Path, size: int, image_size: tuple[int, int] | None = None) -> Tensor:
    """A mask file as an (L, L) bool tensor, True where pixels are missing (>= 128).

    Arguments:
        size: the model's L: the mask is centre-cropped and resized (nearest) to it.
        image_size: (width, height) of the image the mask belongs to; a mask of another
            size is an error.
    """
    img = open_image(path)
    if image_size is not None and img.size != tuple(image_size):
        raise DataError(
            f"mask {path} is {img.size[0]}x{img.size[1]} but the image is "
            f"{image_size[0]}x{image_size[1]}; the mask must have the image's size"
        )
    mask = TF.pil_to_tensor(to_8bit(img).convert("L"))  # (1, H, W)
    if mask.shape[1:] != (size, size):
        mask = TF.center_crop(mask, [min(mask.shape[1:])])
        mask = TF.resize(mask, [size, size], interpolation=TF.InterpolationMode.NEAREST)
    return mask[0] >= 128


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file."""
    return open_image(path).size


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
    return atomic_write_bytes(path, buf.getvalue())


def write_grid(images: Tensor, path: str | Path, nrow: int = 8, zoom: int = 1) -> Path:
    """Write a batch of images (B, C, H, W; uint8 or [0, 1]) as one PNG grid (atomically),
    each pixel enlarged to a `zoom` x `zoom` square; return the path."""
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if zoom > 1:
        images = images.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    buf = io.BytesIO()
    # white lines between the images: many datasets (MSDS among them) have black borders
    save_image(images, buf, format="PNG", nrow=nrow, padding=2 * zoom, pad_value=1.0)
    return atomic_write_bytes(path, buf.getvalue())


def image_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """(B, C, H, W) uint8 or [0, 1] float -> one uint8 (C, H', W') grid image."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    grid = make_grid(images.detach().cpu(), nrow=nrow, padding=2)
    if images.shape[1] == 1:
        grid = grid[:1]
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8)
