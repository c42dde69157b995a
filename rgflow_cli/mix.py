"""`rgflow mix`: combine two images across scales (high levels of one, low of the other)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from rgflow_cli.common import CheckpointOpt, DeviceOpt, ResizeOpt, SeedOpt, open_model
from rgflow_cli.figures import panel, write_png
from rgflow_core.errors import UsageError
from rgflow_core.explore import check_scale, mix_panel
from rgflow_core.images import read_images, write_image

ZoomOpt = Annotated[int, typer.Option("--zoom", help="Enlarge figure cells this many times.")]
COLUMNS = ("a", "b", "a-high + b-low", "b-high + a-low")


def mix(
    first: Annotated[Path, typer.Argument(help="Image A: gives the latents of levels >= S.")],
    second: Annotated[Path, typer.Argument(help="Image B: gives the latents below S.")],
    scale: Annotated[
        int | None, typer.Option("--scale", "-s", help="The cut S, in 1..H-1.")
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The mixed image (with --all-scales: the labelled panel)."
        ),
    ] = Path("mix.png"),
    grid: Annotated[
        Path | None,
        typer.Option("--grid", help="Also write the labelled panel [a, b, a+b, b+a] here."),
    ] = None,
    all_scales: Annotated[
        bool, typer.Option("--all-scales", help="One panel row per cut S = 1..H-1.")
    ] = False,
    zoom: ZoomOpt = 4,
    checkpoint: CheckpointOpt = None,
    resize: ResizeOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Mix two images across scales: A's latents of levels >= S with B's below S.

    High levels carry the large-scale structure (pose, shape, lighting), low levels the
    texture and detail.
    """
    if scale is None and not all_scales:
        raise UsageError("give the cut with --scale S (or use --all-scales)")
    if zoom < 1:
        raise UsageError(f"--zoom must be >= 1, got {zoom}")
    torch.manual_seed(seed)
    model, _ = open_model(checkpoint, device)
    cfg = model.config
    scales = list(range(1, cfg.levels)) if all_scales else [check_scale(model, scale)]
    if all_scales and scale is not None:
        check_scale(model, scale)
    if not scales:
        raise UsageError("this model has a single RG level: there is no scale to cut at")
    a, b = read_images([first, second], cfg.channels, cfg.image_size, resize_to_fit=resize)
    rows = mix_panel(model, a, b, scales)  # (S, 4, C, L, L)
    figure = panel(rows, [f"S={s}" for s in scales], COLUMNS, zoom=zoom)
    if all_scales:
        typer.echo(f"wrote {write_png(figure, output)}")
    else:
        typer.echo(f"wrote {write_image(rows[0, 2], output)}")
    if grid is not None:
        typer.echo(f"wrote {write_png(figure, grid)}")
