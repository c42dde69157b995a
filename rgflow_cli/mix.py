"""`rgflow mix`: combine two images across scales (high levels of one, low of the other)."""

from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.io import open_model, write_bytes
from rgflow_cli.options import AllowLargeOpt, CheckpointOpt, DeviceOpt, ResizeOpt, ZoomOpt
from rgflow_core.errors import UsageError

COLUMNS = ["a", "b", "a-high + b-low", "b-high + a-low"]


def mix(
    first: Annotated[
        Path, typer.Argument(metavar="A", help="Image A: gives the latents of levels >= S.")
    ],
    second: Annotated[
        Path, typer.Argument(metavar="B", help="Image B: gives the latents below S.")
    ],
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
    allow_large: AllowLargeOpt = False,
) -> None:
    """Mix two images across scales: A's latents of levels >= S with B's below S.

    High levels carry the large-scale structure (pose, shape, lighting), low levels the
    texture and detail.
    """
    from rgflow_core.figures import image_panel
    from rgflow_core.files import check_outputs
    from rgflow_core.images import read_images, write_image
    from rgflow_core.mixing import check_scale, mix_panel

    if scale is None and not all_scales:
        raise UsageError("give the cut with --scale S (or use --all-scales)")
    model, _, path = open_model(checkpoint, device, allow_large)
    check_outputs([output, grid], [path, first, second])
    H = model.config.levels
    scales = list(range(1, H)) if all_scales else [scale]
    for s in scales + ([scale] if scale is not None else []):
        check_scale(model, s)
    cfg = model.config
    a, b = read_images([first, second], cfg.channels, cfg.image_size, resize)
    rows = mix_panel(model, a, b, scales)  # (S, 4, C, L, L)
    title = f"mixing across scales: levels >= S of one image, levels < S of the other ({H} levels)"
    cells = [list(r) for r in rows]
    figure = image_panel(cells, [f"S={s}" for s in scales], COLUMNS, title, cell_inches=0.35 * zoom)
    if grid is not None:
        typer.echo(f"wrote {write_bytes(figure, grid)}")
    if all_scales:
        typer.echo(f"wrote {write_bytes(figure, output)}")
    else:
        typer.echo(f"wrote {write_image(rows[0, 2], output)}")
