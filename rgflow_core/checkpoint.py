"""Self-describing checkpoints.

A model checkpoint is one safetensors file: the weights, plus metadata holding the model
config as JSON (so the file alone rebuilds the model) and any extra facts the caller
passes (epoch, step, test bpd, provenance, ...), each JSON-encoded. Loading is strict
and careful with files it did not write: the header is read first, the config is checked
and the model's size estimated before anything is allocated, and every tensor's name,
shape and dtype must be those the config implies before its data is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from rgflow_core.builtin import resolve_model
from rgflow_core.config import ModelConfig
from rgflow_core.errors import CheckpointError, ConfigError, RGFlowError
from rgflow_core.files import atomic_write_bytes, missing_file_reason, strict_json
from rgflow_core.flow import RGFlow, build_model, check_memory

FORMAT = "rgflow-checkpoint/1"
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}  # safetensors names


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_model(model: nn.Module, path: str | Path, **metadata: Any) -> Path:
    """Save weights and config (plus JSON-serialisable `metadata`) to a safetensors file.

    The write is atomic; non-finite numbers in `metadata` are stored as null.
    """
    model = unwrap(model)
    if not isinstance(model, RGFlow):
        raise TypeError(f"save_model expects an RGFlow, got {type(model).__name__}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    meta.update({k: strict_json(v) for k, v in metadata.items()})
    return atomic_write_bytes(path, st_save(tensors, metadata=meta))


class SafetensorsFile:
    """An open safetensors file: its metadata and tensor shapes, read from the header only.

    Use as a context manager; `tensor(name)` then reads one tensor's data.
    """

    def __init__(
        self, path: str | Path, what: str = "checkpoint", error: type[RGFlowError] = CheckpointError
    ) -> None:
        self.path = Path(path)
        self.error = error
        _check_is_file(self.path, what, error)
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
            self.metadata: dict[str, str] = self._file.metadata() or {}
            names = list(self._file.keys())
            self.shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in names}
            self.dtypes = {k: self._file.get_slice(k).get_dtype() for k in names}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise error(
                f"{self.path} is not a readable safetensors file (corrupt or truncated?)"
            ) from err

    def tensor(self, name: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise self.error(f"{self.path}: cannot read tensor {name!r} ({err})") from err

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file = None  # releases the memory map


def _check_is_file(path: Path, what: str, error: type[RGFlowError]) -> None:
    reason = missing_file_reason(path)
    if reason is not None:
        raise error(f"{what} {path} {reason}")


def read_safetensors(
    path: str | Path, what: str = "checkpoint", error: type[RGFlowError] = CheckpointError
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file; `error` says what is wrong."""
    with SafetensorsFile(path, what, error) as f:
        return {k: f.tensor(k) for k in f.shapes}, f.metadata


def _rgflow_metadata(f: SafetensorsFile) -> dict[str, Any]:
    meta = f.metadata
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{f.path} is a safetensors file but not an rgflow checkpoint (no model config in it)"
        )
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key == "format":
            continue
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as err:
            raise CheckpointError(f"{f.path} has unreadable metadata {key!r}") from err
    try:
        if not isinstance(out["config"], dict):
            raise ConfigError("the config is not a mapping")
        out["config"] = ModelConfig(**out["config"])
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{f.path} holds an invalid model config: {err}") from err
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, JSON-decoded; `config` is a `ModelConfig`. `path` may
    name a built-in model (see `rgflow_core.builtin`)."""
    with SafetensorsFile(resolve_model(path)) as f:
        return _rgflow_metadata(f)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, allow_large: bool = False
) -> RGFlow:
    """Rebuild the model from a checkpoint and load its weights strictly, in float32, or
    in float64 when every weight in the file is float64. `path` may name a built-in model
    (`load_model("msds1")`); a file of that name wins.

    Raises:
        CheckpointError: the file is missing, corrupt, not an rgflow checkpoint, or its
            tensors do not match its config.
        UsageError: the model would not fit in memory (unless `allow_large`).
    """
    path = resolve_model(path)
    with SafetensorsFile(path) as f:
        cfg = _rgflow_metadata(f)["config"]
        check_memory(cfg, device, allow_large=allow_large)  # before anything is built
        model = build_model(cfg)
        if f.dtypes and all(d == "F64" for d in f.dtypes.values()):
            model = model.double()  # a float64 model (e.g. imported from a float64 run)
        expected = {k: (tuple(v.shape), _DTYPES[v.dtype]) for k, v in model.state_dict().items()}
        found = {k: (shape, f.dtypes[k]) for k, shape in f.shapes.items()}
        if found != expected:
            raise CheckpointError(f"{path}: {_shape_mismatch(expected, found)}")
        state = {k: f.tensor(k) for k in expected}
    bad = next((k for k, v in state.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
    return model.to(device)


def _shape_mismatch(expected: dict, found: dict) -> str:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        names = ", ".join((missing + extra)[:3])
        return f"the weights do not match the config stored with them ({names} ...)"
    key = next(k for k in expected if expected[k] != found[k])
    return f"tensor {key} is {found[key]}, the config implies {expected[key]}"
