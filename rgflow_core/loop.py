"""The training loop: optimizer steps over any iterable of batches, and evaluation.

Free of files and printing: what happens is reported through `Hooks`, and what must
survive a restart is the `Progress` (saved by `rgflow_core.state`). All randomness is a
function of (seed, epoch, batch): the batch order and flips of an epoch
(`data.train_batches`) and the dequantisation noise of a step (`step_noise`), so a run
that restarts from a saved `Progress` replays exactly what an uninterrupted one does. The
noise of an evaluation is a function of each image's index (`eval_noise`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rgflow_core import distributed
from rgflow_core.config import TrainConfig
from rgflow_core.errors import TrainingError
from rgflow_core.preprocess import dequantize, image_bpd

EVAL_SEED = 1234  # dequantisation seed of every test-bpd evaluation
TRACE_STEPS = 100  # the first steps' losses, kept so that a rerun can be checked against them


@dataclass
class Progress:
    """Where a run stands; saved in its state. `epoch` counts finished epochs."""

    epoch: int = 0
    step: int = 0  # optimizer steps taken in all
    batch: int = 0  # batches of the current epoch already consumed
    nonfinite: int = 0  # skipped steps in all
    nonfinite_in_a_row: int = 0  # skipped steps since the last good one (survives a restart)
    epoch_bpd_sum: float = 0.0  # running sums of the current epoch (for its train_bpd)
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    trace: list[float] = field(default_factory=list)  # bpd of the first TRACE_STEPS steps


class Hooks:
    """What the loop reports; the CLI shows it. All methods are optional no-ops."""

    def message(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None: ...

    def step(self, done: int, bpd: float, images_per_s: float) -> None: ...

    def evaluating(self, done: int, total: int) -> None: ...

    def epoch_end(self, record: dict[str, Any], samples: Tensor | None) -> None: ...

    def stop_requested(self) -> bool:
        """Polled once a step: True (on any rank) saves the state and stops (Ctrl-C)."""
        return False


class StopRequested(Exception):
    """Raised by `Trainer.step` and `Trainer.train_epoch` when `Hooks.stop_requested` said
    so on any rank; every rank raises it at the same step, before that step changes
    anything."""


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step`: constant, or cosine-decayed to zero
    over `total_steps` (a pure function of the step, so a resumed run is exact)."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))
    return cfg.lr


def step_noise(shape: tuple[int, ...], seed: int, epoch: int, batch: int) -> Tensor:
    """Dequantisation noise u ~ U[0,1) of one global batch, a function of its position only."""
    state = np.random.SeedSequence([seed, epoch, batch, 1]).generate_state(1)[0]
    return torch.rand(shape, generator=torch.Generator().manual_seed(int(state)))


def eval_noise(shape: tuple[int, ...], first: int, seed: int = EVAL_SEED) -> Tensor:
    """Dequantisation noise of images `first`, `first + 1`, ... of an evaluated split
    (`shape` = (N, C, L, L)): image i's is a function of (seed, i) only, so that the
    figure does not depend on the batch size it is evaluated with."""
    one = tuple(shape[1:])
    rows = []
    for i in range(first, first + shape[0]):
        state = np.random.SeedSequence([seed, i, 2]).generate_state(1)[0]
        rows.append(torch.rand(one, generator=torch.Generator().manual_seed(int(state))))
    return torch.stack(rows) if rows else torch.empty(shape)


class Trainer:
    """Optimises a flow with AdamW, one batch of uint8 images at a time.

    Arguments:
        flow: the `RGFlow` being trained.
        optimizer: its optimizer.
        cfg: the training configuration.
        steps_per_epoch: global batches per epoch (sets the length of the cosine schedule).
        net: what runs the bijection: `flow`, or its DistributedDataParallel wrapper.
        progress: where to start (a restored `Progress`), default the beginning.
        hooks: what is told about each step.
    """

    def __init__(
        self,
        flow: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        steps_per_epoch: int,
        *,
        net: nn.Module | None = None,
        progress: Progress | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.flow, self.net, self.optimizer, self.cfg = flow, net or flow, optimizer, cfg
        self.total_steps = cfg.epochs * steps_per_epoch
        self.progress = progress or Progress()
        self.hooks = hooks or Hooks()
        self.device = next(flow.parameters()).device
        self.rank, self.world = distributed.rank_world()

    def train_epoch(
        self, batches: Iterable[Tensor], epoch: int, checkpoint: Callable[[], None] | None = None
    ) -> None:
        """Take one step per batch (this rank's share of each global batch).

        `checkpoint`, if given, is called every `save_minutes` to save the progress.

        Raises:
            StopRequested: the hooks asked to stop; the progress is consistent.
            TrainingError: `max_nonfinite` non-finite steps in a row.
        """
        p, last_save = self.progress, time.monotonic()
        for k in batches:
            start = time.perf_counter()
            self.step(k, epoch)
            p.epoch_seconds += time.perf_counter() - start
            self.hooks.step(p.batch, self.train_bpd(), p.epoch_images / max(p.epoch_seconds, 1e-9))
            if checkpoint and time.monotonic() - last_save > 60 * self.cfg.save_minutes:
                checkpoint()
                last_save = time.monotonic()
        stop = torch.full((), float(self.hooks.stop_requested()), device=self.device)
        if distributed.any_rank(stop).item():  # a stop asked for during the last step
            raise StopRequested

    def step(self, k: Tensor, epoch: int) -> bool:
        """One optimizer step on uint8 images `k`; False if it was skipped (not finite).

        Raises:
            StopRequested: a stop was asked for on some rank; the step changed nothing.
        """
        cfg, p = self.cfg, self.progress
        # the global batch: every rank holds an equal share, every world-th image of it (for
        # a full batch, cfg.batch_size images)
        images = len(k) * self.world
        noise = step_noise((images, *k.shape[1:]), cfg.seed, epoch, p.batch)
        x = dequantize(k, noise=noise[self.rank :: self.world]).to(self.device, non_blocking=True)
        loss = image_bpd(self.flow, x, net=self.net, amp=cfg.amp == "bf16").mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.grad_clip)
        else:  # no clipping, but the guard must still see a gradient that is not finite
            grads = [q.grad for q in self.flow.parameters() if q.grad is not None]
            norm = nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        bad = (~torch.isfinite(loss.detach()) | ~torch.isfinite(norm)).float()
        # one all-reduce: a bad step or a stop asked of any rank holds for all of them, so
        # they skip the same steps and stop at the same one (a fill, not a copy: no sync)
        asked = torch.full_like(bad, float(self.hooks.stop_requested()))
        verdict = distributed.any_rank(torch.stack([bad, asked]))
        # one read from the device per step: the verdict and the loss for the epoch's mean
        skip, stop, loss_value = torch.cat([verdict, loss.detach().float().view(1)]).tolist()
        if stop:
            raise StopRequested
        p.batch += 1
        if skip:
            p.nonfinite += 1
            p.nonfinite_in_a_row += 1
            if p.nonfinite_in_a_row >= cfg.max_nonfinite:
                raise TrainingError(
                    f"stopped: {p.nonfinite_in_a_row} non-finite losses in a row at epoch "
                    f"{epoch}, step {p.step} (try a lower learning rate)"
                )
            return False
        p.nonfinite_in_a_row = 0
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, p.step, self.total_steps)
        self.optimizer.step()
        p.step += 1
        step_bpd = distributed.mean_over_ranks(loss_value, self.device)
        if len(p.trace) < TRACE_STEPS:
            p.trace.append(step_bpd)
        p.epoch_bpd_sum += step_bpd * images
        p.epoch_images += images
        return True

    def train_bpd(self) -> float:
        """Mean training bpd of the current epoch so far (NaN before its first step)."""
        p = self.progress
        return p.epoch_bpd_sum / p.epoch_images if p.epoch_images else math.nan

    def end_epoch(self, epoch: int, test_bpd: float, seconds: float) -> dict[str, Any]:
        """Close the epoch: its record joins the history and the counters restart."""
        p = self.progress
        record = {
            "epoch": epoch,
            "step": p.step,
            "images": p.step * self.cfg.batch_size,
            "train_bpd": self.train_bpd(),
            "test_bpd": test_bpd,
            "images_per_s": p.epoch_images / max(p.epoch_seconds, 1e-9),
            "seconds": seconds,
            "nonfinite_steps": p.nonfinite,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        p.epoch, p.batch = epoch, 0
        p.epoch_bpd_sum, p.epoch_images, p.epoch_seconds = 0.0, 0, 0.0
        p.history.append(record)
        return record


@torch.no_grad()
def evaluate(
    flow: nn.Module,
    images: Tensor,
    batch_size: int = 256,
    max_batches: int = 0,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Mean bpd of uint8 images with the fixed dequantisation seed `EVAL_SEED`.

    The noise of each image is a function of its index (`eval_noise`), so the figure does
    not depend on `batch_size` (up to the rounding of the flow's arithmetic, which may
    differ between batch sizes). Under torch.distributed, every rank evaluates its share
    of the batches and the result is the same on all ranks. NaN when there are no images.
    """
    rank, world = distributed.rank_world()
    device = next(flow.parameters()).device
    n_batches = math.ceil(len(images) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    was_training = flow.training
    flow.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of bpd, count)
    for b in range(rank, n_batches, world):
        k = images[b * batch_size : (b + 1) * batch_size]
        x = dequantize(k, noise=eval_noise(tuple(k.shape), b * batch_size))
        bpd = image_bpd(flow, x.to(device), amp=amp)
        total += torch.stack([bpd.double().sum(), torch.tensor(len(k), device=device).double()])
        if progress:
            progress(b + 1, n_batches)
    distributed.sum_over_ranks(total)
    flow.train(was_training)
    return (total[0] / total[1]).item() if total[1] > 0 else math.nan
