"""`rgflow sample`: draw images from a trained model, as a grid or one PNG each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from rgflow_cli.common import CheckpointOpt, DeviceOpt, SeedOpt, open_model
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import UsageError
from rgflow_core.explore import check_level, sample_images
from rgflow_core.images import write_grid, write_image

TemperatureOpt = Annotated[
    float, typer.Option("--temperature", "-t", help="Prior temperature (> 0; 1 = the model).")
]


def check_temperature(value: float, name: str = "--temperature") -> float:
    """`value` if it is a usable temperature, else a UsageError."""
    if not value > 0:
        raise UsageError(f"{name} must be > 0, got {value}")
    return value


def parse_level_temperatures(text: str) -> dict[int, float]:
    """'0=0.2,1=0.8' -> {0: 0.2, 1: 0.8}."""
    out: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        level, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            h, t = int(level), float(value)
        except ValueError:
            raise UsageError(
                f"--level-temperature: cannot read {item!r}; write LEVEL=T pairs like 0=0.2,1=0.8"
            ) from None
        out[h] = check_temperature(t, f"--level-temperature {h}")
    if not out:
        raise UsageError("--level-temperature is empty; write LEVEL=T pairs like 0=0.2,1=0.8")
    return out


def sample(
    checkpoint: CheckpointOpt = None,
    num: Annotated[int, typer.Option("-n", "--num", help="Number of samples.")] = 64,
    temperature: TemperatureOpt = 1.0,
    level_temperature: Annotated[
        str | None,
        typer.Option(
            "--level-temperature",
            help="Per-level temperatures LEVEL=T,...; unnamed levels take the nearest named "
            "level below (or --temperature).",
        ),
    ] = None,
    nrow: Annotated[int, typer.Option("--nrow", help="Images per row of the grid.")] = 8,
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge the grid this many times.")] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Grid PNG (default samples.png).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write one PNG per sample here instead.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per batch.")] = 256,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Sample images from the model (z ~ prior at a temperature, decoded)."""
    if num < 1:
        raise UsageError(f"-n must be >= 1, got {num}")
    if nrow < 1 or batch_size < 1 or zoom < 1:
        raise UsageError("--nrow, --batch-size and --zoom must be >= 1")
    check_temperature(temperature)
    levels = parse_level_temperatures(level_temperature) if level_temperature else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} is a file; give a folder")
    model, dev = open_model(checkpoint, device)
    temp: float | torch.Tensor = temperature
    if levels is not None:
        for h in levels:
            check_level(model, h, "--level-temperature level")
        temp = model.temperature_map(levels, default=temperature)
    generator = torch.Generator(device=dev).manual_seed(seed)
    with progress_bar("sampling", num) as advance:
        images = sample_images(model, num, temp, generator, batch_size, advance)
    if out_dir is not None:
        width = max(4, len(str(num - 1)))
        for i, image in enumerate(images):
            write_image(image, out_dir / f"sample_{i:0{width}d}.png")
        typer.echo(f"wrote {num} samples to {out_dir}")
    if output is not None or out_dir is None:
        path = write_grid(images, output or Path("samples.png"), nrow=nrow, zoom=zoom)
        typer.echo(f"wrote {path}")
