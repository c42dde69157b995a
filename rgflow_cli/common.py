"""Options and helpers shared by the commands that use a trained model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import torch
import typer

from rgflow_core.checkpoint import find_latest_checkpoint, load_model
from rgflow_core.device import resolve_device
from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow

CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="Model checkpoint; default: $RGFLOW_CHECKPOINT, else the newest under runs/.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
AmpOpt = Annotated[str, typer.Option("--amp", help="bf16 autocast or off.")]
ResizeOpt = Annotated[
    bool, typer.Option("--resize", help="Crop and resize images of another size or mode.")
]


def use_bf16(amp: str) -> bool:
    """True for --amp bf16, False for off; anything else is a UsageError."""
    if amp not in ("bf16", "off"):
        raise UsageError(f"--amp must be bf16 or off, got {amp!r}")
    return amp == "bf16"


def resolve_checkpoint(checkpoint: Path | None, runs_dir: Path = Path("runs")) -> Path:
    """The checkpoint to use: the given one, $RGFLOW_CHECKPOINT, or the newest run's last."""
    if checkpoint is not None:
        return checkpoint
    env = os.environ.get("RGFLOW_CHECKPOINT")
    if env:
        return Path(env)
    path = find_latest_checkpoint(runs_dir)
    typer.echo(f"using checkpoint {path}", err=True)
    return path


def open_model(checkpoint: Path | None, device: str) -> tuple[RGFlow, torch.device]:
    """Load the model a command works with, in eval mode on the resolved device."""
    dev = resolve_device(device)
    model = load_model(resolve_checkpoint(checkpoint), device=dev)
    model.eval()
    return model, dev
