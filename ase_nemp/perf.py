"""Process-wide performance settings for running models on the CPU.

Every MD step allocates and frees the same few hundred MB of activations. glibc's
``malloc`` serves large blocks with ``mmap`` and returns them to the kernel on ``free``,
so each step page-faults all of that memory in again: on the CPU this costs 7-47 % of
the step as system time (``benchmarks/results/phases.md``: water-small at 12,288 atoms,
110 -> 75 µs/atom/step in float32 and 254 -> 139 in float64). :func:`keep_freed_memory`
raises glibc's thresholds so freed blocks stay mapped and are reused.

:func:`tune_cpu_allocator` applies it once per process, and :class:`~ase_nemp.NEMPCalculator`
and the trainer on the CPU, ``ase_nemp.lammps`` and the ``nemp`` command call it. The price: the process
keeps the largest memory it has used mapped until it exits, instead of returning it
between steps. Set the environment variable ``ASE_NEMP_ALLOCATOR=default`` before the
first calculator is built to keep glibc's own behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "tune_cpu_allocator"]

ALLOCATOR_VARIABLE = "ASE_NEMP_ALLOCATOR"
_tuned: bool | None = None  # what tune_cpu_allocator did in this process (None: not called yet)

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


def tune_cpu_allocator() -> bool:
    """:func:`keep_freed_memory` with its defaults, once per process; nothing when the
    environment variable ``ASE_NEMP_ALLOCATOR`` is ``default``. Returns whether freed memory
    is kept (False without glibc or when opted out). Later calls return the first answer."""
    global _tuned
    if _tuned is None:
        choice = os.environ.get(ALLOCATOR_VARIABLE, "").strip().lower()
        if choice not in ("", "keep", "default"):
            raise ValueError(f"{ALLOCATOR_VARIABLE}={choice!r}: use 'default' (glibc's own) or 'keep' (the default)")
        _tuned = False if choice == "default" else keep_freed_memory()
    return _tuned
