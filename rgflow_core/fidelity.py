"""Mixing fidelity on MSDS: does a mix across scales take its global factor from one image
and its local factors from the other?

`mix(a, b, S)` keeps the latents of levels >= S of image a and those below S of image b
(`rgflow_core.mixing`). On MSDS the factors can be read back from the pixels
(`rgflow_core.msds_readers`): msds1's global factor is the base colour and its local
factors the 16 ellipse angles; msds2's global factor is the base angle and its local
factors the 16 ellipse colours. A model that separates scales gives, for a high cut S,
mixes whose global factor is a's and whose local factors are b's.

Each row of the table reads one kind of image over N pairs (a, b) of test images:

* global_from_a: the fraction of pairs whose global factor is nearer a's than b's (ties
  count half);
* global_to_a: the mean distance of its global factor to a's;
* local_to_b_mean, local_to_b_median: the distance of its local factors to b's, over the
  16 ellipses of every pair.

Distances are msds1: RGB Euclidean distance (0..255 units) for colours, degrees on the
180-degree circle for angles; msds2 likewise. The rows "a" and "b" read the images
themselves: "a" has global_from_a 1 and global_to_a 0 by construction and its local
distance to b is what two unrelated images give; "b" is the opposite. `reader_error`
says how far the readers are from the labels on real test images, the floor under
every distance.

References: Hu et al., "RG-Flow", arXiv:2010.00029, section 5 (mixing in the scaling
direction, MSDS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rgflow_core.checks import check_int, check_seed
from rgflow_core.codec import decode_images, encode_images
from rgflow_core.errors import DataError, UsageError
from rgflow_core.flow import RGFlow
from rgflow_core.mixing import mix_latents
from rgflow_core.msds import IMAGE_SIZE, MSDS_NAMES
from rgflow_core.msds_readers import (
    Ellipses,
    angle_distance,
    colour_distance,
    global_factor,
    local_factors,
    read_ellipses,
)

MAX_PAIRS = 100_000
UNITS = {
    "msds1": {"global": "RGB distance (0..255)", "local": "degrees (0..90)"},
    "msds2": {"global": "degrees (0..90)", "local": "RGB distance (0..255)"},
}


@dataclass(frozen=True)
class FidelityRow:
    """The factors of one kind of image, read over all pairs (see the module docstring)."""

    image: str  # "a", "b" or "mix"
    scale: int | None  # the cut S of a mix; None for "a" and "b"
    pairs: int
    global_from_a: float  # fraction in [0, 1]
    global_to_a: float  # mean distance to a's global factor
    local_to_b_mean: float  # over pairs x 16 ellipses
    local_to_b_median: float


@dataclass(frozen=True)
class ReaderError:
    """The readers' error against the labels on real test images (same units as the rows)."""

    images: int
    global_mean: float  # mean distance of the read global factor to the labelled one
    local_mean: float  # over images x 16 ellipses
    local_median: float


def sample_pairs(n_images: int, pairs: int, seed: int = 0) -> Tensor:
    """`pairs` ordered pairs (a, b) of distinct image indices, drawn uniformly and
    independently (a pair may repeat), reproducibly from `seed`.

    Returns:
        LongTensor (pairs, 2).
    """
    check_int("n_images", n_images, 2)
    check_int("pairs", pairs, 1, MAX_PAIRS)
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    a = torch.randint(0, n_images, (pairs,), generator=gen)
    b = torch.randint(0, n_images - 1, (pairs,), generator=gen)
    return torch.stack([a, b + (b >= a).long()], dim=1)  # b skips a: always distinct


def _distances(name: str) -> tuple[Callable, Callable]:
    """(global distance, local distance) functions of an MSDS set."""
    if name == "msds1":
        return colour_distance, angle_distance
    return angle_distance, colour_distance


def _factors(name: str, ellipses: Ellipses) -> tuple[np.ndarray, np.ndarray]:
    return global_factor(name, ellipses), local_factors(name, ellipses)


def _check_images(images: np.ndarray | Tensor, argument: str) -> np.ndarray:
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise UsageError(
            f"must be uint8 MSDS images of shape (N, 3, 32, 32), got {images.dtype} "
            f"{tuple(images.shape)}",
            argument,
        )
    return images


def _row(name: str, image: str, scale: int | None, read: Ellipses, fa, fb) -> FidelityRow:
    """One row from the ellipses `read` of N images against a's and b's factors."""
    global_distance, local_distance = _distances(name)
    g, local = _factors(name, read)
    to_a, to_b = global_distance(g, fa[0]), global_distance(g, fb[0])
    nearer_a = np.where(to_a < to_b, 1.0, np.where(to_a == to_b, 0.5, 0.0))
    local_b = local_distance(local, fb[1])  # (N, 16)
    return FidelityRow(
        image=image,
        scale=scale,
        pairs=len(g),
        global_from_a=float(nearer_a.mean()),
        global_to_a=float(to_a.mean()),
        local_to_b_mean=float(local_b.mean()),
        local_to_b_median=float(np.median(local_b)),
    )


def fidelity_table(
    name: str,
    a: np.ndarray | Tensor,
    b: np.ndarray | Tensor,
    mixes: dict[int, np.ndarray | Tensor],
) -> list[FidelityRow]:
    """Read the factors of the images a, b and of their mixes, pair by pair.

    Arguments:
        name: "msds1" or "msds2".
        a, b: uint8 (N, 3, 32, 32), pair k is (a[k], b[k]).
        mixes: {S: uint8 (N, 3, 32, 32)}: mix(a[k], b[k], S) for each cut S.

    Returns:
        Rows "a", "b", then one "mix" row per S in increasing order.
    """
    if name not in MSDS_NAMES:
        raise UsageError(f"unknown MSDS set {name!r}; choose msds1 or msds2", "name")
    a, b = _check_images(a, "a"), _check_images(b, "b")
    if len(a) != len(b) or len(a) == 0:
        raise UsageError(f"needs as many images as a, at least one: {len(a)} and {len(b)}", "b")
    read_a, read_b = read_ellipses(a), read_ellipses(b)
    fa, fb = _factors(name, read_a), _factors(name, read_b)
    rows = [_row(name, "a", None, read_a, fa, fb), _row(name, "b", None, read_b, fa, fb)]
    for scale in sorted(mixes):
        mixed = _check_images(mixes[scale], "mixes")
        if len(mixed) != len(a):
            raise UsageError(f"scale {scale}: {len(mixed)} mixes for {len(a)} pairs", "mixes")
        rows.append(_row(name, "mix", scale, read_ellipses(mixed), fa, fb))
    return rows


def reader_error(
    name: str, images: np.ndarray | Tensor, labels: np.ndarray, factor: np.ndarray
) -> ReaderError:
    """The readers' error on labelled MSDS images, in the units of `fidelity_table`.

    Arguments:
        images: uint8 (N, 3, 32, 32). labels: (N, 16, 6) (x, y, angle, r, g, b).
        factor: the labelled global factor (msds1 (N, 3) base colour; msds2 (N,) degrees).
    """
    images = _check_images(images, "images")
    labels, factor = np.asarray(labels), np.asarray(factor)
    if labels.shape != (len(images), 16, 6) or len(factor) != len(images):
        raise DataError(
            f"labels {labels.shape} and factor {factor.shape} do not fit {len(images)} images"
        )
    global_distance, local_distance = _distances(name)
    g, local = _factors(name, read_ellipses(images))
    true_local = labels[..., 2] if name == "msds1" else labels[..., 3:]
    errors = local_distance(local, true_local)
    return ReaderError(
        images=len(images),
        global_mean=float(global_distance(g, factor).mean()),
        local_mean=float(errors.mean()),
        local_median=float(np.median(errors)),
    )


@torch.no_grad()
def mix_fidelity(
    model: RGFlow,
    name: str,
    images: Tensor,
    pairs: Tensor,
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[FidelityRow]:
    """Mix every pair at every cut S = 1..H-1 and tabulate the factors (`fidelity_table`).

    Arguments:
        model: an RG-Flow on 3 x 32 x 32 images.
        images: uint8 (N, 3, 32, 32) MSDS images; pairs: LongTensor (P, 2) of indices into
            them (see `sample_pairs`).
        progress: told how many images each encoding or decoding batch finished
            (in all: the distinct images of the pairs, then P per cut).
    """
    cfg = model.config
    if (cfg.channels, cfg.image_size) != (3, IMAGE_SIZE):
        raise UsageError(
            f"reading MSDS factors needs a model of 3x32x32 images; this one takes "
            f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}"
        )
    if cfg.levels < 2:
        raise UsageError("this model has a single RG level: there is no scale to cut at")
    _check_images(images, "images")
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise UsageError(f"must have shape (P, 2), got {tuple(pairs.shape)}", "pairs")
    if int(pairs.min()) < 0 or int(pairs.max()) >= len(images):
        raise UsageError(f"holds indices outside 0..{len(images) - 1}", "pairs")
    tell = progress or (lambda _: None)
    used, where = torch.unique(pairs, return_inverse=True)  # encode each image once
    z, _ = encode_images(model, images[used], batch_size, tell)
    za, zb = z[where[:, 0]], z[where[:, 1]]
    level_map = model.level_map.cpu()
    mixes = {
        s: decode_images(model, mix_latents(za, zb, s, level_map), batch_size, tell)
        for s in range(1, cfg.levels)
    }
    return fidelity_table(name, images[pairs[:, 0]], images[pairs[:, 1]], mixes)
