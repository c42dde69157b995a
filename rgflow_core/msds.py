"""MSDS: multi-scale dSprites-like synthetic images with known global and local factors.

An MSDS image is 32x32 RGB: 16 ellipses on a 4x4 grid of 8x8 tiles, on black. Each
ellipse is a filled PIL ellipse with bounding box (1,3)-(7,5) in its tile, rotated
(bicubic, about the tile centre) by its angle and alpha-composited at
(8*column + jitter_x, 8*row + jitter_y), jitter uniform in {-1, 0, 1}.

* msds1: one base colour per image (each channel uniform in [32, 223]); every ellipse
  adds its own offset uniform in [-32, 32] per channel and has its own angle.
  Global factor: colour. Local factor: angle.
* msds2: one base angle per image; every ellipse adds an offset uniform in [0, 45)
  (angle stored mod 180) and has its own colour uniform in [0, 255]^3.
  Global factor: angle. Local factor: colour.

Ellipse k sits in grid row k // 4 and column k % 4 and is composited in that order.
Its label is (x, y, angle, r, g, b): the pixel coordinates of its centre (tile top-left
+ 4), its angle in degrees (counter-clockwise, as PIL rotates) and its colour.

Two deliberate details:
* Angles are drawn on a 0.01 degree grid, so that the rotated ellipse masks come from a
  table built once with PIL instead of 1.6 million PIL rotations for a default set.
* The colour is composited through the rotated alpha mask. Rotating an RGBA tile in PIL
  instead (the reference generator) interpolates premultiplied colour but clips alpha,
  which brightens the inside of the ellipse by up to ~20%; here a pixel of full alpha
  has exactly the label colour. The alpha masks are PIL's, pixel for pixel.

Every image draws its factors from its own generator seeded by (seed, split, index), so
a set is byte-identical whatever the number of worker processes.

On disk, `ROOT/NAME/SPLIT/` holds `000000.png`, `000001.png`, ... and `labels.npz` with
`labels` (N, 16, 6) float32, `factor` (msds1: base colour (N, 3); msds2: base angle (N,)),
`factor_name` and `label_columns`. `labels.npz` is written last, so its presence marks a
complete split.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from rgflow_core.errors import DataError, UsageError
from rgflow_core.files import rgb_png

MSDS_NAMES = ("msds1", "msds2")
SPLITS = ("train", "test")  # the position of a split is part of every image's seed
IMAGE_SIZE = 32
GRID = 4  # ellipses per row and per column
TILE = 8  # tile edge in pixels; the ellipse centre is at TILE // 2 inside it
N_ELLIPSES = GRID * GRID
LABEL_COLUMNS = ("x", "y", "angle", "r", "g", "b")
FACTOR_NAMES = {"msds1": "base_colour", "msds2": "base_angle"}
LABELS_FILE = "labels.npz"

ANGLE_STEPS = 18000  # angles are k * 180 / ANGLE_STEPS degrees: a 0.01 degree grid
_MSDS2_SPREAD = ANGLE_STEPS // 4  # the 45 degree window of msds2
_CHUNK = 500  # images per worker task: large enough to vectorise, small for a smooth bar

ProgressFn = Callable[[int], None]


def render_msds(
    name: str, split: str, start: int, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render images `start .. start+count-1` of one split of an MSDS set.

    Returns:
        images: uint8 (count, 32, 32, 3).
        labels: float32 (count, 16, 6), columns `LABEL_COLUMNS`.
        factor: float32, the global factor: base colour (count, 3) for msds1,
            base angle in degrees (count,) for msds2.
    """
    _check_name(name)
    split_id = _split_id(split)
    if start < 0 or count < 0:
        raise UsageError(f"start and count must be >= 0 (got start={start}, count={count})")
    _check_seed(seed)

    colours = np.empty((count, N_ELLIPSES, 3), np.int64)
    angles = np.empty((count, N_ELLIPSES), np.int64)  # in steps of the angle grid
    jitter = np.empty((count, N_ELLIPSES, 2), np.int64)  # (dx, dy)
    factor = np.empty((count, 3) if name == "msds1" else (count,), np.float32)
    for n in range(count):
        rng = np.random.default_rng([seed, split_id, start + n])
        if name == "msds1":
            base = rng.integers(32, 224, 3)
            colours[n] = base + rng.integers(-32, 33, (N_ELLIPSES, 3))
            angles[n] = rng.integers(0, ANGLE_STEPS, N_ELLIPSES)
            factor[n] = base
        else:
            base = rng.integers(0, ANGLE_STEPS)
            angles[n] = (base + rng.integers(0, _MSDS2_SPREAD, N_ELLIPSES)) % ANGLE_STEPS
            colours[n] = rng.integers(0, 256, (N_ELLIPSES, 3))
            factor[n] = base * 180 / ANGLE_STEPS
        jitter[n] = rng.integers(-1, 2, (N_ELLIPSES, 2))

    k = np.arange(N_ELLIPSES)
    tile_x = TILE * (k % GRID) + jitter[..., 0]  # (count, 16) tile top-left corners
    tile_y = TILE * (k // GRID) + jitter[..., 1]
    images = _composite(_mask_table()[angles], colours, tile_x, tile_y)

    labels = np.empty((count, N_ELLIPSES, len(LABEL_COLUMNS)), np.float32)
    labels[..., 0] = tile_x + TILE // 2
    labels[..., 1] = tile_y + TILE // 2
    labels[..., 2] = angles * 180 / ANGLE_STEPS
    labels[..., 3:] = colours
    return images, labels, factor


def write_msds(
    root: str | os.PathLike[str],
    name: str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Generate an MSDS set as PNGs plus `labels.npz` per split; return `root/name`.

    Arguments:
        root: parent folder; the set goes to `root/name/{train,test}/`.
        n_train, n_test: number of images per split (n_train >= 1, n_test >= 0).
        seed: non-negative; the same seed gives byte-identical files.
        workers: processes to use (0 = one per CPU core).
        progress: called with the number of images finished, chunk by chunk.
    """
    check_msds_request(name, n_train, n_test, seed, workers, str(root))
    folder = Path(root) / name
    counts = {"train": n_train, "test": n_test}
    try:
        for split in SPLITS:
            (folder / split).mkdir(parents=True, exist_ok=True)
            # Mark the split incomplete before touching its images, so that a run that is
            # killed half-way over an old set never leaves it looking complete.
            (folder / split / LABELS_FILE).unlink(missing_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the MSDS folder {folder}: {_reason(err)}") from err

    labels = {
        s: np.empty((n, N_ELLIPSES, len(LABEL_COLUMNS)), np.float32) for s, n in counts.items()
    }
    factor_shape = (3,) if name == "msds1" else ()
    factors = {s: np.empty((n, *factor_shape), np.float32) for s, n in counts.items()}
    tasks = [
        (name, split, start, min(_CHUNK, n - start), n, seed, str(folder / split))
        for split, n in counts.items()
        for start in range(0, n, _CHUNK)
    ]
    _mask_table()  # build it once here: forked workers inherit it
    try:
        for split, start, chunk_labels, chunk_factor in _run(_write_chunk, tasks, workers):
            labels[split][start : start + len(chunk_labels)] = chunk_labels
            factors[split][start : start + len(chunk_factor)] = chunk_factor
            if progress is not None:
                progress(len(chunk_labels))
        for split, n in counts.items():
            _remove_stale_pngs(folder / split, n)
            _save_labels(folder / split, name, labels[split], factors[split])
    except OSError as err:
        raise DataError(f"cannot write the MSDS set to {folder}: {_reason(err)}") from err
    return folder


MAX_IMAGES = 10_000_000  # per split
BYTES_PER_IMAGE = 4096  # a stored 32x32 PNG (3,161 bytes) fills one file-system block


def check_msds_request(
    name: str, n_train: int, n_test: int, seed: int, workers: int, root: str | None = None
) -> None:
    """Raise `UsageError` unless `write_msds` accepts these arguments (checked before any
    work), and, given the `root` folder, unless its disk has room for the images."""
    _check_name(name)
    if not (1 <= n_train <= MAX_IMAGES and 0 <= n_test <= MAX_IMAGES):
        raise UsageError(
            f"an MSDS set needs 1 to {MAX_IMAGES:,} training images and 0 to {MAX_IMAGES:,} "
            f"test images (got train={n_train}, test={n_test})"
        )
    _check_seed(seed)
    _check_workers(workers)
    if root is not None:
        need = (n_train + n_test) * BYTES_PER_IMAGE
        existing = Path(root)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if need > free:
            raise UsageError(
                f"{n_train + n_test:,} images need about {need / 2**30:.1f} GiB, but the disk "
                f"of {root} has {free / 2**30:.1f} GiB free"
            )


def read_msds(
    root: str | os.PathLike[str],
    name: str,
    split: str,
    workers: int = 0,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one split of an MSDS set written by `write_msds` (only the first `limit` images).

    Returns:
        images: uint8 (N, 32, 32, 3), in file-name order.
        labels: float32 (N, 16, 6), columns `LABEL_COLUMNS`.
        factor: float32, the global factor (see `render_msds`).
    """
    _check_name(name)
    _split_id(split)
    _check_workers(workers)
    folder = Path(root) / name / split
    labels_path = folder / LABELS_FILE
    hint = f"generate it (the make-msds command, or write_msds) into {root}"
    if not labels_path.is_file():
        raise DataError(f"MSDS set missing or incomplete: {labels_path} not found; {hint}")
    try:
        with np.load(labels_path, allow_pickle=False) as data:
            labels, factor = data["labels"], data["factor"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"cannot read {labels_path} ({err}); {hint}") from err

    total = len(labels)  # the file names are padded for the whole split
    n = total if limit is None else min(limit, total)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    tasks = [
        (str(folder), start, min(_CHUNK, n - start), total, hint) for start in range(0, n, _CHUNK)
    ]
    for start, chunk in _run(_read_chunk, tasks, workers):
        images[start : start + len(chunk)] = chunk
    return images, labels[:n], factor[:n]


def msds_complete(root: str | os.PathLike[str], name: str) -> bool:
    """Whether `root/name` holds a complete set (both splits finished writing)."""
    _check_name(name)
    return all((Path(root) / name / split / LABELS_FILE).is_file() for split in SPLITS)


def png_name(index: int, count: int) -> str:
    """File name of image `index` in a split of `count` images: zero-padded, sortable."""
    return f"{index:0{max(6, len(str(count - 1)))}d}.png"


# --- rendering --------------------------------------------------------------------------


@functools.cache
def _mask_table() -> np.ndarray:
    """uint8 (ANGLE_STEPS, 8, 8): the ellipse's alpha mask rotated to every grid angle."""
    mask = Image.new("L", (TILE, TILE), 0)
    ImageDraw.Draw(mask).ellipse([1, 3, 7, 5], fill=255)
    return np.stack(
        [
            np.asarray(mask.rotate(k * 180 / ANGLE_STEPS, resample=Image.Resampling.BICUBIC))
            for k in range(ANGLE_STEPS)
        ]
    )


def _composite(
    alpha: np.ndarray, colours: np.ndarray, tile_x: np.ndarray, tile_y: np.ndarray
) -> np.ndarray:
    """Alpha-composite constant-colour tiles onto black images, ellipse by ellipse.

    alpha (B, 16, 8, 8) uint8, colours (B, 16, 3), tile_x/tile_y (B, 16) top-left corners
    in [-1, 25]. Returns uint8 (B, 32, 32, 3).
    """
    count = len(alpha)
    # One pixel of margin on each side holds the parts of jittered tiles that fall outside.
    # uint16 suffices: colour * a + below * (255 - a) + 127 <= 255 * 255 + 127.
    canvas = np.zeros((count, IMAGE_SIZE + 2, IMAGE_SIZE + 2, 3), np.uint16)
    # Every 8x8 window of every image, so that one index per image picks its tile's window.
    windows = sliding_window_view(canvas, (TILE, TILE), axis=(1, 2), writeable=True)
    n = np.arange(count)
    a = alpha.astype(np.uint16)[:, :, None]  # (B, 16, 1, 8, 8)
    colours = colours.astype(np.uint16)[..., None, None]  # (B, 16, 3, 1, 1)
    for k in range(N_ELLIPSES):
        rows, cols = tile_y[:, k] + 1, tile_x[:, k] + 1
        below = windows[n, rows, cols]  # (B, 3, 8, 8)
        windows[n, rows, cols] = (colours[:, k] * a[:, k] + below * (255 - a[:, k]) + 127) // 255
    return canvas[:, 1:-1, 1:-1].astype(np.uint8)


# --- workers ----------------------------------------------------------------------------


def _write_chunk(
    name: str, split: str, start: int, count: int, total: int, seed: int, folder: str
) -> tuple[str, int, np.ndarray, np.ndarray]:
    images, labels, factor = render_msds(name, split, start, count, seed)
    for i, image in enumerate(images):
        with open(os.path.join(folder, png_name(start + i, total)), "wb") as f:
            f.write(rgb_png(image))
    return split, start, labels, factor


def _read_chunk(
    folder: str, start: int, count: int, total: int, hint: str
) -> tuple[int, np.ndarray]:
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i in range(count):
        path = os.path.join(folder, png_name(start + i, total))
        try:
            with Image.open(path) as image:
                images[i] = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as err:
            # ValueError: a readable PNG of the wrong size does not fit the array.
            raise DataError(f"cannot read MSDS image {path} ({_reason(err)}); {hint}") from err
    return start, images


def _run(fn: Callable[..., object], tasks: list[tuple], workers: int) -> Iterator:
    """Apply `fn` to every task tuple, in a process pool when more than one worker helps."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        yield from (fn(*task) for task in tasks)
        return
    # fork, where it is safe: the workers need only numpy and PIL, while spawning would
    # re-import this package and torch (seconds per worker). torch's DataLoader does the same.
    method = "fork" if sys.platform == "linux" else None
    with multiprocessing.get_context(method).Pool(workers, initializer=_ignore_sigint) as pool:
        yield from pool.imap_unordered(_star, ((fn, task) for task in tasks))


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool and
    # reports it; the workers would each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _star(fn_task: tuple[Callable[..., object], tuple]) -> object:
    fn, task = fn_task
    return fn(*task)


# --- files ------------------------------------------------------------------------------


def _save_labels(folder: Path, name: str, labels: np.ndarray, factor: np.ndarray) -> None:
    """Write labels.npz atomically: a temp file, fsync, then rename over the final name."""
    tmp = folder / (LABELS_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            labels=labels,
            factor=factor,
            factor_name=np.array(FACTOR_NAMES[name]),
            label_columns=np.array(LABEL_COLUMNS),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / LABELS_FILE)


def _remove_stale_pngs(folder: Path, count: int) -> None:
    """Delete numbered PNGs left over from an earlier, larger set in the same folder."""
    for path in folder.glob("*.png"):
        if path.stem.isdigit() and int(path.stem) >= count:
            path.unlink()


# --- checks -----------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in MSDS_NAMES:
        raise UsageError(f"unknown MSDS set {name!r}; choose one of {', '.join(MSDS_NAMES)}")


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**63:
        raise UsageError(f"must be an integer in 0..2**63-1, got {seed}", "seed")


def _check_workers(workers: int) -> None:
    if not 0 <= workers <= 1024:
        raise UsageError(f"must be 0 (one per CPU core) to 1024, got {workers}", "workers")


def _reason(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)
