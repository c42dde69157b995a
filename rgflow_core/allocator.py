"""The C allocator's settings for tensor work on Linux with glibc.

PyTorch on the CPU takes every tensor from malloc. glibc serves a block above its mmap
threshold (128 KiB at first, raised as such blocks are freed, at most 32 MiB) with fresh
pages from the system, and gives the top of its heap back once more than its trim
threshold (twice the mmap threshold) lies free there. A loop that frees and allocates
tens of MB a step, such as decoding a batch, then spends a large part of its time
faulting in zeroed pages. `tune_malloc` serves every block up to 32 MiB from the heap and
keeps up to 256 MiB of freed memory for reuse: celeba32 sampling at batch 64 on two
threads went from 14.8 to 20.7 images/s; training and one-image decoding barely moved;
peak memory was the same at batch 16 and 7% higher in eager celeba32 training at batch 64
(benchmarks/results/malloc.md).

The `rgflow` command calls it once at start; a program using `rgflow_core` as a library
decides for itself (the setting is the whole process's).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
TRIM_THRESHOLD = 256 << 20


def tune_malloc() -> bool:
    """Apply the settings above; returns whether they were applied.

    Does nothing off Linux, with a C library other than glibc, where the user has set
    glibc's allocator up already (a MALLOC_*_ variable, or malloc tunables in
    GLIBC_TUNABLES), or with RGFLOW_TUNE_MALLOC=0 (to measure what it changes).
    """
    if not sys.platform.startswith("linux") or os.environ.get("RGFLOW_TUNE_MALLOC") == "0":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, ValueError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # mallopt returns 1 on success
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
