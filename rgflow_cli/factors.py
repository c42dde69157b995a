"""`rgflow traverse` and `rgflow walk`: animations of what the latents of one level do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from rgflow_cli.common import CheckpointOpt, DeviceOpt, ResizeOpt, SeedOpt, open_model
from rgflow_cli.figures import panel, write_gif, write_png
from rgflow_cli.progress import progress_bar
from rgflow_cli.sample import TemperatureOpt, check_temperature
from rgflow_core.errors import DataError, UsageError
from rgflow_core.explore import (
    check_latent,
    check_level,
    decode_images,
    encode_images,
    latent_statistics,
    random_walk,
    sample_images,
    top_variance_latents,
    traverse_latents,
)
from rgflow_core.flow import RGFlow
from rgflow_core.images import read_image, read_images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

LevelOpt = Annotated[int, typer.Option("--level", "-l", help="RG level (0 = finest).")]
ImageOpt = Annotated[
    Path | None,
    typer.Option(
        "--image",
        help="Start from this image's latents (default: the first --data image, or a sample).",
    ),
]
FpsOpt = Annotated[float, typer.Option("--fps", help="Frames per second of the GIF.")]
ZoomOpt = Annotated[int, typer.Option("--zoom", help="Enlarge images this many times.")]


def parse_latent(text: str) -> tuple[int, int, int]:
    """'c,i,j' -> (c, i, j)."""
    try:
        c, i, j = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--latent must be CHANNEL,ROW,COLUMN like 0,4,4; got {text!r}") from None
    return c, i, j


def _base_latents(
    model: RGFlow,
    image: Path | None,
    resize: bool,
    count: int,
    temperature: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(count, C, L, L) starting latents: the image's (repeated), or prior samples."""
    if image is not None:
        cfg = model.config
        x = read_image(image, cfg.channels, cfg.image_size, resize_to_fit=resize)
        z, _ = encode_images(model, x.unsqueeze(0))
        return z.expand(count, *z.shape[1:]).clone()
    return model.sample_latents(count, temperature, generator).cpu()


def _folder_images(folder: Path, limit: int) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"--data {folder} is not a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"--data {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths[:limit]


def _strip_path(output: Path) -> Path:
    """Default PNG strip beside the GIF: OUTPUT.png (OUTPUT_strip.png if that is OUTPUT)."""
    path = output.with_suffix(".png")
    return path if path != output else output.with_name(f"{output.stem}_strip.png")


def traverse(
    level: LevelOpt,
    latent: Annotated[
        str | None, typer.Option("--latent", help="The latent CHANNEL,ROW,COLUMN to vary.")
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", "-k", help="Vary each of the k latents of largest variance."),
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
        int, typer.Option("--max-images", help="At most this many images from --data.")
    ] = 256,
    samples: Annotated[
        int, typer.Option("--samples", help="Encoded samples for the statistics without --data.")
    ] = 64,
    temperature: TemperatureOpt = 1.0,
    fps: FpsOpt = 10.0,
    zoom: ZoomOpt = 4,
    resize: ResizeOpt = False,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Vary single latents of one level, the others fixed: an animated GIF and a PNG strip.

    Each latent moves from mean - range*std to mean + range*std, with mean and std taken
    over encoded images (--data) or encoded model samples.
    """
    if latent is not None and top is not None:
        raise UsageError("give either --latent or --top, not both")
    if frames < 2:
        raise UsageError(f"--frames must be >= 2, got {frames}")
    if not extent > 0:
        raise UsageError(f"--range must be > 0, got {extent}")
    if max_images < 2 or samples < 2:
        raise UsageError("--max-images and --samples must be >= 2 (a variance needs two)")
    if fps <= 0 or zoom < 1:
        raise UsageError("--fps must be > 0 and --zoom >= 1")
    check_temperature(temperature)
    chosen = parse_latent(latent) if latent is not None else None
    model, dev = open_model(checkpoint, device)
    check_level(model, level)
    if chosen is not None:
        check_latent(model, level, chosen)
    cfg = model.config
    generator = torch.Generator(device=dev).manual_seed(seed)

    if data is not None:
        paths = _folder_images(data, max_images)
        ref = read_images(paths, cfg.channels, cfg.image_size, resize_to_fit=resize)
    else:
        with progress_bar("sampling", samples) as advance:
            ref = sample_images(model, samples, temperature, generator, progress=advance)
    with progress_bar("encoding", len(ref)) as advance:
        z_ref, _ = encode_images(model, ref, progress=advance)
    mean, std = latent_statistics(z_ref)
    latents = (
        [chosen] if chosen else top_variance_latents(std, model.level_map.cpu(), level, top or 4)
    )

    if image is None and data is not None:
        base = z_ref[0]  # the first image of --data
    else:
        base = _base_latents(model, image, resize, 1, temperature, generator)[0]
    z = traverse_latents(base, latents, mean, std, extent, frames)  # (k, F, C, L, L)
    with progress_bar("decoding", z.shape[0] * z.shape[1]) as advance:
        images = decode_images(model, z.flatten(0, 1), progress=advance).view(
            z.shape[:2] + base.shape
        )
    names = [f"{c},{i},{j}" for c, i, j in latents]
    steps = torch.linspace(-extent, extent, frames).tolist()
    gif_frames = [panel([list(images[:, f])], col_labels=names, zoom=zoom) for f in range(frames)]
    gif = write_gif(gif_frames + gif_frames[-2:0:-1], output, fps)
    strip_path = write_png(
        panel(images, names, [f"{v:+.1f}" for v in steps], zoom=max(1, zoom // 2)),
        strip or _strip_path(output),
    )
    for name, (c, i, j) in zip(names, latents):
        typer.echo(f"level {level} latent {name}: mean {mean[c, i, j]:+.3f} std {std[c, i, j]:.3f}")
    typer.echo(f"wrote {gif}")
    typer.echo(f"wrote {strip_path}")


def walk(
    level: LevelOpt,
    steps: Annotated[int, typer.Option("--steps", help="Steps of the walk (frames - 1).")] = 48,
    step_size: Annotated[
        float, typer.Option("--step-size", help="Fresh noise mixed in per step, in (0, 1].")
    ] = 0.2,
    num: Annotated[int, typer.Option("-n", "--num", help="Walks side by side.")] = 4,
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
) -> None:
    """A random walk in the latents of one level, the others fixed, as an animated GIF."""
    if steps < 1 or num < 1:
        raise UsageError("--steps and -n must be >= 1")
    if not 0 < step_size <= 1:
        raise UsageError(f"--step-size must be in (0, 1], got {step_size}")
    if fps <= 0 or zoom < 1:
        raise UsageError("--fps must be > 0 and --zoom >= 1")
    check_temperature(temperature)
    model, dev = open_model(checkpoint, device)
    check_level(model, level)
    generator = torch.Generator(device=dev).manual_seed(seed)
    z0 = _base_latents(model, image, resize, num, temperature, generator).to(dev)
    path = random_walk(model, z0, level, steps, step_size, temperature, generator)
    with progress_bar("decoding", path.shape[0] * num) as advance:
        images = decode_images(model, path.flatten(0, 1), progress=advance)
    images = images.view(path.shape[0], num, *images.shape[1:])
    frames = [panel([list(row)], zoom=zoom) for row in images]
    typer.echo(f"wrote {write_gif(frames, output, fps)}")
