"""`rgflow bench`: speed and memory of a preset's architecture on this machine."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich.console import Console

from rgflow_core.bench import run_bench
from rgflow_core.config import load_preset, parse_overrides
from rgflow_core.device import resolve_device
from rgflow_core.errors import UsageError


def bench(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name or YAML file.")] = (
        "quick"
    ),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per step.")] = 64,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 3,
    sample_batches: Annotated[int, typer.Option(help="Timed sampling batches.")] = 2,
    checkpointing: Annotated[
        bool, typer.Option(help="Activation checkpointing (memory-saving mode).")
    ] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the coupling kernels.")] = False,
    amp: Annotated[str, typer.Option(help="bf16 or off.")] = "off",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a preset key: key=value.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure parameters, FLOPs, training and sampling images/s, and peak memory."""
    if batch_size < 1 or steps < 1 or sample_batches < 1:
        raise UsageError("--batch-size, --steps and --sample-batches must be >= 1")
    if amp not in ("bf16", "off"):
        raise UsageError(f"--amp must be bf16 or off, got {amp!r}")
    cfg = load_preset(preset, parse_overrides(set_ or []))
    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        result = run_bench(
            cfg.model,
            preset=cfg.name,
            device=resolve_device(device),
            batch_size=batch_size,
            train_steps=steps,
            sample_batches=sample_batches,
            checkpointing=checkpointing,
            compile=compile,
            amp=amp,
            progress=lambda message: status.update(f"benchmarking: {message}"),
        )
    figures = dataclasses.asdict(result)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    for key, value in figures.items():
        shown = (
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if (isinstance(value, int) and not isinstance(value, bool))
            else str(value)
        )
        typer.echo(f"{key:32s} {shown}")
