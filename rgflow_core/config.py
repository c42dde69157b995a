"""Configuration: frozen dataclasses and the preset loader.

A preset is one flat YAML mapping (the shipped ones are `rgflow_core/presets/*.yaml`);
each key belongs to exactly one of `ModelConfig` (what the checkpoint needs to rebuild the
network), `DataConfig` (where the images come from) and `TrainConfig` (how to optimise).
Every config checks its own values when it is made, whether from a preset, an override,
a checkpoint's metadata or Python: a wrong type or an out-of-range value is a
`ConfigError` that names the key, and an unknown key names the closest valid one.

This module imports neither torch, the model nor yaml at the top, so that the command
line's `--help` (which lists the presets) is instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rgflow_core.errors import ConfigError

# Sizes beyond these are refused outright: no machine trains them, and a crafted file that
# asks for them must not be able to make the tool allocate all memory.
MAX_IMAGE_SIZE = 4096
MAX_KERNEL_SIZE = 64
MAX_WIDTH = 16384  # n_hidden
MAX_DEPTH = 256  # n_res, n_mlp, and each entry of n_layers
MAX_PRESET_BYTES = 1 << 20
DATASETS = ("msds1", "msds2", "mnist32", "cifar10", "celeba32", "chair600", "folder")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an RG-Flow; stored in every checkpoint."""

    image_size: int = 32  # L, edge of the (square) images
    channels: int = 3  # C: 1 (grey) or 3 (RGB)
    kernel_size: int = 4  # K, edge of the blocks; L = K * 2**(H-1)
    prior: str = "laplace"  # a name in rgflow_core.priors.PRIORS: "laplace" (sparse) or "gaussian"
    subnet: str = "rnvp"  # a name in rgflow_core.coupling.SUBNETS: "rnvp" or "ar"
    n_layers: tuple[int, ...] = (4, 4, 4, 4)  # coupling layers per sub-layer, one per level
    n_res: int = 4  # residual blocks per conditioner MLP
    n_mlp: int = 2  # hidden layers per residual block
    n_hidden: int = 512  # width of the hidden layers
    # which block grid of a level acts first: "shifted_first" (the disentangler, as the
    # paper writes it) or "aligned_first" (the decimator, as the paper's code runs it)
    block_grid: str = "shifted_first"

    def __post_init__(self) -> None:
        _check_types(self)
        from rgflow_core.coupling import SUBNETS  # the registries import torch: only here
        from rgflow_core.geometry import BLOCK_GRIDS, num_levels
        from rgflow_core.priors import PRIORS

        _in_range("image_size", self.image_size, 2, MAX_IMAGE_SIZE)
        _in_range("kernel_size", self.kernel_size, 2, MAX_KERNEL_SIZE)
        _in_range("n_res", self.n_res, 1, MAX_DEPTH)
        _in_range("n_mlp", self.n_mlp, 1, MAX_DEPTH)
        _in_range("n_hidden", self.n_hidden, 1, MAX_WIDTH)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        _one_of("prior", self.prior, PRIORS)
        _one_of("subnet", self.subnet, SUBNETS)
        _one_of("block_grid", self.block_grid, BLOCK_GRIDS)
        H = num_levels(self.image_size, self.kernel_size)
        if len(self.n_layers) != H or not all(1 <= n <= MAX_DEPTH for n in self.n_layers):
            raise ConfigError(
                f"n_layers needs one entry in 1..{MAX_DEPTH} per RG level: image_size="
                f"{self.image_size} and kernel_size={self.kernel_size} give {H} levels, got "
                f"{list(self.n_layers)}"
            )

    @property
    def levels(self) -> int:
        """Number of RG levels H."""
        return len(self.n_layers)

    @property
    def dims(self) -> int:
        """D = C * L * L, the number of dimensions of an image."""
        return self.channels * self.image_size**2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (lists for tuples), as checkpoints and run states store it.

        `block_grid` is left out when it is the default, so that what this writes for the
        models that existed before the option is what was written then (older checkpoints,
        run states and latents files compare equal, and older rgflow versions read ours).
        """
        out = _plain(self)
        if out["block_grid"] == _DEFAULT_BLOCK_GRID:
            del out["block_grid"]
        return out


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

    def __post_init__(self) -> None:
        _check_types(self)
        _one_of("dataset", self.dataset, DATASETS)
        _in_range("center_crop", self.center_crop, 0, 1 << 16)
        _in_range("train_size", self.train_size, 1, 10_000_000)
        _in_range("test_size", self.test_size, 0, 10_000_000)
        _in_range("split_seed", self.split_seed, 0, 2**63 - 1)
        _in_range("test_fraction", self.test_fraction, 0.0, 0.9)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3  # AdamW learning rate
    lr_schedule: str = "constant"  # "constant" or "cosine" (decay to 0 over all epochs)
    weight_decay: float = 5e-5  # AdamW decoupled weight decay (the paper's code's 2020 default)
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    seed: int = 0
    amp: str = "off"  # "bf16" (autocast) or "off"
    compile: bool = False  # the training pass as torch.compile graphs (`RGFlow.kernel`)
    checkpointing: bool = False  # activation checkpointing: less memory, ~30% slower
    keep_checkpoints: int = 3  # epoch checkpoints kept besides last (0: keep all)
    sample_temperature: float = 0.8  # temperature of the per-epoch sample grid
    max_nonfinite: int = 20  # consecutive non-finite losses that stop the run
    eval_batches: int = 0  # test batches per epoch evaluation (0: the whole test split)
    save_minutes: float = 10.0  # also save a resumable checkpoint this often within an epoch

    def __post_init__(self) -> None:
        _check_types(self)
        _in_range("epochs", self.epochs, 1, 100_000)
        _in_range("batch_size", self.batch_size, 1, 1 << 16)
        _in_range("lr", self.lr, 0.0, 1e3, lo_open=True)
        _one_of("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _in_range("weight_decay", self.weight_decay, 0.0, 1e3)
        _in_range("grad_clip", self.grad_clip, 0.0, 1e9)
        _in_range("seed", self.seed, 0, 2**63 - 1)
        _one_of("amp", self.amp, ("bf16", "off"))
        _in_range("keep_checkpoints", self.keep_checkpoints, 0, 1_000_000)
        _in_range("sample_temperature", self.sample_temperature, 0.0, 100.0, lo_open=True)
        _in_range("max_nonfinite", self.max_nonfinite, 1, 1_000_000)
        _in_range("eval_batches", self.eval_batches, 0, 1 << 30)
        _in_range("save_minutes", self.save_minutes, 0.0, 1e6, lo_open=True)


@dataclass(frozen=True)
class Preset:
    """A complete run description: model, data and training configuration."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_flat(self) -> dict[str, Any]:
        """The flat key -> value mapping a preset YAML holds (lists for tuples)."""
        return {**self.model.to_dict(), **_plain(self.data), **_plain(self.train)}

    def to_yaml(self) -> str:
        """The resolved preset as YAML text, as a run folder's config.yaml holds it."""
        import yaml

        header = f"# resolved preset {self.name!r}\n"
        return header + yaml.safe_dump(self.to_flat(), sort_keys=False)


_DEFAULT_BLOCK_GRID = next(
    f.default for f in dataclasses.fields(ModelConfig) if f.name == "block_grid"
)
_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
_KEYS = {f.name: sec for sec, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}


# --- presets ---------------------------------------------------------------------------


def _preset_dir():
    return resources.files("rgflow_core").joinpath("presets")


def preset_names() -> list[str]:
    """Names of the presets shipped inside the package."""
    return sorted(
        p.name[: -len(".yaml")] for p in _preset_dir().iterdir() if p.name.endswith(".yaml")
    )


def preset_from_dict(values: dict[str, Any], name: str = "custom") -> Preset:
    """Build a `Preset` from a flat mapping, validating every key and value."""
    parts: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown preset key {key!r}{_closest_hint(str(key))}")
        parts[_KEYS[key]][key] = value
    return Preset(
        name=name,
        model=ModelConfig(**parts["model"]),
        data=DataConfig(**parts["data"]),
        train=TrainConfig(**parts["train"]),
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings; each value is YAML (`n_layers=[2,2,2,2]`, `flip=true`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        out[key.strip()] = _safe_yaml(raw, f"the value of override {item!r}")
    return out


def load_preset(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Preset:
    """Load a shipped preset by name, or a YAML file by path, then apply overrides.

    Raises:
        ConfigError: unknown preset, unreadable or invalid YAML, unknown key, bad value.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(name_or_path):
        name = path.stem
        text = _read_file(path)
    else:
        name = str(name_or_path)
        resource = _preset_dir().joinpath(f"{name}.yaml")
        if not resource.is_file():
            close = difflib.get_close_matches(name, preset_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown preset {name!r}{hint}; choose one of {', '.join(preset_names())} "
                "or give a YAML file"
            )
        text = resource.read_text(encoding="utf-8")
    values = _safe_yaml(text, str(path)) if text.strip() else {}
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of preset keys to values")
    values.update(overrides or {})
    return preset_from_dict(values, name=name)


def _read_file(path: Path) -> str:
    from rgflow_core.files import missing_file_reason

    reason = missing_file_reason(path)
    if reason is not None:
        raise ConfigError(f"preset file {path} {reason}")
    try:
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise ConfigError(f"preset file {path} is larger than 1 MiB; a preset is a few lines")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"preset file {path} does not exist") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"preset file {path} is not UTF-8 text") from err
    except OSError as err:
        raise ConfigError(f"cannot read preset file {path}: {err.strerror or err}") from err


def _safe_yaml(text: str, what: str) -> Any:
    """YAML text -> Python values, any failure (even a nesting too deep) a ConfigError."""
    import yaml  # here, not at the top: listing presets should not pay for it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} is not valid YAML{where}") from err
    except RecursionError as err:
        raise ConfigError(f"{what} is nested too deeply to be a preset") from err


# --- value checks ------------------------------------------------------------------------


def _check_types(config: Any) -> None:
    """Coerce and check every field of a config dataclass against its type hint."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = _check_type(f.name, getattr(config, f.name), hints[f.name])
        object.__setattr__(config, f.name, value)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(_is_int(v) for v in value):
            raise ConfigError(f"{key} must be a list of integers, got {_short(value)}")
        return tuple(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot ("3e-4") as str
            with contextlib.suppress(ValueError):
                value = float(value)
        if _is_number(value):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            return float(value)
    if hint is int and _is_int(value):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key} must be of type {hint.__name__}, got {_short(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _in_range(key: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    if (value <= lo if lo_open else value < lo) or value > hi:
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ConfigError(f"{key} must be {bound} and <= {hi:g}, got {value}")


def _one_of(key: str, value: str, names: Any) -> None:
    if value not in names:
        raise ConfigError(f"{key} must be one of {', '.join(names)}, got {value!r}")


def _closest_hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(_KEYS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain(config: Any) -> dict[str, Any]:
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }
