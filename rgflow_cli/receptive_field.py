"""`rgflow receptive-field`: where each level's latents act in the image."""

from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.io import echo_json, open_model, write_bytes
from rgflow_cli.options import (
    AllowLargeOpt,
    CheckpointOpt,
    DeviceOpt,
    JsonOpt,
    SeedOpt,
    TemperatureOpt,
    ZoomOpt,
)
from rgflow_core.errors import UsageError


def parse_levels(text: str, levels: int) -> list[int]:
    """'all' or 'h,h,...' -> sorted distinct levels, each checked against the model."""
    from rgflow_core.geometry import check_level

    if text.strip() == "all":
        return list(range(levels))
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"must be 'all' or levels like 0,2; got {text!r}", "levels") from None
    if not chosen:
        raise UsageError("is empty; give 'all' or levels like 0,2", "levels")
    return [check_level(levels, h, "levels") for h in chosen]


def receptive_field(
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure (PNG).")] = Path("rf.png"),
    samples: Annotated[
        int, typer.Option("--samples", help="Prior samples in the expectation.")
    ] = 16,
    levels: Annotated[str, typer.Option("--levels", help="'all' or levels like 0,2.")] = "all",
    per_level: Annotated[
        int, typer.Option("--per-level", min=1, max=64, help="Latent positions shown per level.")
    ] = 4,
    temperature: TemperatureOpt = 1.0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Extent: pixels where RF > this * max RF.")
    ] = 0.01,
    zoom: ZoomOpt = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="JVPs per batch.")] = 64,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Receptive fields RF_l = E_z |dG(z)/dz_l| of latents at representative positions.

    One figure row per level; each cell is the RF of one latent (summed over channels),
    scaled to its own maximum, with the latent's position marked.
    """
    import torch

    from rgflow_cli.progress import progress_bar
    from rgflow_core.checks import check_float, check_positive
    from rgflow_core.figures import receptive_fields
    from rgflow_core.files import check_outputs
    from rgflow_core.receptive import receptive_field as fields_of
    from rgflow_core.receptive import representative_positions, rf_extent

    check_positive("temperature", temperature, 100.0)
    check_float("threshold", threshold, 0.0, 1.0)
    model, dev, path = open_model(checkpoint, device, allow_large)
    check_outputs([output], [path])
    chosen = parse_levels(levels, model.config.levels)
    rows = [representative_positions(model.level_map, h, per_level) for h in chosen]
    positions = torch.cat(rows)
    row_levels = [h for h, pos in zip(chosen, rows) for _ in range(len(pos))]
    generator = torch.Generator().manual_seed(seed)  # CPU: a seed means one draw everywhere
    total = samples * len(positions) * model.config.channels
    with progress_bar("receptive fields", total) as advance:
        rf = fields_of(model, positions, samples, temperature, generator, batch_size, advance)
    records = []
    for h, (i, j), field in zip(row_levels, positions.tolist(), rf):
        ext = rf_extent(field, threshold)
        records.append(
            {"level": h, "position": [i, j], "extent": ext.pixels, "box": [ext.rows, ext.cols]}
        )
    pos = [tuple(p) for p in positions.tolist()]
    title = f"receptive fields E|dx/dz| ({samples} samples at T={temperature:g})"
    figure = receptive_fields(rf, pos, row_levels, title, cell_inches=0.4 * zoom)
    written = write_bytes(figure, output)
    if as_json:
        echo_json({"figure": str(written), "threshold": threshold, "latents": records})
        return
    for r in records:
        typer.echo(
            f"level {r['level']}  latent ({r['position'][0]:2d},{r['position'][1]:2d})  "
            f"extent {r['extent']:5d} px  box {r['box'][0]}x{r['box'][1]}"
        )
    typer.echo(f"wrote {written}")
