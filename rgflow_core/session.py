"""An interactive session with one model: the state behind `rgflow explore`.

The session keeps the latents z (1, C, L, L) of the image being explored, the latents of a
second image (the partner for mixing across scales), one temperature and one lock per RG
level, and a generator, and answers tensor-in, tensor-out requests: redraw some levels,
move one latent, mix, encode an image; its `reach` answers where a position's latents act
(cones and receptive fields).

Decoding is incremental and exact: the generator runs the levels from the top (coarsest)
down, and a latent of level h enters the generator only at level h, so a change of level-h
latents leaves the outputs of levels above h as they were. The session caches each level's
output and re-runs only the levels at and below the highest changed one, with the very
operations of `RGFlow.inverse`, so `image()` equals `decode_images(model, z)` bit for bit.

References: Hu et al., "RG-Flow", arXiv:2010.00029, sections 4-5.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgflow_core.checks import check_choice, check_float, check_int
from rgflow_core.codec import encode_images, model_device, sample_images
from rgflow_core.errors import UsageError
from rgflow_core.flow import RGFlow, insert_coarse
from rgflow_core.geometry import check_level, cone_latents, generator_cone
from rgflow_core.mixing import check_scale, latent_statistics, mix_latents, top_variance_latents
from rgflow_core.preprocess import quantize
from rgflow_core.receptive import receptive_field

MAX_SPREAD = 10.0  # a factor moves at most this many standard deviations from its mean
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 5.0
MAX_STAT_IMAGES = 4096
TARGETS = ("current", "second")


class ExploreSession:
    """The latents being explored and the operations on them.

    Arguments:
        model: the RG-Flow (put in eval mode; its parameters are not changed).
        reference: uint8 images (N, C, L, L), N >= 2, whose encoded latents set each latent's
            mean and spread (`latent_statistics`); None: `samples` encoded prior samples.
        samples: number of prior samples for the statistics when there is no `reference`.
        top: number of factors (latents of largest spread) offered per level.
        seed: seed of the session's generator (samples, resampling).
        rf_samples: prior samples per receptive field (few: it is computed on demand).

    Images are uint8 (C, L, L) on the CPU; latents live on the model's device.
    """

    def __init__(
        self,
        model: RGFlow,
        reference: Tensor | None = None,
        *,
        samples: int = 64,
        top: int = 8,
        seed: int = 0,
        rf_samples: int = 2,
    ) -> None:
        self.model = model.eval()
        cfg = model.config
        self.channels, self.size, self.levels = cfg.channels, cfg.image_size, cfg.levels
        self.kernel_size = cfg.kernel_size
        self.device, self.dtype = model_device(model)
        self.level_map = model.level_map.cpu()
        self.reach = Reach(model, seed, rf_samples)
        self.generator = torch.Generator().manual_seed(seed)
        self.temperatures = [1.0] * self.levels
        self.locks = [False] * self.levels
        if reference is None:
            check_int("samples", samples, 2, MAX_STAT_IMAGES)
            reference = sample_images(model, samples, 1.0, self.generator)
        check_int("reference images", len(reference), 2, MAX_STAT_IMAGES)
        z_ref, _ = encode_images(model, self._check_images(reference))
        mean, std = latent_statistics(z_ref)
        # a latent that never varies would give factor values of 0/0; keep the spread > 0
        to_model = {"device": self.device, "dtype": self.dtype}
        self.mean, self.std = mean.to(**to_model), std.clamp_min(1e-6).to(**to_model)
        self.top = {  # level -> its factors (c, i, j), largest spread first
            h: top_variance_latents(std, self.level_map, h, min(top, self.level_count(h)))
            for h in range(self.levels)
        }
        self.z = self._draw()
        self.second = self._draw()
        self._decoder = LevelDecoder(model)

    # --- what the model looks like ------------------------------------------------------

    def level_count(self, level: int) -> int:
        """Number of latents (positions x channels) of a level."""
        return int((self.level_map == level).sum()) * self.channels

    # --- drawing and editing latents ----------------------------------------------------

    def _draw(self) -> Tensor:
        temps = self.model.temperature_map(dict(enumerate(self.temperatures)))
        return self.model.sample_latents(1, temps, self.generator)

    def _redraw(self, levels: list[int]) -> None:
        if not levels:
            return
        mask = torch.isin(self.level_map, torch.tensor(levels)).to(self.device)
        self.z = torch.where(mask, self._draw(), self.z)
        self._touch(max(levels))

    def _touch(self, level: int) -> None:
        self._decoder.touch(level)

    def sample(self) -> None:
        """A new sample: the latents of every unlocked level redrawn at its temperature."""
        self._redraw([h for h in range(self.levels) if not self.locks[h]])

    def resample_level(self, level: int) -> None:
        """Redraw the latents of one level (locked or not), the others held."""
        self._redraw([check_level(self.levels, level)])

    def set_lock(self, level: int, locked: bool) -> None:
        """Lock a level: `sample()` then leaves its latents as they are."""
        self.locks[check_level(self.levels, level)] = bool(locked)

    @torch.no_grad()
    def set_temperature(self, level: int, temperature: float) -> None:
        """Set a level's temperature and rescale its latents to it (z = T * unit draw)."""
        check_level(self.levels, level)
        t = check_float("temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
        mask = (self.level_map == level).to(self.device)
        self.z = torch.where(mask, self.z * (t / self.temperatures[level]), self.z)
        self.temperatures[level] = t
        self._touch(level)

    def _factor(self, level: int, index: int) -> tuple[int, int, int]:
        check_level(self.levels, level)
        return self.top[level][check_int("index", index, 0, len(self.top[level]) - 1)]

    def factors(self, level: int) -> list[dict[str, float | int]]:
        """The factors of a level: each latent (c, i, j) with its mean, spread and current
        value in units of its spread, `(z - mean) / std`."""
        out = []
        for index in range(len(self.top[check_level(self.levels, level)])):
            c, i, j = self._factor(level, index)
            mean, std = float(self.mean[c, i, j]), float(self.std[c, i, j])
            value = (float(self.z[0, c, i, j]) - mean) / std
            out.append({"c": c, "i": i, "j": j, "mean": mean, "std": std, "value": value})
        return out

    @torch.no_grad()
    def set_factor(self, level: int, index: int, value: float) -> None:
        """Move factor `index` of a level to mean + value * std, the other latents held."""
        c, i, j = self._factor(level, index)
        value = check_float("value", value, -MAX_SPREAD, MAX_SPREAD)
        self.z[0, c, i, j] = self.mean[c, i, j] + value * self.std[c, i, j]
        self._touch(level)

    def set_latents(self, z: Tensor, target: str = "current") -> None:
        """Replace the latents (1, C, L, L) of the current or the second image."""
        check_choice("target", target, TARGETS)
        shape = (1, self.channels, self.size, self.size)
        if tuple(z.shape) != shape or not bool(torch.isfinite(z).all()):
            raise UsageError(f"must be finite latents of shape {shape}", "z")
        z = z.to(self.device, self.dtype).clone()
        if target == "second":
            self.second = z
            return
        self.z = z
        self.temperatures = [1.0] * self.levels  # the latents are the image's own
        self._touch(self.levels - 1)

    def encode(self, image: Tensor, target: str = "current") -> None:
        """Make an image (uint8 (C, L, L)) the current or the second one, encoded exactly."""
        z, _ = encode_images(self.model, self._check_images(image.unsqueeze(0)))
        self.set_latents(z, target)

    def swap(self) -> None:
        """Exchange the current and the second image."""
        current = self.z
        self.set_latents(self.second)
        self.second = current

    def sample_second(self) -> None:
        """A new prior sample (at the levels' temperatures) as the second image."""
        self.second = self._draw()

    def mix_latents(self, scale: int) -> Tensor:
        """(1, C, L, L): levels >= `scale` of the current image, those below of the second."""
        check_scale(self.model, scale)
        return mix_latents(self.z, self.second, scale, self.level_map)

    def use_mix(self, scale: int) -> None:
        """Make the mix at `scale` the current image."""
        self.set_latents(self.mix_latents(scale))

    # --- images -------------------------------------------------------------------------

    def _check_images(self, images: Tensor) -> Tensor:
        shape = (self.channels, self.size, self.size)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
            raise UsageError(f"must be uint8 images of shape {shape}", "image")
        return images

    def image(self) -> Tensor:
        """The current image, uint8 (C, L, L): only the changed levels are re-run."""
        return self._decoder.image(self.z)

    @torch.inference_mode()
    def decode(self, z: Tensor) -> Tensor:
        """Latents (1, C, L, L) -> uint8 (C, L, L), a full decode."""
        return self.model.decode_uint8(z.to(self.device, self.dtype))[0].cpu()

    def second_image(self) -> Tensor:
        """The second image, uint8 (C, L, L)."""
        return self.decode(self.second)

    def mix(self, scale: int) -> Tensor:
        """The mix at `scale`, uint8 (C, L, L)."""
        return self.decode(self.mix_latents(scale))

    def bits_per_dim(self) -> Tensor:
        """(1,) bits per dimension of the current image, as `rgflow encode` reports it."""
        return encode_images(self.model, self.image().unsqueeze(0))[1]

    def latents(self) -> Tensor:
        """A copy of the current latents (1, C, L, L) on the CPU, as `save_latents` takes."""
        return self.z.detach().cpu().clone()


class Reach:
    """Where the latents of one model act: the cones and receptive fields of a lattice
    position (i, j). Receptive fields are cached per position and use a fixed seed, so
    the same position always shows the same field."""

    def __init__(self, model: RGFlow, seed: int = 0, rf_samples: int = 2) -> None:
        self.model = model
        self.size, self.kernel_size = model.config.image_size, model.config.kernel_size
        self.block_grid = model.config.block_grid
        self.device, _ = model_device(model)
        self.seed = seed
        self.rf_samples = check_int("rf_samples", rf_samples, 1, 1000)
        self._rf_cache: dict[tuple[int, int], Tensor] = {}

    def _position(self, i: int, j: int) -> tuple[int, int]:
        return check_int("i", i, 0, self.size - 1), check_int("j", j, 0, self.size - 1)

    def latents_for_pixel(self, i: int, j: int) -> Tensor:
        """(L, L) bool: the latent positions whose generator cone reaches pixel (i, j)."""
        pixel = torch.zeros(self.size, self.size, dtype=torch.bool)
        pixel[self._position(i, j)] = True
        return cone_latents(pixel, self.kernel_size, self.block_grid)

    def latent_cone(self, i: int, j: int) -> Tensor:
        """(L, L) bool: the pixels that the latents at position (i, j) can change."""
        latent = torch.zeros(self.size, self.size, dtype=torch.bool)
        latent[self._position(i, j)] = True
        return generator_cone(latent, self.kernel_size, self.block_grid)

    def receptive_field(self, i: int, j: int) -> Tensor:
        """(L, L) float in [0, 1]: the receptive field of the latents at position (i, j)
        (summed over their channels), divided by its maximum. Cached per position."""
        key = self._position(i, j)
        if key not in self._rf_cache:
            generator = torch.Generator().manual_seed(self.seed)
            with torch.enable_grad():
                rf = receptive_field(
                    self.model, torch.tensor([key]), self.rf_samples, generator=generator
                )[0].float()
            self._rf_cache[key] = rf / rf.max().clamp_min(1e-30)
        return self._rf_cache[key]


class LevelDecoder:
    """Decodes latents (1, C, L, L) of one model level by level from the top, keeping each
    level's output, so that after `touch(h)` (latents of levels <= h changed) only levels
    h..0 are re-run. The operations are those of `RGFlow.inverse`, in its order, so the
    image equals a full decode bit for bit. Starts with everything out of date."""

    def __init__(self, model: RGFlow) -> None:
        self.model = model
        self._outputs: list[Tensor | None] = [None] * model.config.levels
        self._stale = model.config.levels - 1  # the highest level whose output is out of date
        self._image: Tensor | None = None

    def touch(self, level: int) -> None:
        """The latents of `level` (or of levels below it) changed."""
        self._stale = max(self._stale, level)

    @torch.inference_mode()
    def image(self, z: Tensor) -> Tensor:
        """uint8 (C, L, L): the image of `z`, given every change since the last call was
        announced by `touch`."""
        if self._stale >= 0:
            top = len(self._outputs) - 1
            y = None if self._stale == top else self._outputs[self._stale + 1]
            for h in range(self._stale, -1, -1):
                view = z[..., :: 2**h, :: 2**h]
                x = view if y is None else insert_coarse(view, y)
                y, _ = self.model.levels[h].inverse(x)
                self._outputs[h] = y
            x, _ = self.model.preprocess.inverse(y)
            self._image = quantize(x.clamp(0.0, 1.0))[0].cpu()
            self._stale = -1
        return self._image
