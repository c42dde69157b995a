"""`rgflow info`: what a checkpoint is and where it came from (or the shipped presets)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from rgflow_cli.io import echo_json, resolve_checkpoint
from rgflow_cli.options import JsonOpt

UNKNOWN = "unknown"  # not recorded by the rgflow that wrote the checkpoint


def info(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="[CHECKPOINT]",
            help="Checkpoint (default: $RGFLOW_CHECKPOINT, else the newest run's).",
        ),
    ] = None,
    presets: Annotated[
        bool, typer.Option("--presets", help="List the shipped presets and their main settings.")
    ] = False,
    models: Annotated[
        bool,
        typer.Option("--models", help="List the trained models shipped in the package (-c NAME)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint: architecture, size, latents per level, and its provenance
    (preset, data, epochs, bits/dim, date, versions; for an imported model, the file it
    came from and that file's sha256)."""
    if presets:
        _list_presets(as_json)
        return
    if models:
        _list_models(as_json)
        return
    from rgflow_core.checkpoint import read_metadata

    path = resolve_checkpoint(checkpoint)
    facts = describe(path, read_metadata(path))
    if as_json:
        echo_json(facts)
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for k, v in value.items():
                typer.echo(f"  {k:22s} {_shown(v)}")
        else:
            typer.echo(f"{key:24s} {_shown(value)}")


def describe(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The facts `rgflow info` shows, from a checkpoint's metadata (read_metadata)."""
    from rgflow_core.bench import forward_flops
    from rgflow_core.flow import parameter_count
    from rgflow_core.geometry import latent_levels

    cfg = meta["config"]
    levels = latent_levels(cfg.image_size, cfg.kernel_size)
    per_level = {f"level {h}": cfg.channels * int((levels == h).sum()) for h in range(cfg.levels)}
    data = meta.get("data") or {}
    return {
        "checkpoint": str(path),
        "architecture": cfg.to_dict(),
        "parameters": parameter_count(cfg),
        "forward_gflop_per_image": forward_flops(cfg) / 1e9,
        "latents_per_level": per_level,
        "provenance": {
            "preset": meta.get("preset", UNKNOWN),
            "dataset": meta.get("dataset", UNKNOWN),
            "data_source": data.get("source", UNKNOWN),
            "train_images": data.get("train_images", UNKNOWN),
            "test_images": data.get("test_images", UNKNOWN),
            "epoch": meta.get("epoch", UNKNOWN),
            "step": meta.get("step", UNKNOWN),
            "images_seen": meta.get("images", UNKNOWN),
            "train_bpd": meta.get("train_bpd", UNKNOWN),
            "test_bpd": meta.get("test_bpd", UNKNOWN),
            "date": meta.get("date", UNKNOWN),
            "versions": meta.get("versions", UNKNOWN),
        },
        "settings": meta.get("settings", UNKNOWN),
        **(
            {"imported_from": _source(source)}
            if isinstance(source := meta.get("source"), dict)
            else {}
        ),
        **(
            {"note": "written by an rgflow that did not record where the model came from"}
            if "versions" not in meta
            else {}
        ),
        **_built_in(path),
    }


def _built_in(path: Path) -> dict[str, Any]:
    """For a shipped model: its name and how it was made (the manifest's record)."""
    from rgflow_core.builtin import builtin_models, builtin_name_of

    name = builtin_name_of(path)
    if name is None:
        return {}
    entry = builtin_models()[name]
    return {"built_in": {"name": name, **{k: v for k, v in entry.items() if k != "loss_trace"}}}


def _list_models(as_json: bool) -> None:
    from rgflow_core.builtin import builtin_models, builtin_path, replay_commands

    rows = {}
    for name, entry in builtin_models().items():
        rows[name] = {
            "dataset": entry["dataset"],
            "prior": entry["prior"],
            "test_bpd": entry["test_bpd"],
            "images_seen": entry["images_seen"],
            "size_bytes": builtin_path(name).stat().st_size,
            "file": str(builtin_path(name)),
            "command": entry["commands"],
            "replay": replay_commands(entry),
            "commit": entry["commit"],
            "torch": entry["torch"],
            "sha256": entry["sha256"],
        }
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo("this installation ships no built-in models")
        return
    for name, row in rows.items():
        typer.echo(
            f"{name:16s} {row['dataset']}, {row['prior']} prior: test bpd {row['test_bpd']:.4f} "
            f"after {row['images_seen']:,} images, {row['size_bytes'] / 1e6:.1f} MB"
        )
        typer.echo(f"{'':16s} trained by: {'; '.join(row['command'])}")
        if row["replay"] != row["command"]:
            typer.echo(f"{'':16s} the same today: {'; '.join(row['replay'])}")
        typer.echo(f"{'':16s} commit {row['commit']}, torch {row['torch']}, sha256 {row['sha256']}")
    typer.echo("use one wherever a checkpoint is asked for: -c NAME (a file of that name wins)")


def _source(source: dict[str, Any]) -> dict[str, Any]:
    """Where an imported model came from (`rgflow import`): the file and its format."""
    keys = ("format", "file", "sha256", "epoch", "optimizer", "multi_gpu_prefix", "dtype")
    return {k: source.get(k, UNKNOWN) for k in keys}


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "null" if value is None else str(value)


def _list_presets(as_json: bool) -> None:
    from rgflow_core.config import load_preset, preset_names

    rows = {}
    for name in preset_names():
        p = load_preset(name)
        rows[name] = {
            "dataset": p.data.dataset,
            "n_layers": list(p.model.n_layers),
            "n_hidden": p.model.n_hidden,
            "epochs": p.train.epochs,
            "batch_size": p.train.batch_size,
        }
    if as_json:
        echo_json(rows)
        return
    for name, row in rows.items():
        typer.echo(f"{name:10s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
