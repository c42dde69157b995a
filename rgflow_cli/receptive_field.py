"""`rgflow receptive-field`: where each level's latents act in the image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from rgflow_cli.common import CheckpointOpt, DeviceOpt, SeedOpt, open_model
from rgflow_cli.figures import heat, panel, write_png
from rgflow_cli.progress import progress_bar
from rgflow_cli.sample import TemperatureOpt, check_temperature
from rgflow_core.errors import UsageError
from rgflow_core.explore import check_level, receptive_field, representative_positions, rf_extent


def parse_levels(text: str, levels: int) -> list[int]:
    """'all' or 'h,h,...' -> sorted distinct levels, each checked against the model."""
    if text.strip() == "all":
        return list(range(levels))
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--levels must be 'all' or levels like 0,2; got {text!r}") from None
    if not chosen:
        raise UsageError("--levels is empty; give 'all' or levels like 0,2")
    for h in chosen:
        if not 0 <= h < levels:
            raise UsageError(f"level {h} is out of range: this model has levels 0..{levels - 1}")
    return chosen


def receptive_field_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure (PNG).")] = Path("rf.png"),
    samples: Annotated[
        int, typer.Option("--samples", help="Prior samples in the expectation.")
    ] = 16,
    levels: Annotated[str, typer.Option("--levels", help="'all' or levels like 0,2.")] = "all",
    per_level: Annotated[
        int, typer.Option("--per-level", help="Latent positions shown per level.")
    ] = 4,
    temperature: TemperatureOpt = 1.0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Extent: pixels where RF > this * max RF.")
    ] = 0.01,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each shown latent's level, position, extent.")
    ] = False,
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge figure cells.")] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="JVPs per batch.")] = 64,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Receptive fields RF_l = E_z |dG(z)/dz_l| of latents at representative positions.

    One figure row per level; each cell is the RF of one latent (summed over channels),
    scaled to its own maximum.
    """
    if samples < 1 or per_level < 1 or batch_size < 1 or zoom < 1:
        raise UsageError("--samples, --per-level, --batch-size and --zoom must be >= 1")
    if not 0 <= threshold < 1:
        raise UsageError(f"--threshold must be in [0, 1), got {threshold}")
    check_temperature(temperature)
    model, dev = open_model(checkpoint, device)
    chosen = parse_levels(levels, model.config.levels)
    rows = [
        representative_positions(model.level_map, check_level(model, h), per_level) for h in chosen
    ]
    positions = torch.cat(rows)
    generator = torch.Generator(device=dev).manual_seed(seed)
    total = samples * len(positions) * model.config.channels
    with progress_bar("receptive fields", total) as advance:
        rf = receptive_field(model, positions, samples, temperature, generator, batch_size, advance)
    cells, records, k = [], [], 0
    for h, pos in zip(chosen, rows):
        cells.append([heat(rf[k + n].float()) for n in range(len(pos))])
        for n, (i, j) in enumerate(pos.tolist()):
            ext = rf_extent(rf[k + n], threshold)
            records.append(
                {"level": h, "position": [i, j], "extent": ext.pixels, "box": [ext.rows, ext.cols]}
            )
        k += len(pos)
    path = write_png(panel(cells, [f"level {h}" for h in chosen], zoom=zoom), output)
    if as_json:
        typer.echo(json.dumps({"figure": str(path), "threshold": threshold, "latents": records}))
        return
    for r in records:
        typer.echo(
            f"level {r['level']}  latent ({r['position'][0]:2d},{r['position'][1]:2d})  "
            f"extent {r['extent']:5d} px  box {r['box'][0]}x{r['box'][1]}"
        )
    typer.echo(f"wrote {path}")
