"""`rgflow inpaint`: fill the missing pixels of an image by maximum likelihood."""

from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.io import open_model, write_bytes, write_gif, zoomed
from rgflow_cli.options import (
    AllowLargeOpt,
    CheckpointOpt,
    DeviceOpt,
    ResizeOpt,
    SeedOpt,
    ZoomOpt,
)
from rgflow_cli.progress import progress_bar


def inpaint(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image with missing pixels.")],
    mask: Annotated[
        Path,
        typer.Argument(metavar="MASK", help="Mask of the same size: white (>= 128) means missing."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The filled image (best restart).")
    ] = Path("filled.png"),
    steps: Annotated[int, typer.Option("--steps", help="Adam steps.")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (logit space).")] = 0.05,
    restarts: Annotated[
        int, typer.Option("--restarts", help="Independent fills; the most likely is kept.")
    ] = 1,
    noise: Annotated[
        float, typer.Option("--noise", help="Langevin noise temperature T (0: plain ascent).")
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
    """Fill the masked pixels by maximising log p(x) of the whole image.

    Each step evaluates only the blocks in the causal cone of the hole: O(log L) block
    evaluations, not the whole image.
    """
    import torch

    from rgflow_core.figures import image_panel
    from rgflow_core.files import check_outputs
    from rgflow_core.images import image_size, read_image, read_mask, write_image
    from rgflow_core.inpaint import check_inpaint_args, psnr
    from rgflow_core.inpaint import inpaint as inpaint_image

    check_inpaint_args(steps, lr, restarts, noise)
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
            model, x, missing, steps=steps, lr=lr, restarts=restarts, noise=noise,
            generator=generator, frame_every=frame_every, progress=lambda _: advance(1),
        )  # fmt: skip
    best = result.images[result.best]
    typer.echo(
        f"filled {int(missing.sum())} pixels; {result.block_evals} block evaluations per step "
        f"(whole image: {result.full_block_evals}); log p(x) = "
        f"{float(result.log_prob[result.best]):.2f} nats",
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
        title = "inpainting by maximum likelihood"
        figure = image_panel([cells], None, labels, title, cell_inches=0.35 * zoom)
        typer.echo(f"wrote {write_bytes(figure, compare)}")
    if gif is not None:
        frames = [zoomed(f[result.best], zoom) for f in result.frames]
        typer.echo(f"wrote {write_gif(frames, gif)}")
    typer.echo(f"wrote {write_image(best, output)}")  # the primary output, last
