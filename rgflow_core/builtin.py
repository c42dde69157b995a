"""Trained models shipped inside the package, by short name, and the MSDS images that the
commands needing images use when the user has none at hand.

A short name (`msds1`, `msds2`, ...) is accepted wherever a checkpoint is: `resolve_model`
turns what the user gave into a file, and a file of that name always wins. Each model's
provenance is in `models/models.json` beside its weights: the commands that trained it,
the commit and versions, its test bpd and the images it saw, the sha256 of the file and of
its weights, and the bpd of its first training steps (so that a rerun can be checked).

`msds_cache` generates a small MSDS set (the first images of the default splits) once
into a cache folder, for the explorer, the probe and mix-fidelity.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from rgflow_core.errors import CheckpointError, DataError
from rgflow_core.files import describe_os_error

MANIFEST = "models.json"
CACHE_TRAIN, CACHE_TEST = 10_000, 2_000  # the cached MSDS set: enough for the probe's fit


def models_dir() -> Path:
    """The folder of the shipped models inside the installed package."""
    return Path(str(resources.files("rgflow_core") / "models"))


def replay_commands(entry: dict[str, Any]) -> list[str]:
    """The commands that train a shipped model again with this rgflow: those it was
    trained with, or, when a preset has changed since, the record's `replay`: the same
    settings spelled out (a test runs them and checks the first steps bitwise)."""
    return list(entry.get("replay") or entry["commands"])


@functools.cache
def builtin_models() -> dict[str, dict[str, Any]]:
    """Every shipped model's provenance record, by name (empty if none are shipped)."""
    path = models_dir() / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["models"]


def builtin_names() -> list[str]:
    return list(builtin_models())


def builtin_path(name: str) -> Path:
    """The weights file of the shipped model `name`."""
    entry = builtin_models().get(name)
    if entry is None:
        raise CheckpointError(f"no built-in model {name!r}; {names_hint()}")
    return models_dir() / entry["file"]


def names_hint() -> str:
    """The sentence that lists the shipped models, for error messages."""
    names = builtin_names()
    if not names:
        return "this installation ships no built-in models"
    return f"the built-in models are {', '.join(names)} (see `rgflow info --models`)"


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """The checkpoint file that `spec` names: a file of that name if one exists, else the
    built-in model of that name, else `spec` itself (whose loader says it is missing).

    Raises:
        CheckpointError: `spec` is a bare name (no folder, no suffix) that is neither a
            file nor a built-in model; the message lists the built-in names.
    """
    path = Path(spec)
    if path.exists() or path.is_symlink():
        return path
    if str(spec) in builtin_models():
        return builtin_path(str(spec))
    if path.parent == Path(".") and not path.suffix:
        raise CheckpointError(
            f"no checkpoint file or built-in model named {str(spec)!r}; {names_hint()}"
        )
    return path


def builtin_name_of(path: str | os.PathLike[str]) -> str | None:
    """The short name of a shipped model's file, or None for any other file."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    for name in builtin_models():
        if builtin_path(name).resolve() == resolved:
            return name
    return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a checkpoint's tensors (name, dtype, shape and bytes, in name order): the
    same for the same weights whatever the metadata (dates, provenance) says."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="numpy") as f:
        for name in sorted(f.keys()):
            array = f.get_tensor(name)
            header = f"{name}|{array.dtype.str}|{list(array.shape)}|".encode()
            digest.update(header)
            digest.update(array.tobytes())
    return digest.hexdigest()


# --- the image cache --------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where rgflow keeps what it generates for itself: $RGFLOW_CACHE, else
    $XDG_CACHE_HOME/rgflow, else ~/.cache/rgflow."""
    if os.environ.get("RGFLOW_CACHE"):
        return Path(os.environ["RGFLOW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rgflow"


def msds_cache(name: str, notify: Callable[[str], None] | None = None) -> Path:
    """The data root of a cached MSDS set `name` (CACHE_TRAIN + CACHE_TEST images, the
    first of the default splits), generated there on first use; `notify` is told where."""
    from rgflow_core.msds import msds_complete, write_msds

    root = cache_dir() / "msds"
    if msds_complete(root, name):
        return root
    if notify:
        notify(
            f"generating {name} ({CACHE_TRAIN} train + {CACHE_TEST} test images) into "
            f"{root / name} (once; later commands reuse it)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        # written beside its final place and moved there whole, so that a kill or a second
        # process never leaves a half-written set where a complete one is looked for
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
            write_msds(tmp, name, CACHE_TRAIN, CACHE_TEST, seed=0)
            if not msds_complete(root, name):
                shutil.rmtree(root / name, ignore_errors=True)
                os.replace(Path(tmp) / name, root / name)
    except OSError as err:
        raise DataError(
            f"cannot write the MSDS cache in {root} ({describe_os_error(err)}); set "
            "RGFLOW_CACHE to a writable folder, or give the data ({data_root})"
        ) from err
    return root


def msds_for(
    checkpoint: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> tuple[Path, str]:
    """The MSDS set that a command working with `checkpoint` reads: (data root, set name).

    The set is `dataset`, else the one the model was trained on (msds1 for other models).
    The root is `data_root` when given; else the first that holds the complete set of:
    the model's run folder's recorded data, the data its metadata names, `data/`; else
    the cache (`msds_cache`, generated there once, and `notify` says so).
    """
    from rgflow_core.checkpoint import read_metadata
    from rgflow_core.msds import msds_complete
    from rgflow_core.run import run_data_config

    meta = read_metadata(checkpoint)
    trained_on = meta.get("dataset")
    name = dataset or (trained_on if trained_on in ("msds1", "msds2") else "msds1")
    if data_root is not None:
        return Path(data_root), name
    candidates = []
    run_data = run_data_config(checkpoint)
    if run_data is not None and run_data.dataset == name:
        candidates.append(Path(run_data.data_root))
    source = (meta.get("data") or {}).get("source")
    if trained_on == name and isinstance(source, str):
        candidates.append(Path(source).parent)
    candidates.append(Path("data"))
    for root in candidates:
        if msds_complete(root, name):
            return root, name
    return msds_cache(name, notify), name
