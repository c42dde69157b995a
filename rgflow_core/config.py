"""Configuration: frozen dataclasses and the preset loader.

A preset is one flat YAML mapping (see presets/*.yaml); each key belongs to exactly one of
`ModelConfig` (what the checkpoint needs to rebuild the network), `DataConfig` (where
the images come from) and `TrainConfig` (how to optimise). `load_preset` rejects unknown
keys (naming the closest valid one) and values of the wrong type (naming the key).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rgflow_core.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an RG-Flow; stored in every checkpoint."""

    image_size: int = 32  # L, edge of the (square) images
    channels: int = 3  # C: 1 (grey) or 3 (RGB)
    kernel_size: int = 4  # K, edge of the blocks; L = K * 2**(H-1)
    prior: str = "laplace"  # "laplace" (sparse, default) or "gaussian"
    subnet: str = "rnvp"  # block bijector: "rnvp" (checkerboard coupling) or "ar"
    n_layers: tuple[int, ...] = (4, 4, 4, 4)  # coupling layers per sub-layer, one per level
    n_res: int = 4  # residual blocks per conditioner MLP
    n_mlp: int = 2  # hidden layers per residual block
    n_hidden: int = 512  # width of the hidden layers

    def __post_init__(self) -> None:
        from rgflow_core.geometry import num_levels

        object.__setattr__(self, "n_layers", tuple(self.n_layers))
        for key in ("image_size", "kernel_size", "n_res", "n_mlp", "n_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.prior not in ("laplace", "gaussian"):
            raise ConfigError(f"prior must be 'laplace' or 'gaussian', got {self.prior!r}")
        if self.subnet not in ("rnvp", "ar"):
            raise ConfigError(f"subnet must be 'rnvp' or 'ar', got {self.subnet!r}")
        H = num_levels(self.image_size, self.kernel_size)
        if len(self.n_layers) != H or min(self.n_layers) < 1:
            raise ConfigError(
                f"n_layers needs one positive entry per RG level: image_size={self.image_size} "
                f"and kernel_size={self.kernel_size} give {H} levels, got {list(self.n_layers)}"
            )

    @property
    def levels(self) -> int:
        """Number of RG levels H."""
        return len(self.n_layers)

    @property
    def dims(self) -> int:
        """D = C * L * L, the number of dimensions of an image."""
        return self.channels * self.image_size**2


@dataclass(frozen=True)
class DataConfig:
    """Where training images come from and how they are prepared."""

    dataset: str = "msds1"  # msds1, msds2, celeba32, mnist32, cifar10, chair600, folder
    data_root: str = "data"  # folder holding the dataset (layouts in the README)
    center_crop: int = 0  # crop this square from the centre before resizing (0: none)
    flip: bool = False  # random horizontal flips of training images
    train_size: int = 90000  # msds: images generated for the train split on first use
    test_size: int = 10000  # msds: images generated for the test split
    split_seed: int = 0  # seed of the train/test split of folders without one
    test_fraction: float = 0.1  # share of a split-less folder held out for testing


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3  # AdamW learning rate
    lr_schedule: str = "constant"  # "constant" or "cosine" (decay to 0 over all epochs)
    weight_decay: float = 5e-5  # AdamW decoupled weight decay (the paper's code uses 5e-5)
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    seed: int = 0
    amp: str = "off"  # "bf16" (autocast on CUDA) or "off"
    compile: bool = False  # torch.compile the model
    checkpointing: bool = False  # activation checkpointing: less memory, ~30% slower
    keep_checkpoints: int = 3  # epoch checkpoints kept besides last (0: keep all)
    sample_temperature: float = 0.8  # temperature of the per-epoch sample grid
    max_nonfinite: int = 20  # consecutive non-finite losses that stop the run
    eval_batches: int = 0  # test batches per epoch evaluation (0: the whole test split)
    save_minutes: float = 10.0  # also save a resumable checkpoint this often within an epoch

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.amp not in ("bf16", "off"):
            raise ConfigError(f"amp must be bf16 or off, got {self.amp!r}")


@dataclass(frozen=True)
class Preset:
    """A complete run description: model, data and training configuration."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_flat(self) -> dict[str, Any]:
        """The flat key -> value mapping a preset YAML holds (lists for tuples)."""
        flat: dict[str, Any] = {}
        for part in (self.model, self.data, self.train):
            for f in dataclasses.fields(part):
                value = getattr(part, f.name)
                flat[f.name] = list(value) if isinstance(value, tuple) else value
        return flat


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
_KEYS = {f.name: sec for sec, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}


def preset_names() -> list[str]:
    """Names of the presets shipped in presets/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads exponents without a dot ("3e-4") as strings
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")


def _closest_hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(_KEYS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def preset_from_dict(values: dict[str, Any], name: str = "custom") -> Preset:
    """Build a `Preset` from a flat mapping, validating every key and type."""
    parts: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown preset key {key!r}{_closest_hint(str(key))}")
        sec = _KEYS[key]
        hint = typing.get_type_hints(_SECTIONS[sec])[key]
        parts[sec][key] = _check_type(key, value, hint)
    return Preset(
        name=name,
        model=ModelConfig(**parts["model"]),
        data=DataConfig(**parts["data"]),
        train=TrainConfig(**parts["train"]),
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}") from err
    except OSError as err:
        raise ConfigError(f"cannot read preset file {path}: {err.strerror}") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of preset keys to values")
    return values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings; each value is YAML (`n_layers=[2,2,2,2]`, `flip=true`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"value of override {item!r} is not valid YAML") from err
    return out


def load_preset(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Preset:
    """Load a shipped preset by name, or a YAML file by path, then apply overrides.

    Raises:
        ConfigError: unknown preset, unreadable or invalid YAML, unknown key, wrong type.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        name = path.stem
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
    else:
        name = str(name_or_path)
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(name, preset_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown preset {name!r}{hint}; choose one of {', '.join(preset_names())} "
                "or give a YAML file"
            )
    values = _read_yaml(path)
    values.update(overrides or {})
    return preset_from_dict(values, name=name)
