"""`rgflow mix-fidelity`: do mixes across scales take the global factor of one MSDS image
and the local factors of the other? Read from the pixels, over many pairs."""

from typing import Annotated

import typer

from rgflow_cli.options import (
    AllowLargeOpt,
    BatchOpt,
    CheckpointOpt,
    DeviceOpt,
    JsonOpt,
    MSDSRootOpt,
    MSDSSetOpt,
    SeedOpt,
)


def mix_fidelity(
    data_root: MSDSRootOpt = None,
    dataset: MSDSSetOpt = None,
    pairs: Annotated[
        int, typer.Option("--pairs", help="Pairs (a, b) of test images to mix.")
    ] = 200,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 256,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Mix pairs of MSDS test images at every cut S (levels >= S from a, < S from b) and
    read the factors back from the pixels.

    A model that separates scales gives mixes whose global factor is a's and whose local
    factors are b's. The rows "a" and "b" are the references; the readers' error on the
    test images is the floor under every distance.
    """
    import dataclasses

    import torch

    from rgflow_cli.io import msds_data, open_model
    from rgflow_cli.progress import progress_bar
    from rgflow_core import fidelity as core
    from rgflow_core.checks import check_int
    from rgflow_core.data import read_msds_images
    from rgflow_core.errors import DataError
    from rgflow_core.files import strict_json
    from rgflow_core.latents import model_fingerprint
    from rgflow_core.msds_readers import FACTORS

    check_int("pairs", pairs, 1, core.MAX_PAIRS)
    model, _, path = open_model(checkpoint, device, allow_large)
    data_root, name = msds_data(path, data_root, dataset and dataset.value)
    images, labels, factor = read_msds_images(data_root, name, "test")
    if len(images) < 2:
        raise DataError(f"the test split of {data_root / name} has fewer than 2 images")
    chosen = core.sample_pairs(len(images), pairs, seed)
    used = torch.unique(chosen)
    total = len(used) + pairs * (model.config.levels - 1)
    with progress_bar("encoding and mixing", total) as advance:
        rows = core.mix_fidelity(
            model, name, images, chosen, batch_size=batch_size, progress=advance
        )
    floor = core.reader_error(name, images[used], labels[used.numpy()], factor[used.numpy()])
    if as_json:
        payload = {
            "dataset": name,
            "factors": FACTORS[name],
            "units": core.UNITS[name],
            "checkpoint": str(path),
            "fingerprint": model_fingerprint(model),
            "pairs": pairs,
            "seed": seed,
            "test_images": len(images),
            "rows": [dataclasses.asdict(r) for r in rows],
            "reader_error": dataclasses.asdict(floor),
        }
        typer.echo(strict_json(payload))
        return
    _print_table(rows, floor, name, pairs, len(images))


def _print_table(rows, floor, name: str, pairs: int, n_images: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from rgflow_core.fidelity import UNITS
    from rgflow_core.msds_readers import FACTORS

    factors, units = FACTORS[name], UNITS[name]
    table = Table(
        title=f"mixing fidelity on {name}: global = {factors['global']}, local = "
        f"{factors['local']}; {pairs} pairs of {n_images} test images; mix S = levels >= S "
        "from a, levels < S from b"
    )
    columns = ("image", "global from a", "global: dist. to a", "local: dist. to b", "median")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        label = r.image if r.scale is None else f"mix S={r.scale}"
        table.add_row(
            label, f"{100 * r.global_from_a:.1f}%", f"{r.global_to_a:.2f}",
            f"{r.local_to_b_mean:.2f}", f"{r.local_to_b_median:.2f}",
        )  # fmt: skip
    table.add_row(
        "readers' error", "", f"{floor.global_mean:.2f}", f"{floor.local_mean:.2f}",
        f"{floor.local_median:.2f}", style="dim",
    )  # fmt: skip
    Console().print(table)
    typer.echo(
        f"global distances in {units['global']}, local in {units['local']}; the readers' error "
        f"row compares the read factors of the {floor.images} test images used with their labels"
    )
