"""Self-describing checkpoints.

A model checkpoint is one safetensors file: the weights, plus metadata holding the model
config as JSON (so the file alone rebuilds the model) and any extra facts the caller
passes (epoch, step, test bpd, ...), each JSON-encoded. Training state (optimizer, RNG,
counters) lives beside it in a torch file that loads with `weights_only=True`, so no
arbitrary object is ever unpickled. Every write is atomic: temp file, fsync, rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from rgflow_core.config import ModelConfig
from rgflow_core.errors import CheckpointError, ConfigError
from rgflow_core.flow import RGFlow, build_model

FORMAT = "rgflow-checkpoint/1"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_model(model: nn.Module, path: str | Path, **metadata: Any) -> None:
    """Save weights and config (plus JSON-serialisable `metadata`) to a safetensors file."""
    model = unwrap(model)
    if not isinstance(model, RGFlow):
        raise TypeError(f"save_model expects an RGFlow, got {type(model).__name__}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(model.config))}
    meta.update({k: json.dumps(v) for k, v in metadata.items()})
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def read_safetensors(
    path: str | Path, what: str = "checkpoint", error: type[Exception] = CheckpointError
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file; `error` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise error(f"{path} is not a readable safetensors file (corrupt or truncated?)") from err
    return tensors, meta


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not an rgflow checkpoint (no model config in it)"
        )
    return tensors, meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, JSON-decoded; `config` is a `ModelConfig`."""
    _, meta = _read(path)
    return _decode_meta(path, meta)


def _decode_meta(path: str | Path, meta: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key == "format":
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} has unreadable metadata {key!r}") from err
    try:
        out["config"] = ModelConfig(**out["config"])
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{path} holds an invalid model config: {err}") from err
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu") -> RGFlow:
    """Rebuild the model from a checkpoint and load its weights strictly."""
    tensors, meta = _read(path)
    cfg = _decode_meta(path, meta)["config"]
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the config stored with them") from err
    return model.to(device)


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Atomically save training state (tensors, numbers, strings, lists, dicts only)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """Load training state written by `save_state`, without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable rgflow training state") from err


def find_latest_checkpoint(runs_dir: str | Path = "runs") -> Path:
    """The newest `last.safetensors` of any run under `runs_dir` (by modification time)."""
    runs_dir = Path(runs_dir)
    found = [p for p in runs_dir.glob("*/checkpoints/last.safetensors") if p.is_file()]
    if not found:
        raise CheckpointError(
            f"no checkpoint given and none found under {runs_dir}/*/checkpoints/; "
            "train one with `rgflow train` or pass -c/--checkpoint"
        )
    return max(found, key=lambda p: p.stat().st_mtime)
