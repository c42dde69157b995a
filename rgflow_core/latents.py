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

from rgflow_core.checkpoint import SafetensorsFile
from rgflow_core.config import ModelConfig
from rgflow_core.errors import ConfigError, DataError, UsageError
from rgflow_core.files import atomic_write_bytes, strict_json
from rgflow_core.flow import RGFlow
from rgflow_core.geometry import latents_by_level, level_positions

FORMAT = "rgflow-latents/1"
MAX_IMAGES = 100_000  # as many as one call of rgflow_core.codec encodes or decodes


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
        "config": json.dumps(model.config.to_dict()),
        "fingerprint": model_fingerprint(model),
        "names": strict_json(list(names)),
    }
    return atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_latents(path: str | Path) -> Latents:
    """Read a latents file written by `save_latents`.

    Raises:
        DataError: not a latents file, unreadable metadata, no latents, or latents of the
            wrong shape or dtype, or not finite.
    """
    with SafetensorsFile(path, "latents file", DataError) as f:
        meta = f.metadata
        if meta.get("format") != FORMAT or "z" not in f.shapes:
            raise DataError(
                f"{path} is not an rgflow latents file (write one with `rgflow encode`)"
            )
        try:
            config = ModelConfig(**json.loads(meta["config"]))
            names = [str(n) for n in json.loads(meta.get("names", "[]"))]
        except (KeyError, TypeError, ValueError, RecursionError, ConfigError) as err:
            raise DataError(f"{path} has unreadable metadata ({err})") from err
        shape = (config.channels, config.image_size, config.image_size)
        z_shape = f.shapes["z"]
        if len(z_shape) != 4 or z_shape[1:] != shape or f.dtypes["z"] not in ("F32", "F64"):
            raise DataError(f"{path}: z is {f.dtypes['z']} {z_shape}, expected float (B, *{shape})")
        if z_shape[0] == 0:
            raise DataError(f"{path} holds no latents (0 images)")
        if z_shape[0] > MAX_IMAGES:
            raise DataError(f"{path} holds {z_shape[0]:,} latents, more than {MAX_IMAGES:,}")
        z = f.tensor("z")
        bpd = f.tensor("bpd") if f.shapes.get("bpd") == (len(z),) else None
    if not bool(torch.isfinite(z).all()):
        raise DataError(f"{path} holds latents that are NaN or infinite")
    if bpd is None:
        bpd = torch.full((len(z),), float("nan"))
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
    return latents.fingerprint == model_fingerprint(model)
