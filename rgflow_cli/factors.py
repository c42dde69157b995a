"""`rgflow traverse` and `rgflow walk`: animations of what the latents of one level do."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rgflow_cli.io import folder_images, open_model, write_bytes, write_gif, zoomed
from rgflow_cli.options import (
    AllowLargeOpt,
    CheckpointOpt,
    DeviceOpt,
    FpsOpt,
    LevelOpt,
    ResizeOpt,
    SeedOpt,
    TemperatureOpt,
    ZoomOpt,
)
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import UsageError

if TYPE_CHECKING:
    import torch

    from rgflow_core.flow import RGFlow

ImageOpt = Annotated[
    Path | None,
    typer.Option(
        "--image",
        help="Start from this image's latents (default: the first --data image, or a sample).",
    ),
]


def parse_latent(text: str) -> tuple[int, int, int]:
    """'c,i,j' -> (c, i, j)."""
    try:
        c, i, j = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"must be CHANNEL,ROW,COLUMN like 0,4,4; got {text!r}", "latent") from None
    return c, i, j


def _base_latents(model: "RGFlow", image: Path, resize: bool, count: int) -> "torch.Tensor":
    """(count, C, L, L): an image's latents, repeated."""
    from rgflow_core.codec import encode_images
    from rgflow_core.images import read_image

    cfg = model.config
    x = read_image(image, cfg.channels, cfg.image_size, resize)
    z, _ = encode_images(model, x.unsqueeze(0))
    return z.expand(count, *z.shape[1:]).clone()


def _grid(images: "torch.Tensor", zoom: int) -> "torch.Tensor":
    """A row of uint8 images as one zoomed uint8 frame."""
    from rgflow_core.images import image_grid

    return zoomed(image_grid(images, nrow=len(images)), zoom)


def traverse(
    level: LevelOpt,
    latent: Annotated[
        str | None, typer.Option("--latent", help="The latent CHANNEL,ROW,COLUMN to vary.")
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top", "-k", min=1, max=64, help="Vary each of the k latents of largest variance."
        ),
    ] = None,
    extent: Annotated[
        float, typer.Option("--range", help="Vary from -range to +range standard deviations.")
    ] = 3.0,
    frames: Annotated[int, typer.Option("--frames", help="Frames from -range to +range.")] = 16,
    output: Annotated[Path, typer.Option("--output", "-o", help="Animated GIF.")] = Path(
        "factor.gif"
    ),
    strip: Annotated[
        Path | None,
        typer.Option("--strip", help="PNG strip, one row per latent (default: OUTPUT.png)."),
    ] = None,
    image: ImageOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Folder of images for the latents' statistics (default: samples)."
        ),
    ] = None,
    max_images: Annotated[
        int,
        typer.Option("--max-images", min=2, max=100_000, help="At most this many --data images."),
    ] = 256,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            min=2,
            max=100_000,
            help="Encoded samples for the statistics without --data.",
        ),
    ] = 64,
    temperature: TemperatureOpt = 1.0,
    fps: FpsOpt = 10.0,
    zoom: ZoomOpt = 4,
    resize: ResizeOpt = False,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    allow_large: AllowLargeOpt = False,
) -> None:
    """Vary single latents of one level, the others fixed: an animated GIF and a PNG strip.

    Each latent moves from mean - range*std to mean + range*std, with mean and std taken
    over encoded images (--data) or encoded model samples.
    """
    import torch

    from rgflow_core.codec import check_sampling, decode_images, encode_images, sample_images
    from rgflow_core.figures import image_panel
    from rgflow_core.files import check_outputs
    from rgflow_core.geometry import check_level
    from rgflow_core.images import read_images
    from rgflow_core.mixing import (
        check_latent,
        latent_statistics,
        top_variance_latents,
        traverse_latents,
    )

    if latent is not None and top is not None:
        raise UsageError("give either --latent or --top, not both")
    chosen = parse_latent(latent) if latent is not None else None
    strip = strip or _strip_path(output)
    model, dev, path = open_model(checkpoint, device, allow_large)
    check_outputs([output, strip], [path, image])
    check_level(model.config.levels, level)
    if chosen is not None:
        check_latent(model, level, chosen)
    check_sampling(model, samples, samples, temperature, allow_large=allow_large)
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)  # CPU: a seed means one draw everywhere

    if data is not None:
        paths = folder_images(data, max_images)
        ref = read_images(paths, cfg.channels, cfg.image_size, resize)
    else:
        with progress_bar("sampling", samples) as advance:
            ref = sample_images(model, samples, temperature, generator, progress=advance)
    with progress_bar("encoding", len(ref)) as advance:
        z_ref, _ = encode_images(model, ref, progress=advance)
    mean, std = latent_statistics(z_ref)
    level_map = model.level_map.cpu()
    latents = [chosen] if chosen else top_variance_latents(std, level_map, level, top or 4)
    base = _base_latents(model, image, resize, 1)[0] if image is not None else z_ref[0]
    z = traverse_latents(base, latents, mean, std, extent, frames)  # (k, F, C, L, L)
    with progress_bar("decoding", z.shape[0] * z.shape[1]) as advance:
        flat = decode_images(model, z.flatten(0, 1), progress=advance)
    images = flat.view(z.shape[:2] + base.shape)
    names = [f"{c},{i},{j}" for c, i, j in latents]
    steps = torch.linspace(-extent, extent, frames).tolist()
    gif_frames = [_grid(images[:, f], zoom) for f in range(frames)]
    gif = write_gif(gif_frames + gif_frames[-2:0:-1], output, fps)
    title = (
        f"level {level}: one latent (channel,row,column) varied from -{extent:g} to "
        f"+{extent:g} std, the rest fixed"
    )
    columns = [f"{v:+.1f}σ" for v in steps]
    figure = image_panel([list(r) for r in images], names, columns, title, cell_inches=0.2 * zoom)
    strip_path = write_bytes(figure, strip)
    for name, (c, i, j) in zip(names, latents):
        typer.echo(f"level {level} latent {name}: mean {mean[c, i, j]:+.3f} std {std[c, i, j]:.3f}")
    typer.echo(f"wrote {gif}")
    typer.echo(f"wrote {strip_path}")


def _strip_path(output: Path) -> Path:
    """Default PNG strip beside the GIF: OUTPUT.png (OUTPUT_strip.png if that is OUTPUT)."""
    path = output.with_suffix(".png")
    return path if path != output else output.with_name(f"{output.stem}_strip.png")


def walk(
    level: LevelOpt,
    steps: Annotated[int, typer.Option("--steps", help="Steps of the walk (frames - 1).")] = 48,
    step_size: Annotated[
        float, typer.Option("--step-size", help="Fresh noise mixed in per step, in (0, 1].")
    ] = 0.2,
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=64, help="Walks side by side.")] = 4,
    output: Annotated[Path, typer.Option("--output", "-o", help="Animated GIF.")] = Path(
        "walk.gif"
    ),
    image: ImageOpt = None,
    temperature: TemperatureOpt = 1.0,
    fps: FpsOpt = 10.0,
    zoom: ZoomOpt = 4,
    resize: ResizeOpt = False,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    allow_large: AllowLargeOpt = False,
) -> None:
    """A random walk in the latents of one level, the others fixed, as an animated GIF."""
    import torch

    from rgflow_core.codec import check_sampling, decode_images
    from rgflow_core.files import check_outputs
    from rgflow_core.mixing import random_walk

    model, dev, path = open_model(checkpoint, device, allow_large)
    check_outputs([output], [path, image])
    check_sampling(model, n, n, temperature, allow_large=allow_large)
    generator = torch.Generator().manual_seed(seed)  # CPU: a seed means one draw everywhere
    if image is not None:
        z0 = _base_latents(model, image, resize, n).to(dev)
    else:
        z0 = model.sample_latents(n, temperature, generator)
    path_z = random_walk(model, z0, level, steps, step_size, temperature, generator)
    with progress_bar("decoding", path_z.shape[0] * n) as advance:
        images = decode_images(model, path_z.flatten(0, 1), progress=advance)
    images = images.view(path_z.shape[0], n, *images.shape[1:])
    typer.echo(f"wrote {write_gif([_grid(row, zoom) for row in images], output, fps)}")
