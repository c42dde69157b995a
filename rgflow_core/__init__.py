"""rgflow_core: RG-Flow, a hierarchical and explainable normalizing flow.

References: Hu, Wu, You, Olshausen, Chen, "RG-Flow: a hierarchical and explainable flow
model based on renormalization group and sparse prior", arXiv:2010.00029.
"""

from rgflow_core.checkpoint import load_model, read_metadata, save_model
from rgflow_core.config import (
    DataConfig,
    ModelConfig,
    Preset,
    TrainConfig,
    load_preset,
    preset_names,
)
from rgflow_core.errors import CheckpointError, ConfigError, DataError, RGFlowError, UsageError
from rgflow_core.explore import generator_cone, mix_latents, receptive_field
from rgflow_core.flow import RGFlow, build_model
from rgflow_core.geometry import causal_cone, cone_latents, latent_levels
from rgflow_core.inpaint import ConeLogProb
from rgflow_core.latents import load_latents, save_latents
from rgflow_core.preprocess import Preprocess, bits_per_dim, dequantize, quantize
from rgflow_core.priors import GaussianPrior, LaplacePrior

__all__ = [
    "CheckpointError",
    "ConeLogProb",
    "ConfigError",
    "DataConfig",
    "DataError",
    "GaussianPrior",
    "LaplacePrior",
    "ModelConfig",
    "Preprocess",
    "Preset",
    "RGFlow",
    "RGFlowError",
    "TrainConfig",
    "UsageError",
    "bits_per_dim",
    "build_model",
    "causal_cone",
    "cone_latents",
    "dequantize",
    "generator_cone",
    "latent_levels",
    "load_latents",
    "load_model",
    "load_preset",
    "mix_latents",
    "preset_names",
    "quantize",
    "read_metadata",
    "receptive_field",
    "save_latents",
    "save_model",
]
