"""`rgflow inpaint`: fill the missing pixels of an image by maximum likelihood."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

from rgflow_cli.common import CheckpointOpt, DeviceOpt, ResizeOpt, SeedOpt, open_model
from rgflow_cli.figures import panel, write_gif, write_png, zoomed
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import DataError, UsageError
from rgflow_core.images import read_image, write_image
from rgflow_core.inpaint import inpaint as inpaint_image
from rgflow_core.inpaint import psnr


def read_mask(path: Path, image_path: Path, size: int, resize_to_fit: bool) -> torch.Tensor:
    """(L, L) bool mask, True where missing (>= 128), of the same size as the image file.

    With `resize_to_fit` the mask is cropped and resized like the image (nearest).
    """
    sizes = []
    for p in (path, image_path):
        if not p.is_file():
            raise DataError(f"image {p} does not exist")
        try:
            with Image.open(p) as img:
                img.load()
                sizes.append(img.size)
                if p == path:
                    grey = img.convert("L")
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{p} is not a readable image") from err
    if sizes[0] != sizes[1]:
        raise DataError(
            f"mask {path} is {sizes[0][0]}x{sizes[0][1]} but image {image_path} is "
            f"{sizes[1][0]}x{sizes[1][1]}; the mask must have the image's size"
        )
    mask = pil_to_tensor(grey)  # (1, H, W)
    if resize_to_fit:
        mask = center_crop(mask, [min(mask.shape[1:])])
        mask = resize(mask, [size, size], interpolation=Image.Resampling.NEAREST)
    return mask[0] >= 128


def _with_hole(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The input as shown in figures: missing pixels painted white."""
    return torch.where(mask, torch.full_like(image, 255), image)


def inpaint(
    image: Annotated[Path, typer.Argument(help="Image with missing pixels.")],
    mask: Annotated[
        Path, typer.Argument(help="Mask of the same size: white (>= 128) means missing.")
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
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge --compare/--gif cells.")] = 4,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resize: ResizeOpt = False,
) -> None:
    """Fill the masked pixels by maximising log p(x) of the whole image.

    Each step evaluates only the blocks in the causal cone of the hole: O(log L) block
    evaluations, not the whole image.
    """
    if steps < 0 or restarts < 1 or lr <= 0 or noise < 0 or zoom < 1:
        raise UsageError(
            "--steps must be >= 0, --restarts >= 1, --lr > 0, --noise >= 0, --zoom >= 1"
        )
    model, _ = open_model(checkpoint, device)
    cfg = model.config
    x = read_image(image, cfg.channels, cfg.image_size, resize)
    missing = read_mask(mask, image, cfg.image_size, resize)
    truth = None
    if original is not None:
        truth = read_image(original, cfg.channels, cfg.image_size, resize)

    if not bool(missing.any()):
        typer.echo("the mask marks no pixel as missing: writing the input unchanged", err=True)
        typer.echo(write_image(x, output))
        return
    if bool(missing.all()):
        typer.echo("the mask covers the whole image: this is sampling from the model", err=True)

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    frame_every = max(1, steps // 50) if gif is not None else 0
    with progress_bar("inpainting", steps) as advance:
        result = inpaint_image(
            model,
            x,
            missing,
            steps=steps,
            lr=lr,
            restarts=restarts,
            noise=noise,
            generator=generator,
            frame_every=frame_every,
            progress=lambda _: advance(1),
        )
    best = result.images[result.best]
    typer.echo(
        f"filled {int(missing.sum())} pixels; {result.block_evals} block evaluations per step "
        f"(whole image: {result.full_block_evals}); log p(x) = "
        f"{float(result.log_prob[result.best]):.2f} nats",
        err=True,
    )
    typer.echo(write_image(best, output))
    if out_dir is not None:
        for r, (fill, logp) in enumerate(zip(result.images, result.log_prob.tolist())):
            path = write_image(fill, out_dir / f"fill_{r:02d}.png")
            typer.echo(f"{path}  log p(x) = {logp:.2f}")
    if truth is not None:
        hole = missing.expand_as(x)
        typer.echo(f"PSNR of the filled pixels: {psnr(best[hole], truth[hole]):.2f} dB", err=True)
    if compare is not None:
        cells = [_with_hole(x, missing), best] + ([truth] if truth is not None else [])
        labels = ["input", "filled", "original"][: len(cells)]
        typer.echo(write_png(panel([cells], col_labels=labels, zoom=zoom), compare))
    if gif is not None:
        frames = [zoomed(f[result.best], zoom) for f in result.frames]
        typer.echo(write_gif(frames, gif))
