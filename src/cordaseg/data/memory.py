"""The C allocator settings of a loading process: freed frame buffers are reused, not returned.

Every training item allocates a few full-frame buffers (the decoded PNGs, PIL's resampling
images, depth maps as float32 and float64), 2 to 16 MiB each, and frees them before the next
item. With glibc's defaults, allocations that large are served by fresh ``mmap`` pages (or the
freed heap top is trimmed), so the kernel zero-fills every page again on first touch: about
2,800 (GTA5) to 8,100 (Cityscapes) minor page faults per item, 10 to 25 ms of system time on
top of 50 to 80 ms of work per item on one core (``benchmarks/data_loading.py``). Keeping
allocations below 32 MiB on the heap and the freed heap in the process removes those faults; the
cost is that a loading process keeps its peak heap (a few hundred MiB) until it exits.

:func:`keep_freed_memory` sets this once per process; :class:`cordaseg.data.datasets.SegmentationDataset`
calls it before its first item, in the training process or in each loader worker. Variables
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set in the environment take precedence,
and C libraries without ``mallopt`` (not glibc) are left as they are.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
"""glibc ``mallopt`` parameter: free heap above this many bytes at the top is returned to the OS."""
M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameter: allocations of at least this many bytes get their own ``mmap``."""
MMAP_THRESHOLD = 32 * 2**20
"""The largest mmap threshold glibc accepts on 64-bit systems; full frames stay below it."""
TRIM_THRESHOLD = 1024 * 2**20
"""Freed heap the process keeps for the next items."""

_applied: bool | None = None  # settings are process memory: a forked worker inherits them with this flag


def keep_freed_memory() -> bool:
    """Serve frame-sized allocations from the heap and keep freed heap memory (once per process).

    Returns whether the settings are in force (False where the environment sets them, or where
    ``mallopt`` is missing or refuses them).
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a value it refuses.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
