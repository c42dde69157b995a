"""`rgflow inpaint`: fill the missing pixels of an image under the model: the most likely
fill, posterior samples, or their mean."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.options import (
    AllowLargeOpt,
    CheckpointOpt,
    DeviceOpt,
    ResizeOpt,
    SeedOpt,
    ZoomOpt,
)


class Method(str, Enum):
    """How the hole is filled (see `rgflow_core.inpaint`)."""

    map = "map"
    langevin = "langevin"
    mean = "mean"


TITLES = {
    "map": "inpainting by maximum likelihood",
    "langevin": "inpainting by posterior sampling (most likely chain)",
    "mean": "inpainting by the posterior mean",
}


def inpaint(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image with missing pixels.")],
    mask: Annotated[
        Path,
        typer.Argument(metavar="MASK", help="Mask of the same size: white (>= 128) means missing."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The filled image (best restart).")
    ] = Path("filled.png"),
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="map: most likely fill; langevin: a posterior sample (the most likely of the "
            "chains); mean: the average of the samples (best PSNR, but blurred).",
        ),
    ] = Method.map,
    steps: Annotated[int, typer.Option("--steps", help="Adam or Langevin steps.")] = 300,
    lr: Annotated[
        float, typer.Option("--lr", help="Adam learning rate, or first Langevin step size.")
    ] = 0.05,
    restarts: Annotated[
        int | None,
        typer.Option(
            "--restarts",
            help="Independent fills; the most likely is kept (default: 1 for map, "
            "16 Langevin chains).",
        ),
    ] = None,
    noise: Annotated[
        float,
        typer.Option("--noise", help="map: noise temperature T of the ascent (0: plain ascent)."),
    ] = 0.0,
    compare: Annotated[
        Path | None,
        typer.Option("--compare", help="Write a panel: input with hole, filled, and --original."),
    ] = None,
    original: Annotated[
        Path | None,
        typer.Option("--original", help="The true image: shown in --compare, PSNR printed."),
    ] = None,
    gif: Annotated[
        Path | None, typer.Option("--gif", help="Animate the optimisation (best restart).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Also write every restart's fill here.")
    ] = None,
    zoom: ZoomOpt = 4,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resize: ResizeOpt = False,
    allow_large: AllowLargeOpt = False,
) -> None:
    """Fill the masked pixels under the model: maximise log p(x) of the whole image (map),
    sample the posterior of the hole (langevin), or average the samples (mean).

    Each step evaluates only the blocks in the causal cone of the hole: O(log L) block
    evaluations, not the whole image.
    """
    import torch

    from rgflow_cli.io import open_model, write_bytes, write_gif, zoomed
    from rgflow_cli.progress import progress_bar
    from rgflow_core.figures import image_panel
    from rgflow_core.files import check_outputs
    from rgflow_core.images import image_size, read_image, read_mask, write_image
    from rgflow_core.inpaint import check_inpaint_args, psnr
    from rgflow_core.inpaint import inpaint as inpaint_image

    check_inpaint_args(steps, lr, restarts, noise, method.value)
    model, _, path = open_model(checkpoint, device, allow_large)
    inputs = [path, image, mask, original]
    check_outputs([output, compare, gif], inputs, folders=[out_dir])
    cfg = model.config
    x = read_image(image, cfg.channels, cfg.image_size, resize)
    missing = read_mask(mask, cfg.image_size, image_size(image))
    truth = read_image(original, cfg.channels, cfg.image_size, resize) if original else None

    if not bool(missing.any()):
        typer.echo("the mask marks no pixel as missing: writing the input unchanged", err=True)
        typer.echo(f"wrote {write_image(x, output)}")
        return
    if bool(missing.all()):
        typer.echo("the mask covers the whole image: this is sampling from the model", err=True)

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    frame_every = max(1, steps // 50) if gif is not None else 0
    with progress_bar("inpainting", steps) as advance:
        result = inpaint_image(
            model, x, missing, method=method.value, steps=steps, lr=lr, restarts=restarts,
            noise=noise, generator=generator, frame_every=frame_every,
            progress=lambda _: advance(1),
        )  # fmt: skip
    best = result.fill
    rate = result.accept_rate
    accept = "" if rate is None or rate != rate else f"; acceptance {rate:.2f}"  # NaN: no steps
    typer.echo(
        f"filled {int(missing.sum())} pixels ({method.value}); {result.block_evals} block "
        f"evaluations per step (whole image: {result.full_block_evals}); log p(x) = "
        f"{result.fill_log_prob:.2f} nats{accept}",
        err=True,
    )
    if out_dir is not None:
        for r, (fill, logp) in enumerate(zip(result.images, result.log_prob.tolist())):
            written = write_image(fill, out_dir / f"fill_{r:02d}.png")
            typer.echo(f"wrote {written}  log p(x) = {logp:.2f}")
    if truth is not None:
        hole = missing.expand_as(x)
        typer.echo(f"PSNR of the filled pixels: {psnr(best[hole], truth[hole]):.2f} dB", err=True)
    if compare is not None:
        shown = torch.where(missing, torch.full_like(x, 255), x)  # the hole painted white
        cells = [shown, best] + ([truth] if truth is not None else [])
        labels = ["input (hole white)", "filled", "original"][: len(cells)]
        title = TITLES[method.value]
        figure = image_panel([cells], None, labels, title, cell_inches=0.35 * zoom)
        typer.echo(f"wrote {write_bytes(figure, compare)}")
    if gif is not None:
        frames = [zoomed(f[result.best], zoom) for f in result.frames]
        typer.echo(f"wrote {write_gif(frames, gif)}")
    typer.echo(f"wrote {write_image(best, output)}")  # the primary output, last
