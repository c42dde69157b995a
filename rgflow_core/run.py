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
run killed between two writes is completed by the next start (`train.EpochFiles.publish`). What the
state holds, and the checks it passes before it is loaded, are `rgflow_core.state`'s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgflow_core.builtin import builtin_names
from rgflow_core.checkpoint import read_metadata, save_model
from rgflow_core.config import DataConfig, Preset, load_preset
from rgflow_core.errors import CheckpointError, RGFlowError, RunLockedError, UsageError
from rgflow_core.files import (
    FolderLock,
    atomic_write_bytes,
    is_temp_file,
    remove_temp_files,
    strict_json,
)


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
        numbered = []
        for path in self.checkpoints.glob("epoch-*.safetensors"):
            number = path.name[len("epoch-") : -len(".safetensors")]
            if number.isdigit():  # by number: epoch-10000 is newer than epoch-9999
                numbered.append((int(number), path))
        for _, old in sorted(numbered)[:-keep]:
            old.unlink(missing_ok=True)


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


# --- finding runs and their settings ----------------------------------------------------------


def find_latest_checkpoint(runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """The newest `last.safetensors` of any run under `runs_dir` (by modification time)."""
    runs_dir = Path(runs_dir)
    found = [p for p in runs_dir.glob("*/checkpoints/last.safetensors") if p.is_file()]
    if not found:
        raise CheckpointError(
            f"no checkpoint given and none found under {runs_dir}/*/checkpoints/; "
            f"train one, or give one ({{checkpoint}}): a file, or a built-in model's name "
            f"({', '.join(builtin_names()) or 'none shipped'})"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def run_data_config(checkpoint: str | os.PathLike[str]) -> DataConfig | None:
    """The data settings of the run a checkpoint belongs to (its config.yaml), if any."""
    run_config = Path(checkpoint).parent.parent / "config.yaml"
    if Path(checkpoint).parent.name != "checkpoints" or not run_config.is_file():
        return None
    return load_preset(run_config).data
