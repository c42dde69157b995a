"""`rgflow train` and `rgflow eval`: the CLI over rgflow_core.train and rgflow_core.loop."""

import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rgflow_cli.io import echo_json, open_model, resolve_checkpoint
from rgflow_cli.options import (
    AllowLargeOpt,
    Amp,
    AmpOpt,
    BatchOpt,
    CheckpointOpt,
    Dataset,
    DeviceOpt,
    JsonOpt,
    PresetOpt,
    SetOpt,
    Split,
)
from rgflow_cli.progress import new_bar
from rgflow_core.errors import Interrupted, RGFlowError, UsageError

if TYPE_CHECKING:
    import torch

    from rgflow_core.config import DataConfig


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and a scheduler's notice


class RichHooks:
    """Progress bar per epoch, summary lines, TensorBoard (optional), and Ctrl-C or
    SIGTERM turned into a clean stop. Implements `rgflow_core.loop.Hooks`."""

    def __init__(self, quiet: bool, tensorboard: Any = None) -> None:
        from rich.progress import TextColumn

        self.quiet = quiet
        self.bar = new_bar(TextColumn("{task.fields[info]}"), quiet=quiet)
        self.task: Any = None
        self.stop = False
        self.tensorboard = tensorboard

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

    def epoch_end(self, record: dict[str, Any], samples: "torch.Tensor | None") -> None:
        if self.tensorboard is not None:
            self.tensorboard.epoch(record, samples)

    def stop_requested(self) -> bool:
        return self.stop

    def on_signal(self, signum, frame) -> None:
        """The first signal asks for a stop (agreed by all ranks at the next step, the
        state saved); a second one aborts at once."""
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        self.message("stopping after this step and saving the state (Ctrl-C again to abort)")


class TensorBoard:
    """Epoch scalars and the sample grid in RUN/tb/ (needs the `tensorboard` package)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises ImportError when tensorboard is missing
            raise UsageError(
                "--tensorboard needs the tensorboard package: pip install 'rgflow[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(folder))

    def epoch(self, record: dict[str, Any], samples: "torch.Tensor | None") -> None:
        images = record.get("images", record["step"])
        for key in ("train_bpd", "test_bpd", "lr", "images_per_s", "nonfinite_steps"):
            if isinstance(record.get(key), int | float):
                self.writer.add_scalar(key, record[key], images)
        if samples is not None:
            from torchvision.utils import make_grid

            self.writer.add_image("samples", make_grid(samples, nrow=8), images)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def train(
    preset: PresetOpt = "quick",
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    out: Annotated[Path, typer.Option(help="Parent folder of run folders.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Run name (default: the preset's name).")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Total epochs (a cosine schedule's length: other epochs on resume need "
            "--allow-changes)."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    device: DeviceOpt = "auto",
    seed: Annotated[
        int | None, typer.Option(help="Seed of initialisation, batch order and noise.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Require a run to continue (the same command also resumes without it)."),
    ] = False,
    allow_changes: Annotated[
        bool,
        typer.Option(
            "--allow-changes",
            help="Resume even if settings that change the run's course differ (recorded).",
        ),
    ] = False,
    amp: Annotated[Amp | None, typer.Option(help="bf16 autocast, or off.")] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the training pass (every preset does by default; needs a C++ "
            "compiler on a CPU).",
        ),
    ] = None,
    checkpointing: Annotated[
        bool, typer.Option("--checkpointing", help="Activation checkpointing: less memory.")
    ] = False,
    deterministic: Annotated[
        bool,
        typer.Option(
            "--deterministic",
            help="Deterministic GPU kernels: a run repeats bitwise (slower; CPU runs always do).",
        ),
    ] = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="Also log to RUN/tb/ (rgflow[tensorboard]).")
    ] = False,
    set_: SetOpt = None,
    allow_large: AllowLargeOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a model; the same command again continues an interrupted run."""
    from rgflow_core import distributed
    from rgflow_core.config import load_preset, parse_overrides
    from rgflow_core.device import use_deterministic_algorithms
    from rgflow_core.run import RunFolder
    from rgflow_core.train import train as train_run

    overrides = parse_overrides(set_ or [])
    flags = {
        "data_root": str(data_root) if data_root is not None else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "amp": amp.value if amp is not None else None,
        "compile": compile,
        "checkpointing": checkpointing or None,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_preset(preset, overrides)
    run_name = name or cfg.name
    if Path(run_name).name != run_name or run_name in ("", ".", ".."):
        raise UsageError(f"{run_name!r} must be a plain name, not a path", "name")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give a folder to hold run folders", "out")

    if deterministic:
        use_deterministic_algorithms()
    dev = distributed.init(device)
    rank = distributed.rank_world()[0]
    try:
        with contextlib.ExitStack() as owned:

            def own() -> tuple[RunFolder, TensorBoard | None]:
                folder = RunFolder(out / run_name).open(True if resume else None, lock=rank == 0)
                run = owned.enter_context(folder)
                board = TensorBoard(run.root / "tb") if tensorboard and rank == 0 else None
                if board is not None:
                    owned.callback(board.close)
                return run, board

            # the lock and the folder checks come before minutes are spent on the data; a
            # refusal on rank 0 (which alone takes the lock) ends every rank
            run, board = distributed.all_or_none(own)
            hooks = RichHooks(quiet or rank != 0, board)
            data = _load_data(cfg, hooks.quiet)
            previous = {sig: signal.signal(sig, hooks.on_signal) for sig in STOP_SIGNALS}
            try:
                with hooks.bar:
                    record = train_run(
                        cfg, data, run, dev, hooks,
                        allow_changes=allow_changes, allow_large=allow_large,
                    )  # fmt: skip
            except Interrupted:
                _stopped_together(rank)
                raise
            finally:
                for sig, handler in previous.items():
                    if signal.getsignal(sig) == hooks.on_signal:
                        signal.signal(sig, handler)
    except (RGFlowError, OSError) as err:
        if rank != 0 and getattr(err, "every_rank", False):
            sys.exit(1)  # rank 0 says why, once
        raise
    finally:
        distributed.shutdown()
    if rank == 0 and record:
        samples = run.samples(record["epoch"])
        test = record.get("test_bpd")
        typer.echo(
            f"done: test bpd {'n/a' if test is None else f'{test:.4f}'} after "
            f"{record['epoch']} epochs; checkpoint {run.last}, samples {samples}"
        )


def _stopped_together(rank: int) -> None:
    """After a stop that every rank agreed to (the state saved): rank 0 alone says so.

    The other ranks leave at once, silently; torchrun then signals what is left of the
    job, so rank 0 first stops listening to signals, lest one cut its line short.
    """
    from rgflow_core import distributed

    if distributed.rank_world()[1] == 1:
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    distributed.barrier()  # the others go only once rank 0 cannot be cut short
    if rank != 0:
        distributed.shutdown()
        sys.exit(130)


def _load_data(cfg, quiet: bool):
    """The preset's dataset, with a progress bar (generating MSDS if it is missing);
    under torchrun decoded by one process per machine and shared with the others."""
    from rgflow_core import distributed
    from rgflow_core.data import ImageData, load_dataset

    def load() -> ImageData:
        with new_bar(quiet=quiet) as bar:
            task = bar.add_task("loading data", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            return load_dataset(cfg.data, cfg.model, progress)

    if distributed.rank_world()[1] == 1:
        return load()

    def tensors() -> dict[str, Any]:  # what the other processes map from one file
        data = load()
        return {"name": data.name, "source": str(data.source), "train": data.train,
                "test": data.test}  # fmt: skip

    shared = distributed.once_per_machine(tensors)
    return ImageData(shared["name"], shared["train"], shared["test"], Path(shared["source"]))


def evaluate(
    checkpoint: CheckpointOpt = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    dataset: Annotated[
        Dataset | None, typer.Option(help="Dataset (default: the one the model was trained on).")
    ] = None,
    split: Annotated[Split, typer.Option(help="The split to evaluate.")] = Split.test,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = "auto",
    amp: AmpOpt = Amp.off,
    allow_large: AllowLargeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Bits per dimension of a checkpoint on a dataset split (fixed dequantisation seed).

    The data is the checkpoint's run's own (its config.yaml), or --dataset/--data-root;
    nothing is generated or downloaded.
    """
    from rgflow_core.checkpoint import read_metadata
    from rgflow_core.checks import check_int
    from rgflow_core.data import load_dataset
    from rgflow_core.device import check_amp
    from rgflow_core.loop import evaluate as evaluate_bpd

    check_int("batch_size", batch_size, 1, 1 << 14)
    path = resolve_checkpoint(checkpoint)
    meta = read_metadata(path)
    data_cfg = _data_config(path, meta, dataset.value if dataset else None, data_root)
    model, dev, _ = open_model(path, device, allow_large)
    check_amp(dev, amp.value)
    data = load_dataset(data_cfg, meta["config"], splits=(split.value,), generate=False)
    images = data.train if split is Split.train else data.test
    if len(images) == 0:
        raise UsageError(f"the {split.value} split of {data_cfg.dataset} is empty", "split")
    with new_bar() as bar:
        task = bar.add_task(f"evaluating {len(images)} {split.value} images", total=None)
        bpd = evaluate_bpd(
            model, images, batch_size, amp=amp is Amp.bf16,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    if bpd != bpd:
        raise UsageError(f"the bits per dimension of {path} on this data are not finite (NaN)")
    if as_json:
        figures = {"bpd": bpd, "split": split.value, "images": len(images), "amp": amp.value}
        echo_json(figures)
    else:
        typer.echo(f"{data_cfg.dataset} {split.value}: {bpd:.4f} bits/dim on {len(images)} images")


def _data_config(
    ckpt: Path, meta: dict, dataset: str | None, data_root: Path | None
) -> "DataConfig":
    """Data settings for evaluating `ckpt`: its run's config.yaml, else the dataset's preset
    (with --data-root, or the data folder recorded in the checkpoint)."""
    from dataclasses import replace

    from rgflow_core.config import DataConfig, load_preset, preset_names
    from rgflow_core.run import run_data_config

    data = run_data_config(ckpt) if dataset is None else None
    if data is None:
        name = dataset or meta.get("dataset")
        if name is None:
            raise UsageError(f"{ckpt} does not say its dataset; pass --dataset", "dataset")
        data = load_preset(name).data if name in preset_names() else DataConfig()
        data = replace(data, dataset=name)
        recorded = (meta.get("settings") or {}).get("data_root")
        if data_root is None and dataset is None and isinstance(recorded, str):
            data = replace(data, data_root=recorded)
    if data_root is not None:
        data = replace(data, data_root=str(data_root))
    return data
