"""`rgflow train` and `rgflow eval`: the CLI over rgflow_core.train."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.distributed as dist
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rgflow_cli.common import AmpOpt, CheckpointOpt, DeviceOpt, resolve_checkpoint, use_bf16
from rgflow_core.checkpoint import load_model, read_metadata
from rgflow_core.config import DataConfig, load_preset, parse_overrides, preset_names
from rgflow_core.data import load_dataset
from rgflow_core.device import resolve_device
from rgflow_core.errors import UsageError
from rgflow_core.train import Hooks, RunFolder, Trainer, evaluate

console = Console(stderr=True)


class RichHooks(Hooks):
    """Progress bar per epoch, summary lines, and Ctrl-C turned into a clean stop."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
            transient=True,
        )
        self.task: Any = None
        self.stop = False

    def message(self, text: str) -> None:
        if not self.quiet:
            self.bar.console.print(text, highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(
            f"epoch {epoch}/{epochs}", total=steps, completed=first_step, info=""
        )

    def step(self, done: int, bpd: float, images_per_s: float) -> None:
        self.bar.update(self.task, completed=done, info=f"{bpd:.3f} bpd  {images_per_s:.0f} img/s")

    def evaluating(self, done: int, total: int) -> None:
        self.bar.update(self.task, info=f"test batch {done}/{total}")

    def stop_requested(self) -> bool:
        return self.stop

    def on_sigint(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop = True
        self.message("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")


def _init_distributed(device: str) -> tuple[torch.device, int]:
    """Join the process group when launched by torchrun; return this rank's device and rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return resolve_device(device), 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev, dist.get_rank()


def train(
    preset: Annotated[
        str,
        typer.Option("--preset", "-p", help=f"One of {', '.join(preset_names())}, or a YAML file."),
    ] = "quick",
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    out: Annotated[Path, typer.Option(help="Parent folder of run folders.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Run name (default: the preset's name).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    device: DeviceOpt = "auto",
    seed: Annotated[
        int | None, typer.Option(help="Seed of initialisation, order and noise.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Require a run to continue (the same command also resumes without it)."),
    ] = False,
    amp: Annotated[str | None, typer.Option(help="bf16 autocast or off.")] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the couplings.")
    ] = False,
    checkpointing: Annotated[
        bool, typer.Option("--checkpointing", help="Activation checkpointing: less memory.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any preset key: key=value (value is YAML)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a model; the same command again continues an interrupted run."""
    overrides = parse_overrides(set_ or [])
    flags = {
        "data_root": str(data_root) if data_root is not None else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "amp": amp,
        "compile": compile or None,
        "checkpointing": checkpointing or None,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_preset(preset, overrides)
    run_dir = out / (name or cfg.name)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder to hold run folders")

    run_resume = True if resume else None
    RunFolder(run_dir).check(run_resume)  # before spending minutes on the data
    dev, rank = _init_distributed(device)
    hooks = RichHooks(quiet or rank != 0)
    try:
        data = _load_data(cfg, hooks, rank)
        trainer = Trainer(cfg, data, run_dir, dev, hooks, resume=run_resume)
        previous = signal.signal(signal.SIGINT, hooks.on_sigint)
        try:
            with hooks.bar:
                record = trainer.fit()
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0 and record:
        typer.echo(
            f"done: test bpd {record['test_bpd']:.4f} after {record['epoch']} epochs; "
            f"checkpoint {trainer.run.last}, samples {trainer.run.samples(record['epoch'])}"
        )


def _load_data(cfg, hooks: RichHooks, rank: int):
    """Rank 0 loads first (and generates MSDS if needed); the others wait, then read."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=hooks.quiet,
        transient=True,
    ) as bar:
        task = bar.add_task("loading data", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        if dist.is_initialized() and rank != 0:
            dist.barrier()
        data = load_dataset(cfg.data, cfg.model, progress)
        if dist.is_initialized() and rank == 0:
            dist.barrier()
    return data


def eval_command(
    checkpoint: CheckpointOpt = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the one the model was trained on).")
    ] = None,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 256,
    device: DeviceOpt = "auto",
    amp: AmpOpt = "off",
    as_json: Annotated[bool, typer.Option("--json", help='Print {"bpd": ...}.')] = False,
) -> None:
    """Bits per dimension of a checkpoint on a dataset split (fixed dequantisation seed)."""
    if split not in ("train", "test"):
        raise UsageError(f"--split must be train or test, got {split!r}")
    bf16 = use_bf16(amp)
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    path = resolve_checkpoint(checkpoint)
    meta = read_metadata(path)
    data_cfg = _data_config(path, meta, dataset, data_root)
    dev = resolve_device(device)
    model = load_model(path, device=dev)
    data = load_dataset(data_cfg, meta["config"], splits=(split,))
    images = data.train if split == "train" else data.test
    if len(images) == 0:
        raise UsageError(f"the {split} split of {data_cfg.dataset} is empty")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"evaluating {len(images)} {split} images", total=None)
        bpd = evaluate(
            model,
            images,
            batch_size=batch_size,
            amp=bf16,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        typer.echo(json.dumps({"bpd": bpd, "split": split, "images": len(images), "amp": amp}))
    else:
        typer.echo(f"{data_cfg.dataset} {split}: {bpd:.4f} bits/dim on {len(images)} images")


def _data_config(ckpt: Path, meta: dict, dataset: str | None, data_root: Path | None) -> DataConfig:
    """Data settings for evaluating `ckpt`: its run's config.yaml, else the dataset's preset."""
    run_config = ckpt.parent.parent / "config.yaml"
    if run_config.is_file() and dataset is None:
        data = load_preset(run_config).data
    else:
        name = dataset or meta.get("dataset")
        if name is None:
            raise UsageError(f"{ckpt} does not say its dataset; pass --dataset")
        base = load_preset(name).data if name in preset_names() else DataConfig()
        data = DataConfig(**{**base.__dict__, "dataset": name})
    if data_root is not None:
        data = DataConfig(**{**data.__dict__, "data_root": str(data_root)})
    return data
