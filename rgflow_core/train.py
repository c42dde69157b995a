"""The training loop: resumable to the bit, observable, and safe to kill.

A run lives in one folder:

    RUN/config.yaml                      the resolved preset
    RUN/metrics.jsonl                    one JSON object per epoch
    RUN/train.log                        what was printed, with times
    RUN/samples/epoch-NNNN.png           a grid decoded from fixed latents every epoch
    RUN/checkpoints/epoch-NNNN.safetensors, last.safetensors   models (`load_model`)
    RUN/checkpoints/state.pt             everything needed to continue: weights, optimizer,
                                         counters, history (loads with weights_only=True)

All randomness is a function of (seed, epoch, step): the batch order and flips of an epoch
(`data.epoch_generator`) and the dequantisation noise of a step. A resumed run therefore
replays exactly what an uninterrupted one would have done, and the state file needs no
RNG snapshots. Every file is written atomically; `state.pt` is written first, so whatever
moment a run is killed, the next start continues from the last state saved.

Under `torchrun` the model is wrapped in DistributedDataParallel; every rank takes its
share of each global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor

from rgflow_core.checkpoint import atomic_write_bytes, load_state, save_model, save_state
from rgflow_core.config import Preset
from rgflow_core.data import ImageData, train_batches
from rgflow_core.errors import CheckpointError, Interrupted, TrainingError, UsageError
from rgflow_core.flow import RGFlow, build_model
from rgflow_core.images import write_grid
from rgflow_core.preprocess import bits_per_dim

EVAL_SEED = 1234  # dequantisation seed of every test-bpd evaluation
SAMPLE_GRID = 64  # images in the per-epoch sample grid (8 x 8)


class Hooks:
    """What the loop reports; the CLI shows it with rich. All methods are optional no-ops."""

    def message(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None: ...

    def step(self, done: int, bpd: float, images_per_s: float) -> None: ...

    def epoch_end(self, record: dict[str, Any]) -> None: ...

    def evaluating(self, done: int, total: int) -> None: ...

    def stop_requested(self) -> bool:
        """Polled between steps: True saves a checkpoint and stops (Ctrl-C)."""
        return False


@dataclass
class RunFolder:
    """Paths of a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def state(self) -> Path:
        return self.checkpoints / "state.pt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}.safetensors"

    def samples(self, epoch: int) -> Path:
        return self.root / "samples" / f"epoch-{epoch:04d}.png"

    def check(self, resume: bool | None) -> None:
        """Refuse a folder that is a file, a resume with nothing to resume, a fresh start
        over a run (when `resume` is False), or checkpoints without a state to continue."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"run folder {root} is a file; choose another --out or --name")
        has_state = self.state.is_file()
        if resume is True and not has_state:
            raise UsageError(f"nothing to resume: {self.state} does not exist")
        if resume is False and has_state:
            raise UsageError(f"{root} already holds a run; resume it or choose another --name")
        if not has_state and self.checkpoints.is_dir() and any(self.checkpoints.iterdir()):
            raise UsageError(
                f"{root} holds checkpoints but no training state to resume from; "
                "choose another --name rather than overwrite them"
            )


@dataclass
class Progress:
    """Counters saved in the state file. `epoch` counts finished epochs."""

    epoch: int = 0
    step: int = 0  # optimizer steps taken in all
    batch: int = 0  # batches of the current epoch already consumed
    nonfinite: int = 0  # skipped steps in all
    epoch_bpd_sum: float = 0.0  # running sums of the current epoch (for its train_bpd)
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def step_noise(shape: tuple[int, ...], seed: int, epoch: int, batch: int) -> Tensor:
    """Dequantisation noise u ~ U[0,1) of one global batch, a function of its position only."""
    state = np.random.SeedSequence([seed, epoch, batch, 1]).generate_state(1)[0]
    return torch.rand(shape, generator=torch.Generator().manual_seed(int(state)))


def image_bpd(net: torch.nn.Module, flow: RGFlow, x: Tensor, amp: bool) -> Tensor:
    """Bits per dim (B,) of dequantised images x in [0, 1]; `net` may wrap `flow` (DDP)."""
    device_type = x.device.type
    y, ladj_pre = flow.preprocess(x)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        z, ladj = net(y)
    logp = flow.prior.log_prob(z.float()) + ladj.float() + ladj_pre
    return bits_per_dim(logp, flow.config.dims)


@torch.no_grad()
def evaluate(
    flow: RGFlow,
    images: Tensor,
    batch_size: int = 256,
    max_batches: int = 0,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Mean bpd of uint8 images with the fixed dequantisation seed `EVAL_SEED`.

    Under torch.distributed, every rank evaluates its share of the batches and the result
    is the same on all ranks.
    """
    rank, world = _rank()
    device = next(flow.parameters()).device
    n_batches = math.ceil(len(images) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    was_training = flow.training
    flow.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of bpd, count)
    for b in range(rank, n_batches, world):
        k = images[b * batch_size : (b + 1) * batch_size]
        u = step_noise(tuple(k.shape), EVAL_SEED, 0, b)
        x = (k.float() + u) / 256
        bpd = image_bpd(flow, flow, x.to(device), amp)
        total += torch.stack([bpd.double().sum(), torch.tensor(len(k), device=device).double()])
        if progress:
            progress(b + 1, n_batches)
    if world > 1:
        dist.all_reduce(total)
    flow.train(was_training)
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


class Trainer:
    """Trains `preset` on `data` in `run_dir`, continuing from its state file if there is one.

    Arguments:
        resume: True requires a state to continue from; False requires none (a fresh run);
            None continues when there is one and starts fresh otherwise.
    """

    def __init__(
        self,
        preset: Preset,
        data: ImageData,
        run_dir: str | Path,
        device: torch.device | str = "cpu",
        hooks: Hooks | None = None,
        resume: bool | None = None,
    ) -> None:
        self.preset = preset
        self.cfg = preset.train
        self.data = data
        self.run = RunFolder(Path(run_dir))
        self.device = torch.device(device)
        self.hooks = hooks or Hooks()
        self.run.check(resume)
        self.rank, self.world = _rank()
        if self.cfg.batch_size % self.world:
            raise UsageError(
                f"batch_size {self.cfg.batch_size} must be a multiple of the number of "
                f"processes ({self.world})"
            )
        if len(data.train) < self.cfg.batch_size:
            raise UsageError(
                f"the training split has {len(data.train)} images, fewer than one batch "
                f"({self.cfg.batch_size})"
            )

        torch.manual_seed(self.cfg.seed)
        self.flow = build_model(preset.model).to(self.device)
        self.flow.checkpointing = self.cfg.checkpointing
        self.flow.compile_blocks(self.cfg.compile)
        # fused: one kernel updates all parameters, instead of a loop of small ones
        self.optimizer = torch.optim.AdamW(
            self.flow.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=True
        )
        self.progress = Progress()
        if self.run.state.is_file():
            self._load_state()
        self.net: torch.nn.Module = self.flow
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.flow, device_ids=ids)
        self._consecutive_bad = 0
        # the per-epoch sample grid decodes the same latents every epoch (drawn on the CPU,
        # so that they are the same on every device)
        cfg = self.preset.model
        shape = (SAMPLE_GRID, cfg.channels, cfg.image_size, cfg.image_size)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self.sample_z = self.flow.prior.sample(
            shape, self.cfg.sample_temperature, generator=gen
        ).to(self.device)

    # --- run folder -----------------------------------------------------------------

    def _write_config(self) -> None:
        text = f"# resolved preset {self.preset.name!r}\n" + yaml.safe_dump(
            self.preset.to_flat(), sort_keys=False
        )
        atomic_write_bytes(self.run.config, text.encode())

    def _log(self, text: str) -> None:
        self.hooks.message(text)
        if self.rank == 0:
            self.run.root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.run.log, "a") as f:
                f.write(f"{stamp} {text}\n")

    # --- state --------------------------------------------------------------------

    def _load_state(self) -> None:
        state = load_state(self.run.state)
        if state.get("model_config") != self._model_config():
            raise UsageError(
                f"{self.run.root} was trained with another model config; "
                "choose another --name (or use the run's own config.yaml as preset)"
            )
        try:
            self.flow.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.progress = Progress(**state["progress"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{self.run.state} is not a usable training state ({err})"
            ) from err
        for group in self.optimizer.param_groups:  # weight decay may change on resume
            group["weight_decay"] = self.cfg.weight_decay

    def _model_config(self) -> dict[str, Any]:
        """The model config as the state file stores it (plain JSON-like types)."""
        config = asdict(self.preset.model)
        config["n_layers"] = list(config["n_layers"])
        return config

    def _save_state(self) -> None:
        if self.rank != 0:
            return
        state = {
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            "model_config": self._model_config(),
        }
        save_state(state, self.run.state)

    def _save_model(self, path: Path, test_bpd: float | None) -> None:
        save_model(
            self.flow,
            path,
            epoch=self.progress.epoch,
            step=self.progress.step,
            test_bpd=test_bpd,
            dataset=self.preset.data.dataset,
        )

    def _rewrite_metrics(self) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.progress.history)
        atomic_write_bytes(self.run.metrics, lines.encode())

    # --- the loop -------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train up to `epochs`; return the last epoch's record."""
        cfg, p = self.cfg, self.progress
        if p.epoch >= cfg.epochs:
            last = p.history[-1] if p.history else {}
            self._log(
                f"{self.run.root} already finished {p.epoch} epochs "
                f"(test bpd {last.get('test_bpd', float('nan')):.4f}); raise --epochs to go on"
            )
            return last
        if self.rank == 0:
            self.run.root.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._rewrite_metrics()  # drops nothing, restores lines a kill may have cut
        if p.step:
            self._log(
                f"resuming {self.run.root} at epoch {p.epoch + 1}, batch {p.batch}, step {p.step}"
            )
        else:
            self._log(f"training {self.preset.name} in {self.run.root}: {self.data.describe()}")
        self.flow.train()
        record: dict[str, Any] = {}
        while p.epoch < cfg.epochs:
            record = self._epoch()
        return record

    def _epoch(self) -> dict[str, Any]:
        cfg, p = self.cfg, self.progress
        epoch = p.epoch + 1
        steps = len(self.data.train) // cfg.batch_size
        self.hooks.epoch_start(epoch, cfg.epochs, steps, p.batch)
        batches = train_batches(
            self.data.train,
            cfg.batch_size,
            cfg.seed,
            epoch,
            self.preset.data.flip,
            start=p.batch,
            rank=self.rank,
            world=self.world,
        )
        last_save = time.monotonic()
        start = time.perf_counter()
        for k in batches:
            if self.hooks.stop_requested():
                self._interrupt()
            p.epoch_seconds += self._train_step(k, epoch)
            self.hooks.step(
                p.batch,
                p.epoch_bpd_sum / max(p.epoch_images, 1),
                p.epoch_images / max(p.epoch_seconds, 1e-9),
            )
            if time.monotonic() - last_save > 60 * cfg.save_minutes and p.batch < steps:
                self._save_state()
                last_save = time.monotonic()
        if self.hooks.stop_requested():
            self._interrupt()

        self.hooks.message(f"epoch {epoch}: evaluating on {len(self.data.test)} test images")
        test_bpd = (
            evaluate(
                self.flow,
                self.data.test,
                max_batches=cfg.eval_batches,
                amp=cfg.amp == "bf16",
                progress=self.hooks.evaluating,
            )
            if len(self.data.test)
            else float("nan")
        )
        record = {
            "epoch": epoch,
            "step": p.step,
            "train_bpd": p.epoch_bpd_sum / max(p.epoch_images, 1),
            "test_bpd": test_bpd,
            "images_per_s": p.epoch_images / max(p.epoch_seconds, 1e-9),
            "seconds": time.perf_counter() - start,
            "nonfinite_steps": p.nonfinite,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        p.epoch, p.batch = epoch, 0
        p.epoch_bpd_sum, p.epoch_images, p.epoch_seconds = 0.0, 0, 0.0
        p.history.append(record)
        if self.rank == 0:
            self._save_state()
            self._save_model(self.run.epoch_checkpoint(epoch), test_bpd)
            self._save_model(self.run.last, test_bpd)
            self._prune_checkpoints()
            self._rewrite_metrics()
            self._write_samples(epoch)
        self._log(
            f"epoch {epoch}/{cfg.epochs}  step {p.step}  train {record['train_bpd']:.4f} bpd  "
            f"test {test_bpd:.4f} bpd  {record['images_per_s']:.0f} img/s  "
            f"{record['seconds']:.0f} s"
        )
        self.hooks.epoch_end(record)
        return record

    def _train_step(self, k: Tensor, epoch: int) -> float:
        """One optimizer step on this rank's share `k` of a global batch; returns seconds."""
        cfg, p = self.cfg, self.progress
        t0 = time.perf_counter()
        u = step_noise((cfg.batch_size, *k.shape[1:]), cfg.seed, epoch, p.batch)
        x = ((k.float() + u[self.rank :: self.world]) / 256).to(self.device, non_blocking=True)
        bpd = image_bpd(self.net, self.flow, x, cfg.amp == "bf16")
        loss = bpd.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.grad_clip)
        else:
            norm = torch.zeros((), device=self.device)
        bad = (~torch.isfinite(loss.detach()) | ~torch.isfinite(norm)).float()
        if self.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        p.batch += 1
        if bad.item():
            p.nonfinite += 1
            self._consecutive_bad += 1
            if self._consecutive_bad >= cfg.max_nonfinite:
                raise TrainingError(
                    f"stopped: {self._consecutive_bad} non-finite losses in a row at epoch "
                    f"{epoch}, step {p.step}; the last good checkpoint is {self.run.last} "
                    "(try a lower --lr)"
                )
            return time.perf_counter() - t0
        self._consecutive_bad = 0
        self._set_lr()
        self.optimizer.step()
        p.step += 1
        loss_value = loss.item()
        if self.world > 1:
            t = torch.tensor([loss_value], device=self.device)
            dist.all_reduce(t)
            loss_value = t.item() / self.world
        n = cfg.batch_size
        p.epoch_bpd_sum += loss_value * n
        p.epoch_images += n
        return time.perf_counter() - t0

    def _set_lr(self) -> None:
        """The learning rate of the next step: constant, or cosine-decayed over the run."""
        lr = self.cfg.lr
        if self.cfg.lr_schedule == "cosine":
            total = self.cfg.epochs * (len(self.data.train) // self.cfg.batch_size)
            lr *= 0.5 * (1 + math.cos(math.pi * min(self.progress.step / total, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _interrupt(self) -> None:
        self._save_state()
        raise Interrupted(
            f"interrupted at epoch {self.progress.epoch + 1}, step {self.progress.step}; "
            f"state saved in {self.run.state}. Run the same command again (or add --resume) "
            "to continue"
        )

    def _prune_checkpoints(self) -> None:
        keep = self.cfg.keep_checkpoints
        if keep <= 0:
            return
        epochs = sorted(self.run.checkpoints.glob("epoch-*.safetensors"))
        for old in epochs[:-keep]:
            old.unlink(missing_ok=True)

    @torch.no_grad()
    def _write_samples(self, epoch: int) -> None:
        self.flow.eval()
        images = self.flow.decode(self.sample_z)
        self.flow.train()
        write_grid(images, self.run.samples(epoch), nrow=8)
