"""Latents files: the codes of encoded images, tied to the model that made them.

One safetensors file holds `z` (B, C, L, L) (the full latent tensor, what `decode` needs),
`bpd` (B,), and a per-level view: `level_h` (B, C, N_h), the latents of level h in
row-major order of their positions `positions_h` (N_h, 2). The metadata holds the model
config (JSON) and a fingerprint of the weights, so that decoding with another model is
caught, plus the names of the encoded images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import Tensor

from rgflow_core.checkpoint import atomic_write_bytes, read_safetensors
from rgflow_core.config import ModelConfig
from rgflow_core.errors import ConfigError, DataError, UsageError
from rgflow_core.explore import latents_by_level, level_positions
from rgflow_core.flow import RGFlow

FORMAT = "rgflow-latents/1"


def model_fingerprint(model: RGFlow) -> str:
    """A short hash of the weights (as float32), the same on every device."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Latents:
    """What a latents file holds."""

    z: Tensor  # (B, C, L, L)
    bpd: Tensor  # (B,)
    names: list[str]  # the encoded images, one per row of z
    config: ModelConfig  # the model that encoded them
    fingerprint: str  # `model_fingerprint` of that model


def save_latents(path: str | Path, model: RGFlow, z: Tensor, bpd: Tensor, names: list[str]) -> Path:
    """Write latents (atomically) with the model's config and fingerprint; return the path."""
    z = z.detach().cpu().contiguous()
    tensors = {"z": z, "bpd": bpd.detach().cpu().contiguous()}
    level_map = model.level_map.cpu()
    for h, view in latents_by_level(z, level_map).items():
        tensors[f"level_{h}"] = view.contiguous()
        tensors[f"positions_{h}"] = level_positions(level_map, h).contiguous()
    meta = {
        "format": FORMAT,
        "config": json.dumps(dataclasses.asdict(model.config)),
        "fingerprint": model_fingerprint(model),
        "names": json.dumps(list(names)),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=meta))
    return Path(path)


def load_latents(path: str | Path) -> Latents:
    """Read a latents file written by `save_latents`."""
    tensors, meta = read_safetensors(path, "latents file", DataError)
    if meta.get("format") != FORMAT or "z" not in tensors:
        raise DataError(f"{path} is not an rgflow latents file (write one with `rgflow encode`)")
    try:
        config = ModelConfig(**json.loads(meta["config"]))
        names = [str(n) for n in json.loads(meta.get("names", "[]"))]
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise DataError(f"{path} has unreadable metadata ({err})") from err
    z = tensors["z"]
    bpd = tensors.get("bpd", torch.full((len(z),), float("nan")))
    if len(names) != len(z):
        names = [f"{i:04d}" for i in range(len(z))]
    return Latents(z, bpd, names, config, meta.get("fingerprint", ""))


def check_latents_match(latents: Latents, model: RGFlow, path: str | Path = "latents") -> bool:
    """Refuse latents of another architecture; return whether the weights are the same too."""
    if latents.config != model.config:
        theirs, ours = dataclasses.asdict(latents.config), dataclasses.asdict(model.config)
        diff = ", ".join(
            f"{k}={theirs[k]} (model: {ours[k]})" for k in ours if theirs[k] != ours[k]
        )
        raise UsageError(f"{path} was encoded by another model: {diff}")
    shape = (model.config.channels, model.config.image_size, model.config.image_size)
    if latents.z.dim() != 4 or tuple(latents.z.shape[1:]) != shape:
        raise DataError(f"{path}: z has shape {tuple(latents.z.shape)}, expected (B, *{shape})")
    return latents.fingerprint == model_fingerprint(model)
