"""`rgflow probe`: at which scale each MSDS factor lives, by a linear read-out per level."""

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rgflow_cli.io import echo_json, msds_data, open_model, write_bytes
from rgflow_cli.options import (
    AllowLargeOpt,
    BatchOpt,
    CheckpointOpt,
    DeviceOpt,
    JsonOpt,
    MSDSRootOpt,
    MSDSSetOpt,
    ResizeOpt,
    SeedOpt,
)
from rgflow_cli.progress import progress_bar
from rgflow_core.errors import DataError

if TYPE_CHECKING:
    import torch

    from rgflow_core.flow import RGFlow


def _fit_to_model(images: "torch.Tensor", model: "RGFlow", resize: bool) -> "torch.Tensor":
    """uint8 (N, 3, 32, 32) MSDS images in the model's shape (an error unless `resize`)."""
    from torchvision.transforms.functional import resize as tv_resize
    from torchvision.transforms.functional import rgb_to_grayscale

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
    data_root: MSDSRootOpt = None,
    dataset: MSDSSetOpt = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Bar chart of R² by level (PNG).")
    ] = Path("probe.png"),
    max_images: Annotated[
        int | None,
        typer.Option("--max-images", min=2, help="Use at most N images of each split."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", help="Ridge penalty (default: chosen on held-out train images)."),
    ] = None,
    batch_size: BatchOpt = 256,
    workers: Annotated[
        int, typer.Option("--workers", min=0, max=256, help="Image readers (0 = all cores).")
    ] = 0,
    resize: ResizeOpt = False,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Linear read-out (ridge) of the global and the local factors from each level's latents.

    Fitted on the train split, scored by R² on the test split. A model that separates
    scales reads the global factor best from the high levels and the local factors from
    the low ones.
    """
    from rgflow_core.checks import check_float
    from rgflow_core.codec import encode_images
    from rgflow_core.data import read_msds_images
    from rgflow_core.figures import probe_chart
    from rgflow_core.files import check_outputs
    from rgflow_core.msds_readers import FACTORS
    from rgflow_core.probe import msds_targets, probe_levels

    if alpha is not None:
        check_float("alpha", alpha, 0.0, 1e12)
    model, _, path = open_model(checkpoint, device, allow_large)
    check_outputs([output], [path])  # before any work, the data's generation included
    data_root, name = msds_data(path, data_root, dataset and dataset.value)
    z, targets = {}, {}
    for split in ("train", "test"):
        images, labels, factor = read_msds_images(data_root, name, split, max_images, workers)
        if len(images) < 2:
            raise DataError(f"the {split} split of {data_root / name} has fewer than 2 images")
        images = _fit_to_model(images, model, resize)
        with progress_bar(f"encoding {split}", len(images)) as advance:
            z[split], _ = encode_images(model, images, batch_size, advance)
        targets[split] = msds_targets(name, labels, factor)
    rows = []
    level_map = model.level_map.cpu()
    for kind in ("global", "local"):
        results = probe_levels(
            z["train"], targets["train"][kind], z["test"], targets["test"][kind],
            level_map, alpha, seed,
        )  # fmt: skip
        target = f"{kind}: {FACTORS[name][kind]}"
        rows += [{"target": target, **dataclasses.asdict(r)} for r in results]
    chart = probe_chart(rows, f"{name}: test R² of a linear read-out, by RG level")
    written = write_bytes(chart, output)
    if as_json:
        payload = {
            "dataset": name,
            "factors": FACTORS[name],
            "train_images": len(z["train"]),
            "test_images": len(z["test"]),
            "chart": str(written),
            "results": rows,
        }
        echo_json(payload)
        return
    _print_table(rows, name, len(z["train"]), len(z["test"]))
    typer.echo(f"wrote {written}")


def _print_table(rows: list[dict], name: str, n_train: int, n_test: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"linear probe of {name} ({n_train} train / {n_test} test images)")
    for column in ("level", "latents", "R² global (test)", "R² local (test)", "R² global (train)"):
        table.add_column(column, justify="right")
    by_level: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_level.setdefault(r["level"], {})[r["target"].split(":")[0]] = r
    for level, kinds in by_level.items():
        g, loc = kinds["global"], kinds["local"]
        table.add_row(
            level, str(g["latents"]), f"{g['r2_test']:.3f}", f"{loc['r2_test']:.3f}",
            f"{g['r2_train']:.3f}",
        )  # fmt: skip
    Console().print(table)
