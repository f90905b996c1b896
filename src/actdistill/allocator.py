"""Keep glibc's allocator from returning tensor memory to the kernel after every batch.

Why: PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above its mmap
threshold (128 KiB, raised on the fly up to 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so the activations of each training step are page-faulted and zeroed anew: the KARMMA
demo took 42 million minor page faults. Serving blocks up to :data:`MMAP_THRESHOLD` from the
heap and trimming the heap only beyond :data:`TRIM_THRESHOLD` lets the next step reuse the same
pages (12x fewer faults and 0.88x the time of a row's training epochs on a 2-core VM; measured in
docs/benchmarks.md). This is what PyTorch's CPU tuning guide gets from preloading jemalloc or
tcmalloc, without a library to install or an ``LD_PRELOAD`` to set before the process starts.

The cost is memory that stays mapped after a peak (up to :data:`TRIM_THRESHOLD` at the top of the
heap). The command line applies it; a library user calls :func:`tune_allocator` or not.
``ACTDISTILL_MALLOC=system`` leaves the allocator alone (to compare, or under another allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 64 << 20  # blocks above this still get their own mapping (and go back on free)
TRIM_THRESHOLD = 256 << 20  # free memory at the heap top kept for reuse before it is returned
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (once per process; inherited by forked workers).

    Returns whether they were set: False off glibc (macOS, musl), or under ``ACTDISTILL_MALLOC=system``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ACTDISTILL_MALLOC", "").lower() == "system":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
