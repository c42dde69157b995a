"""`rgflow make-msds`: generate an MSDS synthetic dataset (PNG images + labels) on disk."""

from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.options import MSDSName, SeedOpt
from rgflow_cli.progress import new_bar
from rgflow_core.errors import UsageError


def make_msds(
    name: Annotated[
        MSDSName,
        typer.Argument(
            metavar="NAME",
            help="msds1: global colour, local angle; msds2: global angle, local colour.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Parent folder; the set goes to OUT/NAME.")
    ] = Path("data"),
    train: Annotated[int, typer.Option("--train", help="Number of training images.")] = 90000,
    test: Annotated[int, typer.Option("--test", help="Number of test images.")] = 10000,
    seed: SeedOpt = 0,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes (0 = one per CPU core).")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a complete set already in OUT/NAME.")
    ] = False,
) -> None:
    """Generate an MSDS dataset: OUT/NAME/{train,test}/*.png plus labels.npz per split."""
    from rgflow_core.files import check_outputs
    from rgflow_core.msds import check_msds_request, msds_complete, write_msds

    check_outputs([], folders=[out, out / name.value])
    check_msds_request(name.value, train, test, seed, workers, str(out))
    if msds_complete(out, name.value) and not force:
        raise UsageError(
            f"{out / name.value} already holds a complete {name.value} set; "
            "pass --force to overwrite it"
        )
    with new_bar(transient=False) as bar:
        task = bar.add_task(f"generating {name.value}", total=train + test)
        folder = write_msds(
            out, name.value, train, test, seed=seed, workers=workers,
            progress=lambda n: bar.advance(task, n),
        )  # fmt: skip
    typer.echo(f"wrote {train} train + {test} test images of {name.value} to {folder}")
