"""A training run's folder: one owner at a time, files written atomically, a state to
resume from, and every file rebuildable from that state.

    RUN/config.yaml                      the resolved preset (and any recorded changes)
    RUN/metrics.jsonl                    one JSON object per epoch (strict JSON)
    RUN/train.log                        what was printed, with times
    RUN/curves.png                       train and test bpd against images seen
    RUN/samples/epoch-NNNN.png           a grid decoded from fixed latents every epoch
    RUN/checkpoints/epoch-NNNN.safetensors, last.safetensors   models (`load_model`)
    RUN/checkpoints/state.pt             weights, optimizer, progress, config and changes
                                         (loads with weights_only=True)

`state.pt` is the commit point: it is written first at the end of every epoch (and every
`save_minutes` within one), and the other files of that epoch are derived from it, so a
run killed between two writes is completed by the next start (`missing_files`).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgflow_core.checkpoint import read_metadata, save_model
from rgflow_core.config import DataConfig, ModelConfig, Preset, load_preset
from rgflow_core.errors import CheckpointError, RGFlowError, RunLockedError, UsageError
from rgflow_core.files import (
    FolderLock,
    atomic_write_bytes,
    is_temp_file,
    remove_temp_files,
    strict_json,
)
from rgflow_core.loop import Progress

STATE_FORMAT = "rgflow-state/2"
# Settings that decide what the run computes: a resume may not change them silently.
TRAJECTORY_KEYS = frozenset(
    [f.name for f in fields(ModelConfig)]
    + ["dataset", "center_crop", "flip", "train_size", "test_size", "split_seed"]
    + ["test_fraction", "batch_size", "lr", "lr_schedule", "weight_decay", "grad_clip"]
    + ["seed", "amp"]
)
MODEL_KEYS = frozenset(f.name for f in fields(ModelConfig))


class RunFolder:
    """The files of one training run (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.log_file = self.root / "train.log"
        self.curves = self.root / "curves.png"
        self.state = self.checkpoints / "state.pt"
        self.last = self.checkpoints / "last.safetensors"
        self._lock = FolderLock(self.root)  # a run that writes nothing leaves no folder

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}.safetensors"

    def samples(self, epoch: int) -> Path:
        return self.root / "samples" / f"epoch-{epoch:04d}.png"

    # --- ownership ----------------------------------------------------------------------

    @contextmanager
    def open(self, resume: bool | None = None, lock: bool = True) -> Iterator[RunFolder]:
        """Own the folder while the block runs: lock it, remove temp files that a killed
        write left behind, and check that it can be started or resumed (`check`)."""
        self.check(resume)
        if lock:
            self._acquire()
        try:
            for folder in (self.root, self.checkpoints, self.root / "samples"):
                if folder.is_dir():
                    remove_temp_files(folder)
            yield self
        finally:
            if lock:
                self._lock.release()

    def _acquire(self) -> None:
        holder = self._lock.acquire()
        if holder is not None:
            raise RunLockedError(
                f"{self.root} is in use by {holder}; wait for that run to end (or stop it), "
                "or train under another run name ({name})"
            )

    def check(self, resume: bool | None) -> None:
        """Refuse a folder that is a file, a resume with nothing to resume (`resume`
        True), a fresh start over a run (`resume` False), or checkpoints without a state."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(
                f"run folder {self.root} is a file; choose another ({{out}}, {{name}})"
            )
        has_state = self.state.is_file()
        if resume is True and not has_state:
            raise UsageError(f"nothing to resume: {self.state} does not exist")
        if resume is False and has_state:
            raise UsageError(
                f"{self.root} already holds a run; resume it or choose another {{name}}"
            )
        files = self.checkpoints.iterdir() if self.checkpoints.is_dir() else ()
        if not has_state and any(not is_temp_file(p) for p in files):
            raise UsageError(
                f"{self.root} holds checkpoints but no training state to resume from; "
                "choose another run name ({name}) rather than overwrite them"
            )

    # --- state --------------------------------------------------------------------------

    def save_state(
        self,
        flow: nn.Module,
        optimizer: torch.optim.Optimizer,
        progress: Progress,
        preset: Preset,
        changes: list[dict[str, Any]],
    ) -> None:
        """Write the resumable state atomically."""
        state = {
            "format": STATE_FORMAT,
            "model": flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "progress": asdict(progress),
            "model_config": preset.model.to_dict(),
            "preset": {"name": preset.name, **preset.to_flat()},
            "changes": changes,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.state, buf.getvalue())

    def load_state(
        self,
        flow: nn.Module,
        optimizer: torch.optim.Optimizer,
        preset: Preset,
        allow_changes: bool = False,
    ) -> tuple[Progress, list[dict[str, Any]]]:
        """Restore weights, optimizer and progress from `state.pt`, checked before loading.

        Returns the progress and the list of recorded setting changes, including the one
        this resume makes (if any, and if `allow_changes`).

        Raises:
            CheckpointError: the state is unreadable or does not fit the model.
            UsageError: the preset differs from the run's in a setting that changes its
                trajectory, and `allow_changes` is False; or in the architecture.
        """
        state = _read_state(self.state)
        saved = state.get("preset")
        if not isinstance(saved, dict):  # a state from before settings were recorded
            saved = {"name": preset.name, **preset.to_flat(), **state.get("model_config", {})}
        differences = {
            k: (saved.get(k), v)
            for k, v in preset.to_flat().items()
            if k in saved and saved[k] != v
        }
        if state.get("model_config") != preset.model.to_dict():
            raise UsageError(
                f"{self.root} was trained with another architecture "
                f"({_listed(differences, MODEL_KEYS)}); choose another run name ({{name}}), or "
                "use the run's own config.yaml as the preset"
            )
        _check_state(self.state, state, flow, optimizer)
        progress = Progress(**state["progress"])
        changes = list(state.get("changes", []))
        risky = {k: v for k, v in differences.items() if k in TRAJECTORY_KEYS}
        if risky and not allow_changes:
            raise UsageError(
                f"resuming {self.root} with other settings than it was trained with "
                f"({_listed(risky)}) would change its course; use the run's own settings, or "
                "pass {allow_changes} to continue with these (the change is recorded)"
            )
        if differences:
            changes.append({"epoch": progress.epoch, "step": progress.step, "changes": differences})
        flow.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the settings now in force
            group["weight_decay"] = preset.train.weight_decay
        return progress, changes

    # --- the files derived from the state -----------------------------------------------

    def write_config(self, preset: Preset, changes: list[dict[str, Any]]) -> None:
        """config.yaml: the settings in force, with every recorded change as a comment."""
        notes = "".join(
            f"# at epoch {c['epoch']}, step {c['step']}: "
            + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in c["changes"].items())
            + "\n"
            for c in changes
        )
        text = preset.to_yaml()
        if notes:
            text = text.replace(
                "\n", "\n# settings changed on resume, as allowed explicitly:\n" + notes, 1
            )
        _write_if_changed(self.config, text.encode())

    def write_metrics(self, history: list[dict[str, Any]]) -> bool:
        """metrics.jsonl from the history: one strict JSON line per epoch. Returns whether
        the file changed."""
        lines = "".join(strict_json(r) + "\n" for r in history)
        return _write_if_changed(self.metrics, lines.encode())

    def write_checkpoint(self, path: Path, flow: nn.Module, metadata: dict[str, Any]) -> None:
        save_model(flow, path, **metadata)

    def checkpoint_is(self, path: Path, epoch: int, step: int) -> bool:
        """Whether `path` is a readable checkpoint of that epoch and step."""
        try:
            meta = read_metadata(path)
        except RGFlowError:
            return False
        return meta.get("epoch") == epoch and meta.get("step") == step

    def write_samples(self, epoch: int, images: torch.Tensor) -> Path:
        from rgflow_core.images import write_grid

        return write_grid(images, self.samples(epoch), nrow=8)

    def write_curves(self, history: list[dict[str, Any]], batch_size: int, title: str) -> None:
        from rgflow_core.figures import training_curves

        atomic_write_bytes(self.curves, training_curves(history, batch_size, title))

    def log(self, text: str) -> None:
        """Append a line with the time to train.log."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def logged(self, text: str) -> bool:
        """Whether train.log holds a line ending with `text`."""
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return False
        return any(line.endswith(text) for line in lines)

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` epoch checkpoints (0: keep all)."""
        if keep <= 0:
            return
        for old in sorted(self.checkpoints.glob("epoch-*.safetensors"))[:-keep]:
            old.unlink(missing_ok=True)


def _listed(differences: dict[str, tuple[Any, Any]], keys: frozenset[str] | None = None) -> str:
    shown = [
        f"{k} {a!r} -> {b!r}" for k, (a, b) in differences.items() if keys is None or k in keys
    ]
    return ", ".join(shown) or "see its config.yaml"


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


# --- checking a state file before trusting it -----------------------------------------------


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable rgflow training state") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an rgflow training state (it holds no mapping)")
    return state


def _check_state(
    path: Path, state: dict, flow: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Refuse a state whose contents do not fit the model and optimizer, naming what is
    wrong: loading a mismatched optimizer state can crash the process in a fused kernel."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a usable training state: {what}")

    for key in ("model", "optimizer", "progress", "model_config"):
        if key not in state:
            raise bad(f"it has no {key!r}")
    model, expected = state["model"], flow.state_dict()
    if not isinstance(model, dict) or set(model) != set(expected):
        raise bad("its weights do not match the model")
    for name, value in expected.items():
        saved = model[name]
        if not isinstance(saved, torch.Tensor) or saved.shape != value.shape:
            raise bad(f"weight {name} has the wrong shape")
        if saved.dtype != value.dtype:
            raise bad(f"weight {name} is {saved.dtype}, the model has {value.dtype}")
    _check_optimizer_state(state["optimizer"], optimizer, bad)
    _check_progress(state["progress"], bad)


def _check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, bad) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        raise bad("its optimizer state is malformed")
    ids = [i for g in saved["param_groups"] if isinstance(g, dict) for i in g.get("params", [])]
    if sorted(ids) != list(range(len(params))) or len(saved["param_groups"]) != len(
        optimizer.param_groups
    ):
        raise bad("its optimizer state is for other parameters")
    states = saved.get("state")
    if not isinstance(states, dict):
        raise bad("its optimizer state is malformed")
    for index, entry in states.items():
        if index not in range(len(params)) or not isinstance(entry, dict):
            raise bad("its optimizer state is for other parameters")
        param = params[index]
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                raise bad(f"optimizer entry {key} is not a tensor")
            want = () if key == "step" else param.shape
            if value.shape != want or not value.dtype.is_floating_point:
                raise bad(f"optimizer entry {key} of parameter {index} has the wrong shape")
            if not bool(torch.isfinite(value).all()):
                raise bad(f"optimizer entry {key} of parameter {index} is not finite")


def _check_progress(progress: Any, bad) -> None:
    names = {f.name: f for f in fields(Progress)}
    if not isinstance(progress, dict) or set(progress) != set(names):
        raise bad("its progress counters are malformed")
    for key in ("epoch", "step", "batch", "nonfinite", "epoch_images"):
        value = progress[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"its counter {key} is {value!r}")
    for key in ("epoch_bpd_sum", "epoch_seconds"):
        if not isinstance(progress[key], int | float) or progress[key] != progress[key]:
            raise bad(f"its counter {key} is {progress[key]!r}")
    history = progress["history"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise bad("its history is malformed")
    if len(history) != progress["epoch"]:
        raise bad(f"it has {len(history)} epoch records for {progress['epoch']} epochs")


# --- finding runs and their settings ----------------------------------------------------------


def find_latest_checkpoint(runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """The newest `last.safetensors` of any run under `runs_dir` (by modification time)."""
    runs_dir = Path(runs_dir)
    found = [p for p in runs_dir.glob("*/checkpoints/last.safetensors") if p.is_file()]
    if not found:
        raise CheckpointError(
            f"no checkpoint given and none found under {runs_dir}/*/checkpoints/; "
            "train one, or give one ({checkpoint})"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def run_data_config(checkpoint: str | os.PathLike[str]) -> DataConfig | None:
    """The data settings of the run a checkpoint belongs to (its config.yaml), if any."""
    run_config = Path(checkpoint).parent.parent / "config.yaml"
    if Path(checkpoint).parent.name != "checkpoints" or not run_config.is_file():
        return None
    return load_preset(run_config).data
