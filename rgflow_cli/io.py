"""What the commands read and write: the checkpoint to use, image folders, and output
files (PNG figures and animated GIFs), every write atomic.

Heavy modules (torch, the model) are imported inside the functions that need them.
"""

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from rgflow_core.errors import DataError

if TYPE_CHECKING:
    import torch

    from rgflow_core.flow import RGFlow

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_FOLDER_IMAGES = 100_000


def resolve_checkpoint(checkpoint: Path | None, runs_dir: Path = Path("runs")) -> Path:
    """The checkpoint to use: the given one, $RGFLOW_CHECKPOINT, or the newest run's last;
    a short name that is not a file means the built-in model of that name."""
    from rgflow_core.builtin import resolve_model
    from rgflow_core.run import find_latest_checkpoint

    if checkpoint is not None:
        return resolve_model(checkpoint)
    env = os.environ.get("RGFLOW_CHECKPOINT")
    if env:
        return resolve_model(env)
    path = find_latest_checkpoint(runs_dir)
    typer.echo(f"using checkpoint {path}", err=True)
    return path


def open_model(
    checkpoint: Path | None, device: str, allow_large: bool = False
) -> tuple["RGFlow", "torch.device", Path]:
    """Load the model a command works with, in eval mode on the resolved device; return it,
    the device and the checkpoint's path."""
    from rgflow_core.checkpoint import load_model
    from rgflow_core.device import resolve_device

    dev = resolve_device(device)
    path = resolve_checkpoint(checkpoint)
    model = load_model(path, device=dev, allow_large=allow_large)
    model.eval()
    return model, dev, path


def msds_data(checkpoint: Path, data_root: Path | None, dataset: str | None) -> tuple[Path, str]:
    """The MSDS set (data root, name) a command reads for the model at `checkpoint`: the
    flags when given, else the model's own data, else data/, else a cached set generated
    once (said on stderr). See `rgflow_core.builtin.msds_for`."""
    from rgflow_core.builtin import msds_for

    return msds_for(checkpoint, data_root, dataset, notify=lambda t: typer.echo(t, err=True))


def folder_images(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files under a folder, sorted, at most `limit` of them."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths[: min(limit or MAX_FOLDER_IMAGES, MAX_FOLDER_IMAGES)]


def echo_json(value: Any) -> None:
    """Print one strict JSON object (NaN and infinities as null) on stdout."""
    from rgflow_core.files import strict_json

    typer.echo(strict_json(value))


def write_bytes(data: bytes, path: Path) -> Path:
    """Write a file atomically and return its path."""
    from rgflow_core.files import atomic_write_bytes

    return atomic_write_bytes(path, data)


def zoomed(image: "torch.Tensor", zoom: int) -> "torch.Tensor":
    """One uint8 image (C, H, W) with every pixel a `zoom` x `zoom` square."""
    return image.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)


def write_gif(frames: Sequence["torch.Tensor"], path: Path, fps: float = 10.0) -> Path:
    """Write uint8 frames (C, H, W) as a looping animated GIF (atomically)."""
    from rgflow_core.images import to_pil

    buf = io.BytesIO()
    first, *rest = [to_pil(f).convert("RGB") for f in frames]
    first.save(
        buf,
        format="GIF",
        save_all=True,
        append_images=rest,
        duration=max(20, round(1000 / fps)),
        loop=0,
        disposal=1,
    )
    return write_bytes(buf.getvalue(), path)
