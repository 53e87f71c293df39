"""Opt-in, process-wide performance settings. Nothing here runs unless you call it.

Every MD step allocates and frees the same few hundred MB of activations. glibc's
``malloc`` serves large blocks with ``mmap`` and returns them to the kernel on ``free``,
so each step page-faults all of that memory in again: on the CPU this costs 25-35 % of
the step as system time. :func:`keep_freed_memory` raises glibc's thresholds so freed
blocks stay mapped and are reused. It is safe, affects the whole process, and is
undone only by restarting the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 32) -> bool:
    """Keep freed memory mapped for reuse (glibc ``mallopt``). Returns True on success.

    Parameters
    ----------
    mmap_threshold : int
        Blocks below this many bytes come from the heap instead of fresh ``mmap`` calls.
    trim_threshold : int
        Free memory at the top of the heap is only returned to the kernel above this size.

    On systems without glibc (macOS, Windows, musl) this does nothing and returns False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_threshold = min(mmap_threshold, 2**31 - 1)
    trim_threshold = min(trim_threshold, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
