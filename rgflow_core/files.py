"""Writing files so that nothing a user has is lost: atomic writes and output checks.

Nothing here imports torch, numpy or the model at the top, so that writing a PNG or a
YAML file does not depend on the network code and the command line starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from rgflow_core.errors import UsageError

TEMP_SUFFIX = ".tmp"  # every temp file of `atomic_write_bytes` is `.NAME.*.tmp`


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    The bytes go to a temp file in the same folder, are flushed to disk, and the temp file
    is renamed over `path`; the folder is synced so that the rename survives a crash.
    Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temp_file(path: Path) -> bool:
    """Whether `path` is a leftover temp file of `atomic_write_bytes`."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files that writes killed half-way left in `folder`; return them."""
    removed = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def check_outputs(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    *,
    folders: Iterable[str | os.PathLike[str] | None] = (),
) -> None:
    """Refuse output locations that would lose data or fail after the work is done.

    Arguments:
        outputs: files to be written (None entries are skipped).
        inputs: files the command reads; no output may resolve to one of them.
        folders: folders to be written into (created if missing).

    Raises:
        UsageError: an output is an input, a folder, or under a file; a folder is a file;
            or a location cannot be written.
    """
    sources = {_resolved(p) for p in inputs if p is not None}
    seen: dict[Path, str] = {}
    for given in outputs:
        if given is None:
            continue
        path = Path(given)
        resolved = _resolved(path)
        if resolved in sources:
            raise UsageError(f"output {path} is also an input; choose another output path")
        if resolved in seen:
            raise UsageError(f"{path} is named twice as an output ({seen[resolved]})")
        seen[resolved] = str(path)
        if path.is_dir():
            raise UsageError(f"output {path} is a folder; give a file name")
        _check_name_length(path)
        _check_writable_parent(path.parent)
    for given in folders:
        if given is None:
            continue
        folder = Path(given)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file; give a folder")
        if _resolved(folder) in sources:
            raise UsageError(f"output folder {folder} is also an input")
        _check_writable_parent(folder)


def _resolved(path: str | os.PathLike[str]) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as written
        return Path(os.path.abspath(path))


def _check_name_length(path: Path) -> None:
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(_existing_ancestor(path.parent), "PC_NAME_MAX")
    if len(os.fsencode(path.name)) + 32 > limit:  # the temp file's name is longer
        raise UsageError(f"file name {path.name[:40]}... is too long for this file system")


def _existing_ancestor(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable_parent(folder: Path) -> None:
    """The nearest existing ancestor of `folder` must be a writable folder."""
    ancestor = _existing_ancestor(folder)
    if not ancestor.is_dir():
        raise UsageError(f"cannot write into {folder}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {folder}: {ancestor} is not writable")


class FolderLock:
    """An exclusive, advisory lock on a folder (`flock` on FOLDER/.lock), held until
    `release` or until the process dies, whichever comes first. The lock file names its
    holder. A folder that the lock made and that is left empty is removed on release."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> str | None:
        """Take the lock (making the folder if need be). Returns None, or, when another
        process holds it, that process as the lock file names it (nothing is then held)."""
        import fcntl

        self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        if os.listdir(self.folder) == [".lock"]:  # nothing was written under the lock
            (self.folder / ".lock").unlink()
            for folder in self._created:
                with contextlib.suppress(OSError):  # not empty: someone else wrote there
                    folder.rmdir()
        os.close(self._fd)  # closing the file releases the lock
        self._fd = None


def describe_os_error(err: OSError) -> str:
    """One line for an OS error: what failed and on which file."""
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.ENAMETOOLONG: "the file name is too long",
        errno.EDQUOT: "the disk quota is exceeded",
    }.get(err.errno or 0, err.strerror or str(err))
    return f"{reason}: {err.filename}" if err.filename else reason


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON text that strict readers accept: NaN and infinities become null."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def missing_file_reason(path: Path) -> str | None:
    """Why `path` cannot be read as a file (None if it can): it does not exist, it is a
    folder, or it is a symbolic link that leads nowhere (or in a loop)."""
    try:
        if path.is_file():
            return None
        if path.is_dir():
            return "is a folder, not a file"
        if path.is_symlink():
            return "is a symbolic link that leads nowhere (or in a loop)"
        return "does not exist"
    except OSError as err:
        return f"cannot be opened ({describe_os_error(err)})"


# --- a fast PNG encoder for many small images -------------------------------------------

_PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return len(data).to_bytes(4, "big") + tag + data + crc.to_bytes(4, "big")


def rgb_png(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as an uncompressed PNG.

    PIL's encoder costs about 150 us of overhead per image, and deflating a 32x32 image
    costs more than drawing it while saving no disk: a 3 KB PNG and a 1.3 KB one both fill
    one 4 KiB file-system block (MSDS writes 100,000 of them).
    """
    import numpy as np  # here: the command line imports this module and must start fast

    h, w, _ = image.shape
    # Each scanline starts with its filter type; 0 (none) is the cheapest to produce.
    raw = np.zeros((h, 1 + 3 * w), np.uint8)
    raw[:, 1:] = image.reshape(h, 3 * w)
    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    return (
        _PNG_HEAD
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 0))  # level 0: stored
        + _png_chunk(b"IEND", b"")
    )
