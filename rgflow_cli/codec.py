"""`rgflow encode` and `rgflow decode`: images <-> latents files, losslessly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from rgflow_cli.common import CheckpointOpt, DeviceOpt, ResizeOpt, SeedOpt, open_model
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import UsageError
from rgflow_core.explore import decode_images, encode_images
from rgflow_core.images import read_images, write_grid, write_image
from rgflow_core.latents import check_latents_match, load_latents, save_latents

BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]


def encode(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Latents file to write (safetensors).")
    ] = Path("latents.safetensors"),
    checkpoint: CheckpointOpt = None,
    resize: ResizeOpt = False,
    batch_size: BatchOpt = 256,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the bpd of each image as JSON.")
    ] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Encode images to their latents z (full tensor + per-level views) and bits per dim.

    No dequantisation noise is added, so `rgflow decode` gives back the same pixels.
    """
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    torch.manual_seed(seed)
    model, _ = open_model(checkpoint, device)
    cfg = model.config
    x = read_images(images, cfg.channels, cfg.image_size, resize_to_fit=resize)
    with progress_bar("encoding", len(x)) as advance:
        z, bpd = encode_images(model, x, batch_size, advance)
    names = [str(p) for p in images]
    path = save_latents(output, model, z, bpd, names)
    if as_json:
        rows = [{"image": n, "bpd": float(b)} for n, b in zip(names, bpd)]
        typer.echo(json.dumps({"latents": str(path), "images": rows}))
        return
    for name, b in zip(names, bpd):
        typer.echo(f"{float(b):8.4f} bpd  {name}")
    typer.echo(f"wrote {path} ({len(x)} image{'s' if len(x) != 1 else ''})")


def decode(
    latents: Annotated[Path, typer.Argument(help="Latents file written by `rgflow encode`.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG: the image, or a grid of several."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write one PNG per image here.")
    ] = None,
    nrow: Annotated[int, typer.Option("--nrow", help="Images per row of the grid.")] = 8,
    checkpoint: CheckpointOpt = None,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Decode a latents file back to images (exactly the encoded pixels)."""
    if nrow < 1 or batch_size < 1:
        raise UsageError("--nrow and --batch-size must be >= 1")
    torch.manual_seed(seed)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} is a file; give a folder")
    data = load_latents(latents)
    model, _ = open_model(checkpoint, device)
    if not check_latents_match(data, model, latents):
        typer.echo(
            f"warning: {latents} was encoded by a model with the same architecture but other "
            "weights; the images will differ from the encoded ones",
            err=True,
        )
    with progress_bar("decoding", len(data.z)) as advance:
        images = decode_images(model, data.z, batch_size, advance)
    if out_dir is not None:
        used: set[str] = set()
        for i, (name, image) in enumerate(zip(data.names, images)):
            stem = Path(name).stem or f"{i:04d}"
            if stem in used:
                stem = f"{stem}_{i:04d}"
            used.add(stem)
            write_image(image, out_dir / f"{stem}.png")
        typer.echo(f"wrote {len(images)} images to {out_dir}")
    if output is not None or out_dir is None:
        output = output or Path("decoded.png")
        path = (
            write_image(images[0], output) if len(images) == 1 else write_grid(images, output, nrow)
        )
        typer.echo(f"wrote {path}")
