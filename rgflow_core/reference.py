"""Models trained with the paper's public code: read them, convert them, write them back.

The paper's `main.py` saves `torch.save({'flow': flow.state_dict(), 'optimizer': ...})` as
`<out>_save/<epoch>.state`; multi-GPU runs prefix every key with `module.net.`. Its flow
is a list of 2H block sub-layers: entry d = 2h + grid of RG level h, grid 0 on the aligned
block grid and grid 1 on the shifted one, applied in that order (rgflow's `block_grid`
"aligned_first"). Each sub-layer is an RNVP with, per coupling layer l, a residual MLP for
s (`s_layers.l`) and one for t (`t_layers.l`):

    layers.{d}.{s|t}_layers.{l}.res_blocks.{r}.{2k}.scale          Swish slope (in_k,)
    layers.{d}.{s|t}_layers.{l}.res_blocks.{r}.{2k+1}.weight_v     Linear (out_k, in_k)
    layers.{d}.{s|t}_layers.{l}.res_blocks.{r}.{2k+1}.weight_g     weight norm (out_k, 1)
    layers.{d}.{s|t}_layers.{l}.res_blocks.{r}.{2k+1}.bias         (out_k,)
    layers.{d}.{s|t}_layers.{l}.scale.scale                        the gain a or b (D,)
    layers.{d}.{s|t}_layers.{l}.scale.saved_mean / saved_var       debug buffers (ignored)
    layers.{d}.mask_left / mask_right                              checkerboard (C, K, K)
    prior.scale                                                    1/sqrt(2) Laplace, 1 Gaussian

Every tensor maps to one slice of rgflow's stacked s/t nets (`rgflow_core.nets`) without a
transpose; only the D = C*K*K feature axes are permuted, because rgflow orders a block's
features by checkerboard half (`checkerboard_order`) and the paper's code by (c, i, j).
The architecture is inferred from the keys and shapes alone; the image size, which no
tensor holds, is L = K * 2**(H-1) as the paper's code's depth implies. What rgflow cannot
represent (a per-level `nresblocks`, `nmlp` or `nhidden`, the `ar` subnet) is refused.

Files are read only through `torch.load(weights_only=True)`: a pickle that names anything
but tensors and plain containers is refused before any of it runs.

References: Hu et al., "RG-Flow", arXiv:2010.00029, and its code (github.com/hongyehu/RG-Flow).
"""

from __future__ import annotations

import hashlib
import io
import math
import platform
import re
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rgflow_core import __version__
from rgflow_core.config import ModelConfig
from rgflow_core.coupling import checkerboard_order
from rgflow_core.errors import CheckpointError, ConfigError, UsageError
from rgflow_core.files import atomic_write_bytes, missing_file_reason

SOURCE_FORMAT = "rg-flow-reference"  # the provenance's name for the paper's `.state` files
PREFIX = "module.net."  # what the paper's DataParallel wrapper puts before every key
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
PRIOR_SCALES = {"laplace": 1 / math.sqrt(2), "gaussian": 1.0}  # prior.scale at T = 1
GRIDS = ("decimator", "disentangler")  # grid 0 (aligned) and grid 1 (shifted) of a level
NETS = ("s_layers", "t_layers")  # index 0 and 1 of rgflow's stacked nets
MAX_KEYS = 1_000_000  # a state dict with more entries is not a model of that code
OPTIONAL = ("saved_mean", "saved_var", "prior.scale")  # debug buffers; the prior may be given

_RES_KEY = re.compile(
    r"layers\.(\d+)\.(s_layers|t_layers)\.(\d+)\.res_blocks\.(\d+)\.(\d+)\."
    r"(weight_v|weight_g|bias|scale)"
)
_GAIN_KEY = re.compile(
    r"layers\.(\d+)\.(s_layers|t_layers)\.(\d+)\.scale\.(scale|saved_mean|saved_var)"
)
_MASK_KEY = re.compile(r"layers\.(\d+)\.(mask_left|mask_right)")


@dataclass
class ReferenceState:
    """What a `.state` file of the paper's code holds, keys without the `module.net.` prefix."""

    flow: dict[str, Tensor]
    has_optimizer: bool
    prefixed: bool
    sha256: str
    epoch: int | None  # from the file name `<epoch>.state`, if it is one


# --- reading -----------------------------------------------------------------------------


def read_reference(path: str | Path) -> ReferenceState:
    """Read a checkpoint of the paper's code safely (`torch.load(weights_only=True)`).

    Accepts `{'flow': ..., 'optimizer': ...}`, `{'flow': ...}` or the bare state dict, with
    or without the `module.net.` prefix.

    Raises:
        CheckpointError: missing file, Git LFS pointer, a pickle naming anything but tensors
            and plain containers, a corrupt file, or one that holds no flow state.
    """
    path = Path(path)
    reason = missing_file_reason(path)
    if reason is not None:
        raise CheckpointError(f"checkpoint {path} {reason}")
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(LFS_POINTER):
        raise CheckpointError(
            f"{path} is a Git LFS pointer file, not the weights: run `git lfs pull` in the "
            "repository it came from (or download the file itself) and import that"
        )
    if head[8:10] == b'{"' and not zipfile.is_zipfile(path):  # a safetensors header
        raise CheckpointError(
            f"{path} is a safetensors file (an rgflow checkpoint?), not a .state file of the "
            "paper's code; rgflow reads it as it is"
        )
    obj = _safe_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds no state dict of the paper's code")
    flow = obj.get("flow") if "flow" in obj or "optimizer" in obj else obj
    if not isinstance(flow, Mapping) or not flow:
        raise CheckpointError(f"{path} holds no flow weights ('flow' is missing or empty)")
    if len(flow) > MAX_KEYS:
        raise CheckpointError(
            f"{path} holds {len(flow):,} entries: not a model of the paper's code"
        )
    prefixed = any(str(k).startswith(PREFIX) for k in flow)
    state: dict[str, Tensor] = {}
    for key, value in flow.items():
        name = str(key).removeprefix(PREFIX)
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        state[name] = value
    match = re.fullmatch(r"(\d+)\.state", path.name)
    return ReferenceState(
        flow=state,
        has_optimizer=isinstance(obj.get("optimizer"), Mapping),
        prefixed=prefixed,
        sha256=_sha256(path),
        epoch=int(match.group(1)) if match else None,
    )


def _safe_load(path: Path) -> Any:
    # mmap leaves the (possibly large) optimizer state on disk; only zip files support it
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if named:
            raise CheckpointError(
                f"refused {path}: its pickle names {named.group(1)}, not only tensors and plain "
                "containers, and rgflow never runs code from a file (nothing in it was run)"
            ) from err
        raise CheckpointError(
            f"{path} is not a readable checkpoint of the paper's code (corrupt, truncated, "
            "or not a torch.save file; nothing in it was run)"
        ) from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the architecture, from keys and shapes ----------------------------------------------


def _net_key(d: int, net: str, layer: int, rest: str) -> str:
    return f"layers.{d}.{net}.{layer}.{rest}"


def infer_config(
    shapes: Mapping[str, tuple[int, ...]], prior: str = "auto", prior_scale: float | None = None
) -> ModelConfig:
    """The rgflow architecture of a flow state of the paper's code, from its keys and shapes.

    Arguments:
        shapes: key (without `module.net.`) -> tensor shape.
        prior: "laplace" or "gaussian", or "auto" to read it from `prior_scale`.
        prior_scale: the value of `prior.scale` (None if absent).

    Raises:
        CheckpointError: a key that code does not write, a missing one, a wrong shape, or a
            design rgflow cannot represent (said why).
    """
    depth: dict[int, dict[str, set[int]]] = {}
    res: dict[tuple[int, str, int], set[tuple[int, int]]] = {}
    for key in shapes:
        if m := _RES_KEY.fullmatch(key):
            d, net, layer = int(m[1]), m[2], int(m[3])
            depth.setdefault(d, {n: set() for n in NETS})[net].add(layer)
            res.setdefault((d, net, layer), set()).add((int(m[4]), int(m[5])))
        elif m := _GAIN_KEY.fullmatch(key):
            depth.setdefault(int(m[1]), {n: set() for n in NETS})[m[2]].add(int(m[3]))
        elif m := _MASK_KEY.fullmatch(key):
            depth.setdefault(int(m[1]), {n: set() for n in NETS})
        elif key != "prior.scale":
            raise CheckpointError(_unexpected(key))
    if not depth:
        raise CheckpointError("no RG layers found: not a flow of the paper's code")
    D = max(depth) + 1
    if len(depth) != D or D % 2:  # (never a range of D: D comes from the file)
        raise CheckpointError(
            f"the RG layers are numbered {_ranges(sorted(depth))}; the paper's code writes "
            "two per level (aligned and shifted grid), numbered from 0"
        )
    H = D // 2
    mask = shapes.get("layers.0.mask_left")
    if mask is None or len(mask) != 3 or mask[1] != mask[2]:
        raise CheckpointError(f"layers.0.mask_left is {_shape(mask)}, expected (C, K, K)")
    C, K = mask[0], mask[1]
    n_layers = []
    for h in range(H):
        counts = []
        for d in (2 * h, 2 * h + 1):
            for net in NETS:
                found = depth[d][net]
                if found and max(found) != len(found) - 1:
                    missing = next(i for i in range(len(found)) if i not in found)
                    raise CheckpointError(f"missing key {_net_key(d, net, missing, '...')}")
            s, t = len(depth[d]["s_layers"]), len(depth[d]["t_layers"])
            if s != t:
                raise CheckpointError(f"layer {d} has {s} s-nets but {t} t-nets")
            counts.append(s)
        if counts[0] != counts[1]:
            raise CheckpointError(
                f"level {h} has {counts[0]} coupling layers on its aligned grid and {counts[1]} "
                "on its shifted one; rgflow needs the same number on both grids of a level"
            )
        n_layers.append(counts[0])
    if any(n == 0 for n in n_layers):
        raise CheckpointError(
            f"nlayers {n_layers}: a level without coupling layers cannot be represented in rgflow"
        )
    n_res, n_mlp, n_hidden = _net_shape(shapes, res, C * K * K)
    config = _make_config(
        image_size=K * 2 ** (H - 1),
        channels=C,
        kernel_size=K,
        prior=_choose_prior(prior, prior_scale),
        n_layers=tuple(n_layers),
        n_res=n_res,
        n_mlp=n_mlp,
        n_hidden=n_hidden,
    )
    # Walked lazily: a few keys with large indices may imply a huge architecture, and the
    # first missing key ends the walk before it is ever built.
    found = 0
    for key, shape in _reference_keys(config):
        if key in shapes:
            found += 1
            if tuple(shapes[key]) != shape:
                raise CheckpointError(
                    f"{key} has shape {_shape(shapes[key])}, expected {_shape(shape)}"
                )
        elif not key.endswith(OPTIONAL):
            raise CheckpointError(f"missing key {key} (a truncated or incomplete model?)")
    if found != len(shapes):
        expected = reference_shapes(config)
        raise CheckpointError(_unexpected(next(k for k in shapes if k not in expected)))
    return config


def _net_shape(
    shapes: Mapping[str, tuple[int, ...]],
    res: dict[tuple[int, str, int], set[tuple[int, int]]],
    features: int,
) -> tuple[int, int, int]:
    """(n_res, n_mlp, n_hidden), the same for every net, or a refusal saying why not."""
    per_net = {}
    for (d, net, layer), entries in res.items():
        n_res = max(r for r, _ in entries) + 1
        n_linear = (max(k for _, k in entries) + 1) // 2
        first = shapes.get(_net_key(d, net, layer, "res_blocks.0.1.weight_v"))
        if first is None or len(first) != 2:
            raise CheckpointError(
                f"{_net_key(d, net, layer, 'res_blocks.0.1.weight_v')} is {_shape(first)}, "
                "expected (out, in)"
            )
        per_net[d, net, layer] = (n_res, n_linear - 1, first[0] if n_linear > 1 else features)
        if first[1] != features:
            raise CheckpointError(
                f"{_net_key(d, net, layer, 'res_blocks.0.1.weight_v')} reads {first[1]} "
                f"features, the masks give C*K*K = {features}"
            )
    if not per_net:
        raise CheckpointError("no residual nets found: not an RNVP flow of the paper's code")
    values = set(per_net.values())
    if len(values) > 1:
        names = ("nresblocks", "nmlp", "nhidden")
        differ = [
            f"{name} ({', '.join(map(str, sorted({v[i] for v in values})))})"
            for i, name in enumerate(names)
            if len({v[i] for v in values}) > 1
        ]
        raise CheckpointError(
            f"per-level {' and '.join(differ)}: rgflow uses one nresblocks, nmlp and nhidden "
            "for all levels, so this model cannot be represented"
        )
    n_res, n_mlp, n_hidden = values.pop()
    if n_mlp < 1:
        raise CheckpointError(
            "nmlp 0 (a residual block of one Linear) cannot be represented: rgflow's residual "
            "blocks have at least one hidden layer"
        )
    return n_res, n_mlp, n_hidden


def _make_config(**values: Any) -> ModelConfig:
    try:
        return ModelConfig(**values, subnet="rnvp", block_grid="aligned_first")
    except ConfigError as err:
        raise CheckpointError(f"this model cannot be represented in rgflow: {err}") from err


def _choose_prior(prior: str, scale: float | None) -> str:
    if prior in PRIOR_SCALES:
        return prior
    if prior != "auto":
        raise UsageError(f"must be auto, laplace or gaussian, got {prior!r}", "prior")
    if scale is None:
        raise CheckpointError("the file holds no prior.scale; say which prior with {prior}")
    for name, value in PRIOR_SCALES.items():
        if math.isclose(scale, value, rel_tol=1e-6):
            return name
    raise CheckpointError(
        f"prior.scale is {scale:g}, neither Laplace's 1/sqrt(2) nor Gaussian's 1 at "
        "temperature 1; say which prior with {prior}"
    )


def _unexpected(key: str) -> str:
    if re.fullmatch(r"layers\.\d+\.[st]_layers\.\d+\.res_blocks\.\d+\.\d+\.(weight|mask)", key):
        return (
            f"unexpected key {key}: this is the `ar` subnet (masked MADE nets without weight "
            "norm), a different design that rgflow cannot represent"
        )
    return f"unexpected key {key}: not a key the paper's code writes for an RNVP RG-Flow"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else f"({', '.join(map(str, shape))})"


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")


def reference_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the paper's flow state for the architecture `cfg`, with its shape."""
    return dict(_reference_keys(cfg))


def _reference_keys(cfg: ModelConfig):
    C, K = cfg.channels, cfg.kernel_size
    F = C * K * K
    widths = [F] + [cfg.n_hidden] * cfg.n_mlp + [F]
    for h, n in enumerate(cfg.n_layers):
        for grid in range(2):
            d = 2 * h + grid
            for net in NETS:
                for layer in range(n):
                    for r in range(cfg.n_res):
                        for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
                            base = f"layers.{d}.{net}.{layer}.res_blocks.{r}"
                            yield f"{base}.{2 * k}.scale", (i,)
                            yield f"{base}.{2 * k + 1}.bias", (o,)
                            yield f"{base}.{2 * k + 1}.weight_g", (o, 1)
                            yield f"{base}.{2 * k + 1}.weight_v", (o, i)
                    for buf in ("scale", "saved_mean", "saved_var"):
                        yield f"layers.{d}.{net}.{layer}.scale.{buf}", (F,)
            yield f"layers.{d}.mask_left", (C, K, K)
            yield f"layers.{d}.mask_right", (C, K, K)
    yield "prior.scale", ()


# --- converting ---------------------------------------------------------------------------


def _checkerboard(cfg: ModelConfig) -> Tensor:
    K = cfg.kernel_size
    ij = torch.arange(K)
    left = ((ij.view(K, 1) + ij.view(1, K)) % 2 == 0).expand(cfg.channels, K, K)
    return left.to(torch.float64)


def _slots(cfg: ModelConfig):
    """(rgflow key, net index, reference key, feature axes, row) of every weight: the net
    index is None for the gains (one tensor per layer); the feature axes of the reference
    tensor are permuted into checkerboard order; a row (bias, beta) is stored (1, width)."""
    n_linear = cfg.n_mlp + 1
    for h, n in enumerate(cfg.n_layers):
        for grid, sublayer in enumerate(GRIDS):
            d = 2 * h + grid
            for layer in range(n):
                ours = f"levels.{h}.{sublayer}.bijector.layers.{layer}"
                for index, net in enumerate(NETS):
                    theirs = f"layers.{d}.{net}.{layer}"
                    gain = "gain_s" if net == "s_layers" else "gain_t"
                    yield f"{ours}.{gain}", None, f"{theirs}.scale.scale", (0,), False
                    for r in range(cfg.n_res):
                        for k in range(n_linear):
                            i = r * n_linear + k
                            first, last = k == 0, k == n_linear - 1
                            lin = f"{theirs}.res_blocks.{r}.{2 * k + 1}"
                            swish = f"{theirs}.res_blocks.{r}.{2 * k}.scale"
                            out_axes = (0,) if last else ()
                            in_axes = (1,) if first else ()
                            yield (
                                f"{ours}.net.v.{i}",
                                index,
                                f"{lin}.weight_v",
                                out_axes + in_axes,
                                False,
                            )
                            yield f"{ours}.net.g.{i}", index, f"{lin}.weight_g", out_axes, False
                            yield f"{ours}.net.bias.{i}", index, f"{lin}.bias", out_axes, True
                            yield f"{ours}.net.beta.{i}", index, swish, (0,) if first else (), True


def _permute(t: Tensor, axes: tuple[int, ...], index: Tensor) -> Tensor:
    for axis in axes:
        t = t.index_select(axis, index)
    return t


def from_reference(flow: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """rgflow's state dict (for `build_model(cfg)`) from the paper's flow state.

    Raises:
        CheckpointError: wrong masks or a weight that holds NaN or infinite values.
    """
    left = _checkerboard(cfg)
    for d in range(2 * cfg.levels):
        for name, want in (("mask_left", left), ("mask_right", 1 - left)):
            if not torch.equal(flow[f"layers.{d}.{name}"].to(torch.float64), want):
                raise CheckpointError(
                    f"layers.{d}.{name} is not the checkerboard the paper's code makes; "
                    "rgflow's coupling masks cannot represent it"
                )
    order = checkerboard_order(cfg.channels, cfg.kernel_size)
    stacks: dict[str, list[Tensor | None]] = {}
    out: dict[str, Tensor] = {}
    for ours, index, theirs, axes, row in _slots(cfg):
        t = flow[theirs]
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"weight {theirs} holds NaN or infinite values")
        t = _permute(t, axes, order)
        if index is None:
            out[ours] = t.clone()
            continue
        stacks.setdefault(ours, [None, None])[index] = t.unsqueeze(0) if row else t
    for key, (s, t) in stacks.items():
        out[key] = torch.stack([s, t])
    return out


def to_reference(model: torch.nn.Module) -> dict[str, Tensor]:
    """The paper's flow state (its key names, feature order and debug buffers) of an
    rgflow model with `block_grid` "aligned_first" and the "rnvp" subnet.

    Raises:
        UsageError: the model's design has no counterpart in the paper's code.
    """
    cfg: ModelConfig = model.config
    if cfg.subnet != "rnvp":
        raise UsageError(
            f"the {cfg.subnet!r} subnet cannot be exported: the paper's code has its own, "
            "different autoregressive design"
        )
    if cfg.block_grid != "aligned_first":
        raise UsageError(
            f"this model applies its grids {cfg.block_grid}; the paper's code applies the "
            "aligned grid first, so it would compute another density (only models with "
            "block_grid aligned_first, such as imported ones, can be exported)"
        )
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    order = checkerboard_order(cfg.channels, cfg.kernel_size)
    unorder = torch.argsort(order)
    dtype = next(iter(ours.values())).dtype
    flow: dict[str, Tensor] = {}
    for key, index, theirs, axes, row in _slots(cfg):
        t = ours[key] if index is None else ours[key][index]
        if row:
            t = t[0]
        flow[theirs] = _permute(t, axes, unorder).clone()
    left = _checkerboard(cfg).to(dtype)
    for key, shape in reference_shapes(cfg).items():
        if key.endswith("saved_mean"):
            flow[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("saved_var"):
            flow[key] = torch.ones(shape, dtype=dtype)
        elif key.endswith("mask_left"):
            flow[key] = left.clone()
        elif key.endswith("mask_right"):
            flow[key] = 1 - left
    flow["prior.scale"] = torch.tensor(PRIOR_SCALES[cfg.prior], dtype=dtype)
    return {k: flow[k] for k in reference_shapes(cfg)}


# --- the whole import and export ----------------------------------------------------------


def import_reference(
    path: str | Path, prior: str = "auto", *, allow_large: bool = False
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An rgflow model equal to a model trained with the paper's code, and its provenance.

    Arguments:
        path: the `.state` file the paper's `main.py` wrote.
        prior: "auto" (from `prior.scale`), "laplace" or "gaussian".
        allow_large: build it even if it looks too large for memory.

    Returns:
        The model (float32 or float64, as the file's weights) and the metadata to save
        with it: `epoch` (if the file name gives it), `source` (format, file name, sha256,
        whether it held an optimizer and the multi-GPU prefix), `date` and `versions`.

    Raises:
        CheckpointError: the file cannot be read safely or is not a model rgflow can represent.
    """
    from rgflow_core.flow import build_model, check_memory

    ref = read_reference(path)
    shapes = {k: tuple(v.shape) for k, v in ref.flow.items()}
    scale = ref.flow.get("prior.scale")
    if scale is not None and scale.numel() != 1:
        raise CheckpointError(f"prior.scale has shape {_shape(tuple(scale.shape))}, expected ()")
    cfg = infer_config(shapes, prior, None if scale is None else float(scale))
    dtypes = {v.dtype for k, v in ref.flow.items() if not k.endswith(("saved_mean", "saved_var"))}
    if not dtypes <= {torch.float32, torch.float64}:
        raise CheckpointError(
            f"{path} holds weights of type {', '.join(sorted(map(str, dtypes)))}; "
            "rgflow reads float32 or float64"
        )
    dtype = torch.float64 if dtypes == {torch.float64} else torch.float32
    check_memory(cfg, allow_large=allow_large)  # before anything is built
    state = from_reference(ref.flow, cfg)
    model = build_model(cfg).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    source = {
        "format": SOURCE_FORMAT,
        "file": Path(path).name,
        "sha256": ref.sha256,
        "epoch": ref.epoch,
        "optimizer": ref.has_optimizer,
        "multi_gpu_prefix": ref.prefixed,
        "dtype": str(dtype).removeprefix("torch."),
        "prior_scale": None if scale is None else float(scale),
    }
    meta = {
        "epoch": ref.epoch,
        "source": source,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "rgflow": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    return model, meta


def export_reference(model: torch.nn.Module, path: str | Path) -> Path:
    """Write `{'flow': state_dict}` as the paper's `main.py` saves it (no optimizer state:
    its loader then starts a fresh one), atomically. Returns the path."""
    buf = io.BytesIO()
    torch.save({"flow": to_reference(model)}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _nlayers_arg(cfg: ModelConfig) -> str:
    """`--nlayers` as the paper's code reads it: one number for all levels, or one each."""
    values = cfg.n_layers
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def reference_args(cfg: ModelConfig) -> list[str]:
    """The paper's command-line arguments that build this architecture (for its scripts)."""
    return [
        f"--nchannels={cfg.channels}",
        f"--L={cfg.image_size}",
        f"--prior={cfg.prior}",
        f"--kernel_size={cfg.kernel_size}",
        f"--nlayers={_nlayers_arg(cfg)}",
        f"--nresblocks={cfg.n_res}",
        f"--nmlp={cfg.n_mlp}",
        f"--nhidden={cfg.n_hidden}",
    ]


def reference_run_name(cfg: ModelConfig) -> str:
    """The folder name the paper's code gives runs of this architecture (its
    `get_net_name`, with `reference_args`): its scripts look for
    `<out_dir>/<data>/<name>/out_save/<epoch>.state`."""
    name = "" if cfg.prior == "gaussian" else f"{cfg.prior}_"
    name += "" if cfg.kernel_size == 4 else f"ks{cfg.kernel_size}_"
    return name + f"nl{_nlayers_arg(cfg)}_nr{cfg.n_res}_nm{cfg.n_mlp}_nh{cfg.n_hidden}"
