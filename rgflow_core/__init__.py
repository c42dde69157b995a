"""rgflow_core: RG-Flow, a hierarchical and explainable normalizing flow.

The names below are the public API. They are imported on first use, so that
`import rgflow_core.config` (or the command line's `--help`) does not pay for torch.

References: Hu, Wu, You, Olshausen, Chen, "RG-Flow: a hierarchical and explainable flow
model based on renormalization group and sparse prior", arXiv:2010.00029.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "checkpoint": ("load_model", "read_metadata", "save_model"),
    "codec": ("decode_images", "encode_images", "sample_images"),
    "config": ("DataConfig", "ModelConfig", "Preset", "TrainConfig", "load_preset", "preset_names"),
    "errors": ("CheckpointError", "ConfigError", "DataError", "RGFlowError", "UsageError"),
    "flow": ("RGFlow", "build_model"),
    "geometry": ("causal_cone", "cone_latents", "generator_cone", "latent_levels"),
    "inpaint": ("ConeLogProb",),  # the function `inpaint` shares its module's name: import it
    "latents": ("load_latents", "save_latents"),
    "mixing": ("mix_latents",),
    "preprocess": ("Preprocess", "bits_per_dim", "dequantize", "image_bpd", "quantize"),
    "priors": ("GaussianPrior", "LaplacePrior"),
    "receptive": ("receptive_field",),
    "reference": ("export_reference", "import_reference"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rgflow_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rgflow_core.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from rgflow_core.checkpoint import load_model, read_metadata, save_model
    from rgflow_core.codec import decode_images, encode_images, sample_images
    from rgflow_core.config import (
        DataConfig,
        ModelConfig,
        Preset,
        TrainConfig,
        load_preset,
        preset_names,
    )
    from rgflow_core.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        RGFlowError,
        UsageError,
    )
    from rgflow_core.flow import RGFlow, build_model
    from rgflow_core.geometry import causal_cone, cone_latents, generator_cone, latent_levels
    from rgflow_core.inpaint import ConeLogProb
    from rgflow_core.latents import load_latents, save_latents
    from rgflow_core.mixing import mix_latents
    from rgflow_core.preprocess import Preprocess, bits_per_dim, dequantize, image_bpd, quantize
    from rgflow_core.priors import GaussianPrior, LaplacePrior
    from rgflow_core.receptive import receptive_field
    from rgflow_core.reference import export_reference, import_reference
