"""A run's resumable state, `RUN/checkpoints/state.pt`: what it holds, and the checks it
passes before any of it is loaded (a state that does not fit the model or optimizer, or a
resume that would silently change the run's course, is refused with the reason).

It holds the weights, the optimizer's state, the loop's `Progress`, the model config, the
preset the run was trained with and the setting changes a resume was allowed to make. It
loads with `weights_only=True`.
"""

from __future__ import annotations

import io
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgflow_core.config import ModelConfig, Preset
from rgflow_core.errors import CheckpointError, UsageError
from rgflow_core.files import atomic_write_bytes
from rgflow_core.loop import Progress

STATE_FORMAT = "rgflow-state/2"
# Settings that decide what the run computes: a resume may not change them silently.
# (`epochs` too when the learning rate follows the cosine schedule; see `load_state`.)
TRAJECTORY_KEYS = frozenset(
    [f.name for f in fields(ModelConfig)]
    + ["dataset", "center_crop", "flip", "train_size", "test_size", "split_seed"]
    + ["test_fraction", "batch_size", "lr", "lr_schedule", "weight_decay", "grad_clip"]
    + ["seed", "amp"]
)
MODEL_KEYS = frozenset(f.name for f in fields(ModelConfig))


def save_state(
    path: Path,
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
    atomic_write_bytes(path, buf.getvalue())


def load_state(
    path: Path,
    run: Path,
    flow: nn.Module,
    optimizer: torch.optim.Optimizer,
    preset: Preset,
    allow_changes: bool = False,
) -> tuple[Progress, list[dict[str, Any]]]:
    """Restore weights, optimizer and progress from the state file `path` of the run
    folder `run` (the name messages use), checked before anything is loaded.

    Returns the progress and the list of recorded setting changes, including the one
    this resume makes (if any, and if `allow_changes`).

    Raises:
        CheckpointError: the state is unreadable or does not fit the model.
        UsageError: the preset differs from the run's in a setting that changes its
            trajectory, and `allow_changes` is False; or in the architecture.
    """
    state = _read_state(path)
    if isinstance(state.get("progress"), dict):  # a state from before these were kept
        state["progress"].setdefault("nonfinite_in_a_row", 0)
        state["progress"].setdefault("trace", [])
    saved = state.get("preset")
    if not isinstance(saved, dict):  # a state from before settings were recorded
        saved = {"name": preset.name, **preset.to_flat(), **state.get("model_config", {})}
    differences = {
        k: (saved.get(k), v) for k, v in preset.to_flat().items() if k in saved and saved[k] != v
    }
    if state.get("model_config") != preset.model.to_dict():
        raise UsageError(
            f"{run} was trained with another architecture "
            f"({_listed(differences, MODEL_KEYS)}); choose another run name ({{name}}), or "
            "use the run's own config.yaml as the preset"
        )
    _check_state(path, state, flow, optimizer)
    progress = Progress(**state["progress"])
    changes = list(state.get("changes", []))
    # the cosine schedule is planned over the epochs: for it, their number is a setting of
    # the trajectory (a resume with other epochs would jump to another point of the curve)
    cosine = "cosine" in (saved.get("lr_schedule"), preset.train.lr_schedule)
    keys = TRAJECTORY_KEYS | {"epochs"} if cosine else TRAJECTORY_KEYS
    risky = {k: v for k, v in differences.items() if k in keys}
    if risky and not allow_changes:
        replan = (
            "; the cosine learning rate is planned over the epochs, and with the change the "
            "rest of the run takes the rate that a run planned for the new epochs has at "
            "each step"
            if cosine and "epochs" in risky
            else ""
        )
        raise UsageError(
            f"resuming {run} with other settings than it was trained with "
            f"({_listed(risky)}) would change its course; use the run's own settings, or "
            "pass {allow_changes} to continue with these (the change is recorded)" + replan
        )
    if differences:
        changes.append({"epoch": progress.epoch, "step": progress.step, "changes": differences})
    flow.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the settings now in force
        group["weight_decay"] = preset.train.weight_decay
    return progress, changes


def _listed(differences: dict[str, tuple[Any, Any]], keys: frozenset[str] | None = None) -> str:
    shown = [
        f"{k} {a!r} -> {b!r}" for k, (a, b) in differences.items() if keys is None or k in keys
    ]
    return ", ".join(shown) or "see its config.yaml"


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
    names = {f.name for f in fields(Progress)}
    if not isinstance(progress, dict) or set(progress) != names:
        raise bad("its progress counters are malformed")
    counters = ("epoch", "step", "batch", "nonfinite", "nonfinite_in_a_row", "epoch_images")
    for key in counters:
        value = progress[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"its counter {key} is {value!r}")
    for key in ("epoch_bpd_sum", "epoch_seconds"):
        if not isinstance(progress[key], int | float) or progress[key] != progress[key]:
            raise bad(f"its counter {key} is {progress[key]!r}")
    history = progress["history"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise bad("its history is malformed")
    trace = progress.get("trace", [])
    if not isinstance(trace, list) or not all(isinstance(v, int | float) for v in trace):
        raise bad("its loss trace is malformed")
    if len(history) != progress["epoch"]:
        raise bad(f"it has {len(history)} epoch records for {progress['epoch']} epochs")
