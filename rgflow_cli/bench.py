"""`rgflow bench`: speed and memory of a preset's architecture on this machine."""

import dataclasses
from typing import Annotated

import typer

from rgflow_cli.options import AllowLargeOpt, Amp, AmpOpt, DeviceOpt, JsonOpt, PresetOpt, SetOpt


def bench(
    preset: PresetOpt = "quick",
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per step.")] = 64,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 3,
    sample_batches: Annotated[int, typer.Option(help="Timed sampling batches.")] = 2,
    checkpointing: Annotated[
        bool, typer.Option(help="Activation checkpointing (memory-saving mode).")
    ] = False,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the training pass (default: the preset's).",
        ),
    ] = None,
    amp: AmpOpt = Amp.off,
    set_: SetOpt = None,
    inpaint: Annotated[
        bool,
        typer.Option(
            "--inpaint",
            help="Time an inpainting step (causal cone vs whole image) and the inpaint loop.",
        ),
    ] = False,
    sizes: Annotated[
        str, typer.Option(help="--inpaint: image sizes L, comma-separated.")
    ] = "32,64,128,256",
    hole: Annotated[int, typer.Option(help="--inpaint: edge of the square hole.")] = 8,
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure parameters, FLOPs, training and sampling images/s, and peak memory."""
    from rgflow_cli.progress import console
    from rgflow_core.bench import run_bench
    from rgflow_core.config import load_preset, parse_overrides
    from rgflow_core.device import resolve_device
    from rgflow_core.files import strict_json

    cfg = load_preset(preset, parse_overrides(set_ or []))
    dev = resolve_device(device)
    if inpaint:
        _bench_inpaint(cfg, sizes, hole, dev, as_json)
        return
    with console.status("benchmarking") as status:
        result = run_bench(
            cfg.model, preset=cfg.name, device=dev, batch_size=batch_size, train_steps=steps,
            sample_batches=sample_batches, checkpointing=checkpointing,
            compile=cfg.train.compile if compile is None else compile,
            amp=amp.value, allow_large=allow_large,
            progress=lambda message: status.update(f"benchmarking: {message}"),
        )  # fmt: skip
    figures = dataclasses.asdict(result)
    if as_json:
        typer.echo(strict_json(figures))
        return
    for key, value in figures.items():
        if isinstance(value, float):
            shown = f"{value:,.3f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            shown = f"{value:,}"
        else:
            shown = str(value)
        typer.echo(f"{key:32s} {shown}")


def _bench_inpaint(cfg, sizes: str, hole: int, device, as_json: bool) -> None:
    """`rgflow bench --inpaint`: one row per image size (or JSON)."""
    import torch

    from rgflow_cli.progress import new_bar
    from rgflow_core.bench import LOOP_REPEATS, LOOP_STEPS, bench_inpaint
    from rgflow_core.errors import UsageError
    from rgflow_core.files import strict_json

    try:
        sizes_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"must be comma-separated integers, got {sizes!r}", "sizes") from None
    if not sizes_list:
        raise UsageError("needs at least one size", "sizes")
    m = cfg.model
    arch = (
        f"preset {cfg.name}'s architecture (n_layers {m.n_layers[-1]} on added levels, "
        f"n_res {m.n_res}, n_mlp {m.n_mlp}, n_hidden {m.n_hidden})"
    )
    # the inpaint() loop is timed with a progress bar advanced every step, as the command does
    with new_bar() as bar:
        task = bar.add_task("benchmarking inpainting", total=None)
        rows = bench_inpaint(
            m, sizes_list, hole, device=device, loop_steps=LOOP_STEPS, loop_repeats=LOOP_REPEATS,
            step_progress=lambda _: bar.advance(task, 1),
            progress=lambda message: bar.update(task, description=f"inpainting: {message}"),
        )  # fmt: skip
    low, high = LOOP_STEPS
    loop = (
        f"loop = the inpaint() loop: (time of {high} steps - time of {low}) / {high - low}, "
        f"median of {LOOP_REPEATS} pairs"
    )
    if as_json:
        figures = {"architecture": arch, "device": str(device), "hole": hole, "loop": loop}
        typer.echo(strict_json(figures | {"rows": [dataclasses.asdict(r) for r in rows]}))
        return
    typer.echo(
        f"inpainting a {hole}x{hole} hole, {arch}, random init with perturbed gains, "
        f"{device}, {torch.get_num_threads()} threads; one step = forward + backward + Adam; "
        f"{loop}"
    )
    typer.echo(
        f"{'L':>5} {'levels':>6} {'cone blocks':>11} {'full blocks':>11} "
        f"{'cone ms/step':>12} {'full ms/step':>12} {'loop ms/step':>12} {'setup ms':>9} "
        f"{'blocks x':>8} {'loop x':>7} {'full x':>7}"
    )
    first = rows[0]
    for r in rows:
        typer.echo(
            f"{r.image_size:5d} {r.levels:6d} {r.cone_blocks:11d} {r.full_blocks:11d} "
            f"{r.cone_ms_per_step:12.1f} {r.full_ms_per_step:12.1f} {r.loop_ms_per_step:12.1f} "
            f"{r.loop_setup_ms:9.0f} {r.cone_blocks / first.cone_blocks:8.2f} "
            f"{r.loop_ms_per_step / first.loop_ms_per_step:7.2f} "
            f"{r.full_ms_per_step / first.full_ms_per_step:7.2f}"
        )
