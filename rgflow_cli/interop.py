"""`rgflow import` and `rgflow export`: models trained with the paper's public code."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rgflow_cli.io import echo_json, open_model
from rgflow_cli.options import AllowLargeOpt, JsonOpt


class PriorChoice(str, Enum):
    """The prior of an imported model."""

    auto = "auto"
    laplace = "laplace"
    gaussian = "gaussian"


def import_model(
    source: Annotated[
        Path,
        typer.Argument(metavar="SRC", help="A .state file the paper's main.py wrote."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="rgflow checkpoint to write (safetensors).")
    ],
    prior: Annotated[
        PriorChoice,
        typer.Option("--prior", help="auto: Laplace or Gaussian, read from prior.scale."),
    ] = PriorChoice.auto,
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a model trained with the paper's code (github.com/hongyehu/RG-Flow).

    The file is read with torch.load(weights_only=True) only: a pickle that names anything
    but tensors is refused and nothing in it runs. The architecture is inferred from the
    weights; the result computes the same log-density, latents and samples.
    """
    from rgflow_core.checkpoint import save_model
    from rgflow_core.files import check_outputs
    from rgflow_core.flow import parameter_count
    from rgflow_core.reference import import_reference

    check_outputs([output], [source])
    model, meta = import_reference(source, prior.value, allow_large=allow_large)
    written = save_model(model, output, **meta)
    cfg, src = model.config, meta["source"]
    if as_json:
        echo_json(
            {
                "checkpoint": str(written),
                "architecture": {**cfg.to_dict(), "block_grid": cfg.block_grid},
                "parameters": parameter_count(cfg),
                "source": src,
            }
        )
        return
    epoch = "" if src["epoch"] is None else f", epoch {src['epoch']}"
    typer.echo(
        f"read {source} (sha256 {src['sha256'][:16]}...{epoch}, {src['dtype']}, "
        f"{'with' if src['optimizer'] else 'without'} optimizer state)"
    )
    typer.echo(
        f"model: {cfg.channels}x{cfg.image_size}x{cfg.image_size}, K={cfg.kernel_size}, "
        f"{cfg.prior} prior, n_layers {list(cfg.n_layers)}, n_res {cfg.n_res}, n_mlp "
        f"{cfg.n_mlp}, n_hidden {cfg.n_hidden}, {parameter_count(cfg):,} parameters"
    )
    typer.echo(f"wrote {written}")


def export_model(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CKPT", help="An rgflow checkpoint (e.g. an imported one).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The .state file to write, e.g. 500.state.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Write a model in the paper's format, for its own scripts (plot_mix_temperature.py, ...).

    Only models that apply the aligned block grid first (block_grid aligned_first, as every
    imported model does) compute in the paper's code what they compute here. No optimizer
    state is written; the paper's loader then starts a fresh one.
    """
    from rgflow_core.files import check_outputs
    from rgflow_core.reference import export_reference, reference_args, reference_run_name

    model, _, path = open_model(checkpoint, "cpu")
    check_outputs([output], [path])
    written = export_reference(model, output)
    args = reference_args(model.config)
    folder = f"OUT_DIR/DATA/{reference_run_name(model.config)}/out_save/"
    if as_json:
        echo_json({"state": str(written), "paper_args": args, "paper_folder": folder})
        return
    typer.echo(f"wrote {written}")
    typer.echo(
        f"the paper's scripts find it as {folder}EPOCH.state when run with {' '.join(args)} "
        "--data DATA --out_dir OUT_DIR"
    )
