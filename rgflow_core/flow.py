"""The RG-Flow bijection and model.

Level h acts on the sub-lattice image y_h = y[..., ::2**h, ::2**h] (M = L / 2**h pixels
on a side). It applies the disentangler (one block bijector on all K x K blocks shifted by
K/2, periodic boundary) and the decimator (the same kind of bijector, with its own
weights, on blocks aligned at multiples of K): by default the disentangler first, the
paper's order; the config's `block_grid` "aligned_first" runs the decimator first, as the
paper's public code does (`rgflow_core.geometry.BLOCK_GRIDS`). The pixels y_h[::2, ::2]
go on to level h + 1; the other three quarters are the latent variables of level h and
stay in place, so z has the image's shape and `latent_levels` tells each entry's level.

References: Hu et al., "RG-Flow: a hierarchical and explainable flow model based on
renormalization group and sparse prior", arXiv:2010.00029.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rgflow_core.config import ModelConfig
from rgflow_core.coupling import SUBNETS, ARLayer, CouplingLayer
from rgflow_core.geometry import from_blocks, grid_shift, latent_levels, sublayer_order, to_blocks
from rgflow_core.kernels import KERNELS
from rgflow_core.preprocess import Preprocess, dequantize, quantize
from rgflow_core.priors import PRIORS, Temperature


class BlockLayer(nn.Module):
    """One sub-layer: a block bijector applied to every K x K block of an image.

    Arguments:
        bijector: maps (N, C*K*K) rows to (rows, ladj (N,)); shared by all blocks.
        kernel_size: K.
        shift: 0 for aligned blocks (decimator), K/2 for shifted ones (disentangler).
    """

    def __init__(self, bijector: nn.Module, kernel_size: int, shift: int) -> None:
        super().__init__()
        self.bijector = bijector
        self.kernel_size = kernel_size
        self.shift = shift

    def _map_blocks(self, fn, x: Tensor) -> tuple[Tensor, Tensor]:
        B, C, M, _ = x.shape
        blocks = to_blocks(x, self.kernel_size, self.shift)  # (B*n*n, C, K, K)
        rows, ladj = fn(blocks.reshape(blocks.shape[0], -1))
        out = from_blocks(rows.view_as(blocks), M, self.shift)
        return out, ladj.view(B, -1).sum(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._map_blocks(self.bijector.forward, x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._map_blocks(self.bijector.inverse, z)


class RGLevel(nn.Module):
    """The two sub-layers of one RG level, the disentangler (blocks shifted by K/2) and the
    decimator (aligned blocks), applied in the order of `cfg.block_grid`."""

    def __init__(self, cfg: ModelConfig, n_layers: int) -> None:
        super().__init__()
        block = SUBNETS[cfg.subnet]

        def make() -> nn.Module:
            return block(
                cfg.channels, cfg.kernel_size, n_layers, cfg.n_hidden, cfg.n_res, cfg.n_mlp
            )

        K = cfg.kernel_size
        self.disentangler = BlockLayer(make(), K, grid_shift("disentangler", K))
        self.decimator = BlockLayer(make(), K, grid_shift("decimator", K))
        self.order = sublayer_order(cfg.block_grid)

    def sublayers(self) -> list[BlockLayer]:
        """The two sub-layers in the order the encoder (forward) applies them."""
        return [getattr(self, name) for name in self.order]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ladj = x.new_zeros(x.shape[0])
        for layer in self.sublayers():
            x, layer_ladj = layer(x)
            ladj = ladj + layer_ladj
        return x, ladj

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ladj = z.new_zeros(z.shape[0])
        for layer in reversed(self.sublayers()):
            z, layer_ladj = layer.inverse(z)
            ladj = ladj + layer_ladj
        return z, ladj


def insert_coarse(fine: Tensor, coarse: Tensor) -> Tensor:
    """Copy of `fine` (B, C, M, M) with its sub-lattice [::2, ::2] replaced by `coarse`."""
    out = fine.clone()
    out[..., ::2, ::2] = coarse
    return out


class RGFlow(nn.Module):
    """RG-Flow: the hierarchical bijection y <-> z plus a factorised prior on z.

    Arguments:
        cfg: the architecture.

    `forward(y) -> (z, ladj)` and `inverse(z) -> (y, ladj)` work in logit space (see
    `rgflow_core.preprocess`); `encode`/`decode` go between images in [0, 1] and z.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.levels = nn.ModuleList(RGLevel(cfg, n) for n in cfg.n_layers)
        self.prior = PRIORS[cfg.prior]()
        self.preprocess = Preprocess()
        self.register_buffer(
            "level_map", latent_levels(cfg.image_size, cfg.kernel_size), persistent=False
        )

    @property
    def checkpointing(self) -> bool:
        """Activation checkpointing per coupling layer (less memory, more compute)."""
        return any(m.checkpointing for m in self._blocks())

    @checkpointing.setter
    def checkpointing(self, value: bool) -> None:
        for m in self._blocks():
            m.checkpointing = value

    @property
    def kernel(self) -> str:
        """How the block bijectors run: "reference" (the plain code of `coupling` and
        `nets`), "fast" (the default: `rgflow_core.kernels`) or "compiled" (the fast
        kernels, with the training pass of each block bijector, or of each coupling layer
        in block bijectors of more than `kernels.MAX_LAYERS_PER_GRAPH` layers, one
        `torch.compile` graph). All compute the same maps."""
        return next(m.kernel for m in self._layers())

    @kernel.setter
    def kernel(self, value: str) -> None:
        if value not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {value!r}")
        for m in self._layers():
            m.kernel = value

    def _blocks(self):
        return (level.bijector for lv in self.levels for level in (lv.disentangler, lv.decimator))

    def _layers(self):
        return (m for m in self.modules() if isinstance(m, CouplingLayer | ARLayer))

    def _own_dtype(self, x: Tensor) -> Tensor:
        """x in the model's precision: a float64 model (one imported from a float64 run, say)
        computes in float64 whatever the precision of the data it is given, and vice versa."""
        return x.to(next(self.parameters()).dtype)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, C, L, L) -> z (B, C, L, L), ladj (B,), in the model's dtype."""
        y = self._own_dtype(y)
        ladj = y.new_zeros(y.shape[0])
        outs = []
        x = y
        for level in self.levels:
            x, level_ladj = level(x)
            ladj = ladj + level_ladj
            outs.append(x)
            x = x[..., ::2, ::2]
        z = outs[-1]
        for fine in reversed(outs[:-1]):
            z = insert_coarse(fine, z)
        return z, ladj

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, C, L, L) -> y (B, C, L, L), ladj (B,) = -ladj of forward at y."""
        z = self._own_dtype(z)
        ladj = z.new_zeros(z.shape[0])
        views = [z[..., :: 2**h, :: 2**h] for h in range(len(self.levels))]
        y = None
        for h in reversed(range(len(self.levels))):
            x = views[h] if y is None else insert_coarse(views[h], y)
            y, level_ladj = self.levels[h].inverse(x)
            ladj = ladj + level_ladj
        return y, ladj

    def temperature_map(self, levels: dict[int, float], default: float = 1.0) -> Tensor:
        """(L, L) temperatures, one per latent position, from a {level: T} mapping.

        A level not named takes the temperature of the nearest named level below it
        ({0: 0.2, 1: 0.8} gives 0.2 at level 0 and 0.8 at levels 1 and up), or `default`.
        """
        temps = torch.full(self.level_map.shape, float(default), device=self.level_map.device)
        current = default
        for h in range(self.config.levels):
            current = levels.get(h, current)
            temps[self.level_map == h] = float(current)
        return temps

    def log_prob(self, y: Tensor, temperature: Temperature = 1.0) -> Tensor:
        """Log-density (nats) of y in logit space: prior log p(z) + ladj, shape (B,)."""
        z, ladj = self(y)
        return self.prior.log_prob(z, temperature) + ladj

    def sample_latents(
        self, n: int, temperature: Temperature = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ prior at the given temperature (a float or a tensor broadcastable to z).

        The draw happens where `generator` lives, then moves to the model's device: with a
        CPU generator (what rgflow's commands use) a seed means the same latents on every
        device, whereas CUDA's random numbers differ from the CPU's.
        """
        p = next(self.parameters())
        cfg = self.config
        shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
        where = p.device if generator is None else generator.device
        z = self.prior.sample(shape, temperature, device=where, dtype=p.dtype, generator=generator)
        return z.to(p.device)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: Temperature = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """n samples in logit space (B, C, L, L). Use `decode` for images in [0, 1]."""
        y, _ = self.inverse(self.sample_latents(n, temperature, generator))
        return y

    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, L, L) -> z, without dequantisation noise (pixel centres)."""
        y, _ = self.preprocess(dequantize(images.to(self.level_map.device), noise=False))
        z, _ = self(y.to(next(self.parameters()).dtype))
        return z

    def decode(self, z: Tensor) -> Tensor:
        """z -> images in [0, 1] (clamped). `quantize` makes them uint8."""
        y, _ = self.inverse(z)
        x, _ = self.preprocess.inverse(y)
        return x.clamp(0.0, 1.0)

    def decode_uint8(self, z: Tensor) -> Tensor:
        """z -> uint8 images (B, C, L, L); exact inverse of `encode` up to float error."""
        return quantize(self.decode(z))


def build_model(cfg: ModelConfig) -> RGFlow:
    """A freshly initialised RG-Flow: the identity map, since all coupling gains are zero."""
    return RGFlow(cfg)


# --- size, before anything is allocated ---------------------------------------------------


def parameter_count(cfg: ModelConfig) -> int:
    """Number of trainable parameters of the model `cfg` describes, without building it."""
    block = SUBNETS[cfg.subnet]
    features = cfg.channels * cfg.kernel_size**2
    per_level = (
        block.count_parameters(features, cfg.n_hidden, cfg.n_res, cfg.n_mlp, n)
        for n in cfg.n_layers
    )
    return 2 * sum(per_level)  # disentangler + decimator


def memory_needed(cfg: ModelConfig, batch_size: int = 0) -> int:
    """A rough upper estimate of the bytes (float32) to hold the model and, for a batch
    size > 0, to train it: weights, gradients and two Adam moments, plus the activations
    a training step keeps (counted as two tensors per Linear of every block evaluation,
    though the fast kernels keep one, and as much again for the temporaries around
    them). For celeba32 at batch 64 it says 16.9 GiB; no measurement on a GPU has been
    recorded to check it against."""
    params = parameter_count(cfg)
    if batch_size <= 0:
        return 4 * params
    rows = sum(
        2 * n * (cfg.image_size // 2**h // cfg.kernel_size) ** 2 for h, n in enumerate(cfg.n_layers)
    )  # block evaluations per image: sub-layers x layers x blocks
    width = cfg.channels * cfg.kernel_size**2 + cfg.n_mlp * cfg.n_hidden
    activations = rows * 2 * 2 * cfg.n_res * 3 * width  # 2 passes, 2 nets, ~3 tensors
    return 4 * (4 * params + batch_size * activations)


def check_memory(
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 0,
    *,
    allow_large: bool = False,
) -> None:
    """Refuse a model (and batch) that would not fit in the device's free memory.

    Raises:
        UsageError: with the estimate and what is free, unless `allow_large`.
    """
    from rgflow_core.device import available_memory
    from rgflow_core.errors import UsageError

    need, free = memory_needed(cfg, batch_size), available_memory(device)
    if allow_large or free is None or need <= free:
        return
    what = f"training it at batch size {batch_size}" if batch_size else "this model"
    raise UsageError(
        f"{what} needs about {need / 2**30:.1f} GiB ({parameter_count(cfg):,} parameters), "
        f"but {torch.device(device)} has {free / 2**30:.1f} GiB free; use a smaller model or "
        "batch, or insist with {allow_large}"
    )
