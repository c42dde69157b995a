"""`rgflow probe`: how linearly each RG level's latents encode an MSDS global factor."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table
from torchvision.transforms.functional import resize as tv_resize
from torchvision.transforms.functional import rgb_to_grayscale

from rgflow_cli.common import CheckpointOpt, DeviceOpt, ResizeOpt, SeedOpt, open_model
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import DataError, UsageError
from rgflow_core.explore import encode_images, msds_targets, probe_levels, read_msds_factors
from rgflow_core.flow import RGFlow

FACTORS = {"msds1": "base colour (r, g, b)", "msds2": "base angle (sin 2a, cos 2a)"}


class ProbeSet(str, Enum):
    """MSDS sets with a known global factor."""

    msds1 = "msds1"
    msds2 = "msds2"


def _fit_to_model(images: torch.Tensor, model: RGFlow, resize: bool) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) MSDS images in the model's shape (an error unless `resize`)."""
    cfg = model.config
    if images.shape[1:] == (cfg.channels, cfg.image_size, cfg.image_size):
        return images
    if not resize:
        raise DataError(
            f"MSDS images are 3x32x32 but the model takes {cfg.channels}x{cfg.image_size}x"
            f"{cfg.image_size} (pass --resize to convert them)"
        )
    if cfg.channels == 1:
        images = rgb_to_grayscale(images)
    return tv_resize(images, [cfg.image_size, cfg.image_size], antialias=True)


def probe(
    data_root: Annotated[
        Path, typer.Option("--data-root", help="Folder holding the MSDS set (DATA_ROOT/NAME).")
    ] = Path("data"),
    dataset: Annotated[
        ProbeSet, typer.Option("--dataset", help="msds1: colour; msds2: angle.")
    ] = ProbeSet.msds1,
    max_images: Annotated[
        int | None,
        typer.Option("--max-images", help="Use at most N images of each split."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", help="Ridge penalty (default: chosen on held-out train images)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 256,
    workers: Annotated[int, typer.Option("--workers", help="Image readers (0 = all cores).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    resize: ResizeOpt = False,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Linear read-out (ridge) of the image's global factor from each level's latents.

    Fitted on the train split, scored by R^2 on the test split. A sparse, disentangled
    model puts the global factor in the high levels.
    """
    if max_images is not None and max_images < 2:
        raise UsageError(f"--max-images must be >= 2, got {max_images}")
    if batch_size < 1 or workers < 0:
        raise UsageError("--batch-size must be >= 1 and --workers >= 0")
    if alpha is not None and alpha < 0:
        raise UsageError(f"--alpha must be >= 0, got {alpha}")
    name = dataset.value
    model, _ = open_model(checkpoint, device)
    z, y = {}, {}
    for split in ("train", "test"):
        images, factor = read_msds_factors(data_root, name, split, max_images, workers)
        if len(images) < 2:
            raise DataError(f"the {split} split of {data_root / name} has fewer than 2 images")
        images = _fit_to_model(images, model, resize)
        with progress_bar(f"encoding {split}", len(images)) as advance:
            z[split], _ = encode_images(model, images, batch_size, advance)
        y[split] = msds_targets(name, factor)
    results = probe_levels(
        z["train"], y["train"], z["test"], y["test"], model.level_map.cpu(), alpha, seed
    )
    if as_json:
        payload = {
            "dataset": name,
            "factor": FACTORS[name],
            "train_images": len(z["train"]),
            "test_images": len(z["test"]),
            "results": [dataclasses.asdict(r) for r in results],
        }
        typer.echo(json.dumps(payload))
        return
    table = Table(
        title=f"linear probe of the {FACTORS[name]} of {name} "
        f"({len(z['train'])} train / {len(z['test'])} test images)"
    )
    for column in ("level", "latents", "R² test", "R² train", "ridge alpha"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.level, str(r.latents), f"{r.r2_test:.3f}", f"{r.r2_train:.3f}", f"{r.alpha:.3g}"
        )
    Console().print(table)
