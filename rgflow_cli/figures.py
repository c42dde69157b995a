"""Figures the exploring commands write: labelled image panels, heat maps and GIFs (PIL)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from rgflow_core.checkpoint import atomic_write_bytes
from rgflow_core.images import to_pil

GAP = 4  # pixels between panel cells
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def zoomed(image: Tensor, zoom: int) -> Image.Image:
    """One uint8 image (C, H, W) as an RGB PIL image, enlarged `zoom` times (nearest)."""
    pil = to_pil(image).convert("RGB")
    if zoom > 1:
        pil = pil.resize((pil.width * zoom, pil.height * zoom), Image.Resampling.NEAREST)
    return pil


def heat(values: Tensor) -> Tensor:
    """(H, W) non-negative values -> uint8 RGB (3, H, W), black-red-yellow-white by v / max."""
    peak = values.max()
    v = values / peak if peak > 0 else torch.zeros_like(values)
    rgb = torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)])
    return (rgb * 255).round().to(torch.uint8)


def panel(
    cells: Sequence[Sequence[Tensor]],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    zoom: int = 1,
) -> Image.Image:
    """A grid of images with optional labels left of each row and above each column.

    Arguments:
        cells: rows of uint8 images (C, H, W), all of one size.
    """
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    tiles = [[zoomed(c, zoom) for c in row] for row in cells]
    w, h = tiles[0][0].size
    cols = max(len(row) for row in tiles)
    left = max((text_size(t)[0] for t in row_labels), default=0)
    left = left + 2 * GAP if left else GAP
    top = max((text_size(t)[1] for t in col_labels), default=0)
    top = top + 2 * GAP if top else GAP
    width = left + cols * (w + GAP)
    height = top + len(tiles) * (h + GAP)
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for c, label in enumerate(col_labels):
        tw, _ = text_size(label)
        draw.text((left + c * (w + GAP) + (w - tw) // 2, GAP), label, fill=INK, font=font)
    for r, row in enumerate(tiles):
        y = top + r * (h + GAP)
        if r < len(row_labels):
            _, th = text_size(row_labels[r])
            draw.text((GAP, y + (h - th) // 2), row_labels[r], fill=INK, font=font)
        for c, tile in enumerate(row):
            out.paste(tile, (left + c * (w + GAP), y))
    return out


def write_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PIL image as PNG (atomically); return the path."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_gif(frames: Sequence[Image.Image], path: str | Path, fps: float = 10.0) -> Path:
    """Write frames as a looping animated GIF (atomically); return the path."""
    buf = io.BytesIO()
    first, *rest = frames
    first.save(
        buf,
        format="GIF",
        save_all=True,
        append_images=rest,
        duration=max(20, round(1000 / fps)),
        loop=0,
        disposal=1,
    )
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
