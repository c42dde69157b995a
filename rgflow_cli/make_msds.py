"""`rgflow make-msds`: generate an MSDS synthetic dataset (PNG images + labels) on disk."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rgflow_core.errors import DataError, UsageError
from rgflow_core.msds import check_msds_request, msds_complete, write_msds


class MSDSName(str, Enum):
    """The two MSDS sets: which factor is global (per image) and which local (per ellipse)."""

    msds1 = "msds1"
    msds2 = "msds2"


def make_msds(
    name: Annotated[
        MSDSName,
        typer.Argument(
            help="msds1: global colour, local angle; msds2: global angle, local colour."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Parent folder; the set goes to OUT/NAME.")
    ] = Path("data"),
    train: Annotated[int, typer.Option("--train", help="Number of training images.")] = 90000,
    test: Annotated[int, typer.Option("--test", help="Number of test images.")] = 10000,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes (0 = one per CPU core).")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a complete set already in OUT/NAME.")
    ] = False,
) -> None:
    """Generate an MSDS dataset: OUT/NAME/{train,test}/*.png plus labels.npz per split."""
    check_msds_request(name.value, train, test, seed, workers)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder to hold the {name.value} set")
    if msds_complete(out, name.value) and not force:
        raise UsageError(
            f"{out / name.value} already holds a complete {name.value} set; "
            "pass --force to overwrite it"
        )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(f"generating {name.value}", total=train + test)
        folder = write_msds(
            out,
            name.value,
            train,
            test,
            seed=seed,
            workers=workers,
            progress=lambda n: bar.advance(task, n),
        )
    typer.echo(f"wrote {train} train + {test} test images of {name.value} to {folder}")
