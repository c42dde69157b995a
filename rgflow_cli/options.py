"""Options shared by the commands: one meaning of each flag everywhere.

Choices are `str` Enums and pure-presentation ranges (zoom, grid width) use typer's
min/max. Values the core checks itself (temperatures, levels, counts) are not checked
here: the core raises an error naming the argument, and `main` shows the flag.

This module imports neither torch nor the core's model code, so `--help` is instant.
"""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rgflow_core.config import DATASETS


class Amp(str, Enum):
    """Mixed precision."""

    bf16 = "bf16"
    off = "off"


class Split(str, Enum):
    """A dataset split."""

    train = "train"
    test = "test"


class MSDSName(str, Enum):
    """The two MSDS sets: which factor is global (per image) and which local (per ellipse)."""

    msds1 = "msds1"
    msds2 = "msds2"


Dataset = Enum("Dataset", {name: name for name in DATASETS}, type=str)  # type: ignore[misc]

MSDSRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Folder holding the MSDS set (DATA_ROOT/NAME); default: the model's own data, "
        "else data/, else a set generated once into the cache.",
    ),
]
MSDSSetOpt = Annotated[
    MSDSName | None,
    typer.Option(
        "--dataset",
        help="msds1: colour global; msds2: angle global (default: the model's own set).",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="Model checkpoint, or a built-in model's name (msds1, msds2, ...: see "
        "`rgflow info --models`); default: $RGFLOW_CHECKPOINT, else the newest under runs/.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Random seed.")]
AmpOpt = Annotated[Amp, typer.Option("--amp", help="bf16 autocast, or off.")]
ResizeOpt = Annotated[
    bool, typer.Option("--resize", help="Crop and resize images of another size or mode.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ZoomOpt = Annotated[
    int, typer.Option("--zoom", min=1, max=32, help="Enlarge images (and figure cells) this much.")
]
NrowOpt = Annotated[int, typer.Option("--nrow", min=1, max=1024, help="Images per row of a grid.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", "-t", help="Prior temperature (> 0; 1 = the model).")
]
LevelOpt = Annotated[int, typer.Option("--level", "-l", help="RG level (0 = finest).")]
FpsOpt = Annotated[
    float, typer.Option("--fps", min=0.1, max=100, help="Frames per second of a GIF.")
]
AllowLargeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-large", help="Go on even when the model or batch looks too large for memory."
    ),
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        "-p",
        help="A shipped preset's name (see `rgflow info --presets`) or a YAML file.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any preset key: key=value (the value is YAML)."),
]
