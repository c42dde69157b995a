"""`rgflow encode` and `rgflow decode`: images <-> latents files, losslessly."""

from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.io import echo_json, open_model
from rgflow_cli.options import (
    AllowLargeOpt,
    BatchOpt,
    CheckpointOpt,
    DeviceOpt,
    JsonOpt,
    NrowOpt,
    ResizeOpt,
)
from rgflow_cli.progress import progress_bar


def encode(
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGES...", help="Image files (PNG, JPEG, ...).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Latents file to write (safetensors).")
    ] = Path("latents.safetensors"),
    checkpoint: CheckpointOpt = None,
    resize: ResizeOpt = False,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Encode images to their latents z (full tensor + per-level views) and bits per dim.

    No dequantisation noise is added, so `rgflow decode` gives back the same pixels.
    """
    from rgflow_core.checks import check_int
    from rgflow_core.codec import MAX_IMAGES, encode_images
    from rgflow_core.files import check_outputs
    from rgflow_core.images import read_images
    from rgflow_core.latents import save_latents

    check_int("images", len(images), 1, MAX_IMAGES)
    model, _, path = open_model(checkpoint, device, allow_large)
    check_outputs([output], [path, *images])
    cfg = model.config
    x = read_images(images, cfg.channels, cfg.image_size, resize)
    with progress_bar("encoding", len(x)) as advance:
        z, bpd = encode_images(model, x, batch_size, advance)
    names = [str(p) for p in images]
    written = save_latents(output, model, z, bpd, names)
    if as_json:
        rows = [{"image": n, "bpd": float(b)} for n, b in zip(names, bpd)]
        echo_json({"latents": str(written), "images": rows})
        return
    for name, b in zip(names, bpd):
        typer.echo(f"{float(b):8.4f} bpd  {name}")
    typer.echo(f"wrote {written} ({len(x)} image{'s' if len(x) != 1 else ''})")


def decode(
    latents: Annotated[
        Path, typer.Argument(metavar="LATENTS", help="Latents file written by `rgflow encode`.")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG: the image, or a grid of several."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write one PNG per image here.")
    ] = None,
    nrow: NrowOpt = 8,
    checkpoint: CheckpointOpt = None,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    allow_large: AllowLargeOpt = False,
) -> None:
    """Decode a latents file back to images (exactly the encoded pixels)."""
    from rgflow_core.codec import decode_images
    from rgflow_core.files import check_outputs
    from rgflow_core.images import write_grid, write_image
    from rgflow_core.latents import check_latents_match, load_latents

    single = output if output is not None or out_dir is None else None
    single = single or (Path("decoded.png") if out_dir is None else None)
    data = load_latents(latents)
    model, _, path = open_model(checkpoint, device, allow_large)
    check_outputs([single], [path, latents], folders=[out_dir])
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
    if single is not None:
        written = (
            write_image(images[0], single) if len(images) == 1 else write_grid(images, single, nrow)
        )
        typer.echo(f"wrote {written}")
