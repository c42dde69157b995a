"""Training an RG-Flow in a run folder: set-up, the epochs, and the files each one leaves.

`train` builds the model and optimizer, restores the run's state if it has one, writes
whatever files of the last finished epoch a kill left missing, then runs the remaining
epochs. An epoch is the loop's steps (`rgflow_core.loop`), a test evaluation, the state
saved (`rgflow_core.state`), and then the files derived from it (`EpochFiles`).

Under `torchrun` every rank trains its share of each global batch (`distributed`) and
only rank 0 writes files. The ranks agree: a refusal during set-up on any rank ends them
all with its reason, and a stop asked of any rank stops them all at the same step, with
the state saved once.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import torch

from rgflow_core import __version__, distributed
from rgflow_core.config import Preset
from rgflow_core.data import ImageData, train_batches
from rgflow_core.device import check_amp, compile_unavailable, explain_out_of_memory
from rgflow_core.errors import Interrupted, TrainingError, UsageError
from rgflow_core.flow import RGFlow, build_model, check_memory
from rgflow_core.loop import Hooks, Progress, StopRequested, Trainer, evaluate
from rgflow_core.run import RunFolder
from rgflow_core.state import load_state, save_state

SAMPLE_GRID = 64  # images in the per-epoch sample grid (8 x 8)


def train(
    preset: Preset,
    data: ImageData,
    run: RunFolder,
    device: torch.device | str = "cpu",
    hooks: Hooks | None = None,
    *,
    allow_changes: bool = False,
    allow_large: bool = False,
) -> dict[str, Any]:
    """Train `preset` on `data` in `run` (opened by the caller), continuing its state.

    Returns the last epoch's record (epoch, step, images, train and test bpd, ...).

    Raises:
        UsageError: the data or batch size do not fit, the model does not fit in memory
            (before training or during it), the device cannot do bf16, or the run's
            settings differ (see `rgflow_core.state.load_state`).
        TrainingError: the loss or the test bpd stopped being finite.
        Interrupted: the hooks asked to stop (on any rank); the state was saved.
    """
    cfg, hooks, device = preset.train, hooks or Hooks(), torch.device(device)
    rank, world = distributed.rank_world()

    def set_up() -> tuple[int, RGFlow, torch.optim.Optimizer, Progress, list[dict[str, Any]]]:
        steps = _steps_per_epoch(cfg.batch_size, len(data.train), world)
        check_amp(device, cfg.amp)
        check_memory(preset.model, device, cfg.batch_size // world, allow_large=allow_large)
        flow, optimizer = _model_and_optimizer(preset, device)
        progress, changes = Progress(), []
        if run.state.is_file():
            progress, changes = load_state(
                run.state, run.root, flow, optimizer, preset, allow_changes
            )
        return steps, flow, optimizer, progress, changes

    steps, flow, optimizer, progress, changes = distributed.all_or_none(set_up)
    net = distributed.wrap(flow, device)
    trainer = Trainer(flow, optimizer, cfg, steps, net=net, progress=progress, hooks=hooks)
    files = EpochFiles(run, preset, data, flow)
    if cfg.compile and (reason := compile_unavailable(device)):
        flow.kernel = "fast"  # the same maps, rounded differently: the log says which ran
        files.log(hooks if rank == 0 else None, f"training without torch.compile: {reason}")

    def save() -> None:
        if rank == 0:
            save_state(run.state, flow, optimizer, progress, preset, changes)

    if rank == 0:
        run.write_config(preset, changes)
        files.publish(progress)  # what a kill after the last state save left unwritten
    if progress.epoch >= cfg.epochs:
        last = progress.history[-1] if progress.history else {}
        how = (
            "raise the epochs and allow the change to go on (the cosine schedule is then "
            "re-planned over the new epochs)"
            if cfg.lr_schedule == "cosine"
            else "raise the epochs to go on"
        )
        hooks.message(f"{run.root} already finished {progress.epoch} epochs; {how}")
        return last
    if progress.step:
        files.log(
            hooks,
            f"resuming {run.root} at epoch {progress.epoch + 1}, batch {progress.batch}, "
            f"step {progress.step}",
        )
    else:
        files.log(hooks, f"training {preset.name} in {run.root}: {data.describe()}")

    flow.train()
    record: dict[str, Any] = {}
    with explain_out_of_memory(device, cfg.batch_size // world):
        while progress.epoch < cfg.epochs:
            epoch, start = progress.epoch + 1, time.perf_counter()
            hooks.epoch_start(epoch, cfg.epochs, steps, progress.batch)
            batches = train_batches(
                data.train, cfg.batch_size, cfg.seed, epoch, preset.data.flip,
                start=progress.batch, rank=rank, world=world,
            )  # fmt: skip
            try:
                trainer.train_epoch(batches, epoch, checkpoint=save)
            except StopRequested:
                save()
                distributed.barrier()  # no rank ends before the state is saved
                raise Interrupted(
                    f"interrupted at epoch {epoch}, step {progress.step}; state saved in "
                    f"{run.state}. Start it again (the same command) to continue"
                ) from None
            except TrainingError as err:
                raise TrainingError(f"{err}; {files.last_good()}") from None
            test_bpd = _test_bpd(flow, data, preset, epoch, hooks, files)
            record = trainer.end_epoch(epoch, test_bpd, time.perf_counter() - start)
            save()
            samples = files.publish(progress, hooks) if rank == 0 else None
            hooks.epoch_end(record, samples)
    return record


def _steps_per_epoch(batch_size: int, train_images: int, world: int) -> int:
    """Optimizer steps per epoch; the batch must split evenly over the processes."""
    if batch_size % world:
        raise UsageError(f"{batch_size} must be a multiple of the {world} processes", "batch_size")
    if batch_size > train_images:
        raise UsageError(
            f"{batch_size} is more than the {train_images} training images", "batch_size"
        )
    return train_images // batch_size


def _model_and_optimizer(
    preset: Preset, device: torch.device
) -> tuple[RGFlow, torch.optim.Optimizer]:
    """The model as the seed makes it, with the training's kernels, and its optimizer."""
    cfg = preset.train
    torch.manual_seed(cfg.seed)
    flow = build_model(preset.model).to(device)
    flow.checkpointing = cfg.checkpointing
    flow.kernel = "compiled" if cfg.compile else "fast"
    # fused: one kernel updates all parameters, instead of a loop of small ones
    optimizer = torch.optim.AdamW(
        flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )
    return flow, optimizer


def _test_bpd(
    flow: RGFlow, data: ImageData, preset: Preset, epoch: int, hooks: Hooks, files: EpochFiles
) -> float | None:
    """The epoch's bpd on the test images (None without any); not finite fails the run."""
    if not len(data.test):
        return None
    cfg = preset.train
    hooks.message(f"epoch {epoch}: evaluating on {len(data.test)} test images")
    amp = cfg.amp == "bf16"
    test_bpd = evaluate(flow, data.test, 256, cfg.eval_batches, amp, hooks.evaluating)
    if not math.isfinite(test_bpd):
        raise TrainingError(
            f"epoch {epoch} ended with a test bpd that is not finite ({test_bpd}); its "
            f"weights were not saved, and {files.last_good()} (try a lower learning rate)"
        )
    return test_bpd


class EpochFiles:
    """The files an epoch leaves besides the state, all derived from it: its checkpoint
    and `last.safetensors`, the metrics, the sample grid, the curves and the log line.

    `publish` writes the ones that are missing or stale, so it completes an epoch whose
    files a kill interrupted, and leaves a complete folder untouched.
    """

    def __init__(self, run: RunFolder, preset: Preset, data: ImageData, flow: RGFlow) -> None:
        self.run, self.preset, self.data, self.flow = run, preset, data, flow
        # the same latents every epoch, drawn on the CPU so that they are the same on
        # every device
        m = preset.model
        shape = (SAMPLE_GRID, m.channels, m.image_size, m.image_size)
        gen = torch.Generator().manual_seed(preset.train.seed)
        temperature = preset.train.sample_temperature
        self.sample_z = flow.prior.sample(shape, temperature, generator=gen)

    def publish(self, progress: Progress, hooks: Hooks | None = None) -> torch.Tensor | None:
        """Write the last finished epoch's missing files; return its sample grid's images
        when they were (re)made. Does nothing mid-epoch: those files exist already."""
        run, keep = self.run, self.preset.train.keep_checkpoints
        if progress.epoch == 0 or progress.batch != 0:
            return None
        record = progress.history[-1]
        epoch, step = record["epoch"], record["step"]
        metadata = self._metadata(record, progress.trace)
        for path in (run.epoch_checkpoint(epoch), run.last):
            if not run.checkpoint_is(path, epoch, step):
                run.write_checkpoint(path, self.flow, metadata)
        run.prune(keep)
        metrics_changed = run.write_metrics(progress.history)
        samples = None
        if not run.samples(epoch).is_file():
            samples = self._samples()
            run.write_samples(epoch, samples)
        if metrics_changed or not run.curves.is_file():
            title = f"{run.root.name} (preset {self.preset.name}): bits per dimension"
            run.write_curves(progress.history, self.preset.train.batch_size, title)
        line = _epoch_line(record, self.preset.train.epochs)
        if not run.logged(line):
            self.log(hooks, line)
        return samples

    def log(self, hooks: Hooks | None, text: str) -> None:
        if hooks is not None:
            hooks.message(text)
        if distributed.rank_world()[0] == 0:
            self.run.log(text)

    def last_good(self) -> str:
        """Where the last good weights are, for error messages."""
        if self.run.last.is_file():
            return f"the last good checkpoint is {self.run.last}"
        return "no checkpoint has been saved yet"

    @torch.no_grad()
    def _samples(self) -> torch.Tensor:
        was_training = self.flow.training
        self.flow.eval()
        device = next(self.flow.parameters()).device
        images = self.flow.decode(self.sample_z.to(device)).cpu()
        self.flow.train(was_training)
        return images

    def _metadata(self, record: dict[str, Any], trace: list[float]) -> dict[str, Any]:
        """What a checkpoint says about itself: the epoch's figures and its provenance
        (with the bpd of the run's first steps, so that a rerun can be checked)."""
        return {
            "epoch": record["epoch"],
            "step": record["step"],
            "images": record.get("images"),
            "train_bpd": record["train_bpd"],
            "test_bpd": record["test_bpd"],
            "dataset": self.preset.data.dataset,
            "data": {
                "source": str(self.data.source),
                "train_images": len(self.data.train),
                "test_images": len(self.data.test),
            },
            "preset": self.preset.name,
            "settings": self.preset.to_flat(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {
                "rgflow": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "loss_trace": trace,
        }


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    test = record["test_bpd"]
    test_text = "n/a" if test is None else f"{test:.4f}"
    return (
        f"epoch {record['epoch']}/{epochs}  step {record['step']}  "
        f"train {record['train_bpd']:.4f} bpd  test {test_text} bpd  "
        f"{record['images_per_s']:.0f} img/s  {record['seconds']:.0f} s"
    )
