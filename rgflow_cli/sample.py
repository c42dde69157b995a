"""`rgflow sample`: draw images from a trained model, as a grid or one PNG each."""

from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.io import open_model
from rgflow_cli.options import (
    AllowLargeOpt,
    BatchOpt,
    CheckpointOpt,
    DeviceOpt,
    NrowOpt,
    SeedOpt,
    TemperatureOpt,
    ZoomOpt,
)
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import UsageError


def parse_level_temperatures(text: str) -> dict[int, float]:
    """'0=0.2,1=0.8' -> {0: 0.2, 1: 0.8} (values checked by the core)."""
    out: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        level, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[int(level)] = float(value)
        except ValueError:
            raise UsageError(
                f"cannot read {item!r}; write LEVEL=T pairs like 0=0.2,1=0.8", "level_temperature"
            ) from None
    if not out:
        raise UsageError("is empty; write LEVEL=T pairs like 0=0.2,1=0.8", "level_temperature")
    return out


def sample(
    checkpoint: CheckpointOpt = None,
    n: Annotated[int, typer.Option("-n", "--num", help="Number of samples.")] = 64,
    temperature: TemperatureOpt = 1.0,
    level_temperature: Annotated[
        str | None,
        typer.Option(
            "--level-temperature",
            help="Per-level temperatures LEVEL=T,...; unnamed levels take the nearest named "
            "level below (or --temperature).",
        ),
    ] = None,
    nrow: NrowOpt = 8,
    zoom: ZoomOpt = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Grid PNG (default samples.png).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write one PNG per sample here instead.")
    ] = None,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    allow_large: AllowLargeOpt = False,
) -> None:
    """Sample images from the model (z ~ prior at a temperature, decoded)."""
    import torch

    from rgflow_core.codec import check_sampling, sample_images
    from rgflow_core.files import check_outputs
    from rgflow_core.images import write_grid, write_image

    grid = output if output is not None or out_dir is None else Path("samples.png")
    levels = parse_level_temperatures(level_temperature) if level_temperature else None
    model, dev, path = open_model(checkpoint, device, allow_large)
    check_outputs([grid], [path], folders=[out_dir])
    check_sampling(model, n, batch_size, temperature, levels, allow_large=allow_large)
    temp = model.temperature_map(levels, default=temperature) if levels else temperature
    generator = torch.Generator().manual_seed(seed)  # CPU: a seed means one draw everywhere
    with progress_bar("sampling", n) as advance:
        images = sample_images(model, n, temp, generator, batch_size, advance)
    if out_dir is not None:
        width = max(4, len(str(n - 1)))
        for i, image in enumerate(images):
            write_image(image, out_dir / f"sample_{i:0{width}d}.png")
        typer.echo(f"wrote {n} samples to {out_dir}")
    if grid is not None:
        typer.echo(f"wrote {write_grid(images, grid, nrow=nrow, zoom=zoom)}")
