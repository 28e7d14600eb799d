"""How this process uses the machine: BLAS threads and glibc's allocator.

These settings change speed, never results. ``blas_threads`` limits the BLAS
library's threads around a block (small GEMMs run faster on one);
``keep_freed_memory`` stops glibc from returning freed blocks to the OS after
every training step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

from threadpoolctl import ThreadpoolController

# Below this many images, BLAS's own thread hand-off costs more than the maths.
SMALL_BATCH = 32
# glibc's mallopt parameters; see mallopt(3).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 * 2**20  # the largest value glibc accepts on 64-bit
_TRIM_THRESHOLD = 2**30


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # Finding the BLAS libraries reads /proc (~5 ms); do it once per process.
    return ThreadpoolController()


def blas_threads(n: int | None):
    """A context manager that limits BLAS to ``n`` threads (None: leave it as is).

    For small GEMMs (a few images, or the halves of a batch that already run in
    two Python threads) BLAS's own thread hand-off costs more than the maths.
    """
    return _blas_controller().limit(limits=n, user_api="blas")


def one_blas_thread_if_small(n_images: int):
    """One BLAS thread for fewer than ``SMALL_BATCH`` images, else as is."""
    return blas_threads(1 if n_images < SMALL_BATCH else None)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks instead of returning them to the OS at once.

    Every training step allocates and frees the same dozens of multi-megabyte
    arrays. By default glibc serves those with fresh mmaps and unmaps them on free,
    so each step page-faults all of that memory in again: measured 1.4-2x slower
    here. Raising the mmap and trim thresholds makes the allocator reuse the
    blocks. Returns whether the setting took (only on glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 2**20)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts): files named after
    a dead process are leftovers that may be cleared away."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True
