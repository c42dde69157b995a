"""`rgflow bench`: speed and memory of a preset's architecture on this machine."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import torch
import typer
from rich.console import Console

from rgflow_cli.common import AmpOpt, use_bf16
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
    amp: AmpOpt = "off",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a preset key: key=value.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    inpaint: Annotated[
        bool, typer.Option("--inpaint", help="Time an inpainting step: causal cone vs whole image.")
    ] = False,
    sizes: Annotated[
        str, typer.Option(help="--inpaint: image sizes L, comma-separated.")
    ] = "32,64,128,256",
    hole: Annotated[int, typer.Option(help="--inpaint: edge of the square hole.")] = 8,
) -> None:
    """Measure parameters, FLOPs, training and sampling images/s, and peak memory."""
    if batch_size < 1 or steps < 1 or sample_batches < 1:
        raise UsageError("--batch-size, --steps and --sample-batches must be >= 1")
    use_bf16(amp)  # validates --amp
    cfg = load_preset(preset, parse_overrides(set_ or []))
    if inpaint:
        bench_inpaint_command(cfg, sizes, hole, resolve_device(device), as_json)
        return
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


def bench_inpaint_command(cfg, sizes: str, hole: int, device, as_json: bool) -> None:
    """`rgflow bench --inpaint`: print one row per image size (or JSON)."""
    from rgflow_core.inpaint import bench_inpaint

    try:
        sizes_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError as err:
        raise UsageError(f"--sizes must be comma-separated integers, got {sizes!r}") from err
    if not sizes_list or hole < 1:
        raise UsageError("--sizes needs at least one size and --hole must be >= 1")
    arch = (
        f"preset {cfg.name}'s architecture (n_layers {cfg.model.n_layers[-1]} on added levels, "
        f"n_res {cfg.model.n_res}, n_mlp {cfg.model.n_mlp}, n_hidden {cfg.model.n_hidden})"
    )
    with Console(stderr=True).status("benchmarking inpainting") as status:
        rows = bench_inpaint(
            cfg.model,
            sizes_list,
            hole,
            device=device,
            progress=lambda message: status.update(f"benchmarking inpainting: {message}"),
        )
    if as_json:
        figures = {"architecture": arch, "device": str(device), "hole": hole}
        typer.echo(json.dumps(figures | {"rows": [dataclasses.asdict(r) for r in rows]}))
        return
    typer.echo(
        f"inpainting a {hole}x{hole} hole, {arch}, random init with perturbed gains, "
        f"{device}, {torch.get_num_threads()} threads; one step = forward + backward + Adam"
    )
    typer.echo(
        f"{'L':>5} {'levels':>6} {'cone blocks':>11} {'full blocks':>11} "
        f"{'cone ms/step':>12} {'full ms/step':>12} {'cone x':>7} {'full x':>7}"
    )
    first = rows[0]
    for r in rows:
        typer.echo(
            f"{r.image_size:5d} {r.levels:6d} {r.cone_blocks:11d} {r.full_blocks:11d} "
            f"{r.cone_ms_per_step:12.1f} {r.full_ms_per_step:12.1f} "
            f"{r.cone_ms_per_step / first.cone_ms_per_step:7.2f} "
            f"{r.full_ms_per_step / first.full_ms_per_step:7.2f}"
        )
