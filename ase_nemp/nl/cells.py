"""The package's own cell-list neighbour search, in C and in parallel (``_kernels.c``).

The same pairs as :func:`~ase_nemp.nl.matscipy_neighbour_list` (every directed pair
``(i, j, S)`` with ``|x_j - x_i + S @ cell| < cutoff``, periodic self-images included),
sorted by ``i``; within an atom's pairs the order differs. Atoms are binned in fractional
coordinates (wrapped along periodic directions, over the atoms' own extent along open
ones), so a slab's vacuum or a molecule's box costs nothing, and the atoms are searched
on the kernels' threads: the search no longer runs on one thread while the model uses
several. It needs the fused kernels' library (a C compiler); without it
:func:`available` is false and :class:`~ase_nemp.nl.NeighbourList` uses matscipy.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

__all__ = ["available", "cell_list_neighbour_list", "pairs_within"]

MAX_BINS_PER_ATOM = 8  # grid cells per atom at most (a sparse cell gets fewer, thicker cells)
SERIAL_BELOW = 256  # atoms; fewer are searched on one thread


def _library():
    from ..model import kernels

    return kernels._library(torch.float64)


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def available() -> bool:
    """Whether the C neighbour search can run here (the kernels' library builds)."""
    return _library() is not None


def cell_list_neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                             threads: int | None = None, capacity: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All directed pairs ``(i, j, S)`` within ``cutoff`` (Å), as
    :func:`~ase_nemp.nl.matscipy_neighbour_list` (validated arrays, see
    :func:`~ase_nemp.nl.check_structure`; ``cell`` completed and non-singular).

    ``threads``: the search's threads (default PyTorch's, one below ``SERIAL_BELOW`` atoms). ``capacity``: pairs to make
    room for at first (a previous list's length); a second pass fills when it is short.
    Raises ``RuntimeError`` when the kernels are not available.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the C neighbour search needs the fused kernels (a C compiler); see ase_nemp.model.kernels")
    x = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc_arr = np.ascontiguousarray(np.asarray(pbc, dtype=bool).reshape(3), dtype=np.int64)
    if not pbc_arr.any():  # an open frame: only the atoms' extent matters, and it must be invertible
        cell = np.eye(3)
    inv = np.ascontiguousarray(np.linalg.inv(cell))
    n = len(x)
    if threads is None:  # a small structure is searched faster than threads wake up
        threads = torch.get_num_threads() if n >= SERIAL_BELOW else 1
    ptr = np.empty(n + 1, dtype=np.int64)
    cap = max(int(capacity), 0)
    max_bins = max(MAX_BINS_PER_ATOM * n, 27)
    for _ in range(2):
        i = np.empty(cap, dtype=np.int64)
        j = np.empty(cap, dtype=np.int64)
        S = np.empty((cap, 3), dtype=np.int64)
        total = lib.nemp_neighbours(n, _ptr(x), _ptr(cell), _ptr(inv), _ptr(pbc_arr), float(cutoff), max_bins,
                                    threads, cap, _ptr(ptr), _ptr(i), _ptr(j), _ptr(S))
        if total < 0:
            raise MemoryError("the neighbour search could not allocate its grid")
        if total <= cap:
            return i[:total], j[:total], S[:total]
        cap = int(total)
    raise RuntimeError("the neighbour search found a different number of pairs on its second pass")  # pragma: no cover


def pairs_within(positions: np.ndarray, cell: np.ndarray, i: np.ndarray, j: np.ndarray, S: np.ndarray,
                 cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of ``(i, j, S)`` (int64) still closer than ``cutoff`` (Å) at ``positions``,
    in their order: a Verlet list built with a skin, filtered for the model (one pass in
    C; where the kernels are not available, numpy's)."""
    lib = _library()
    x = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    if lib is None:
        vec = x[j] - x[i] + S @ cell
        keep = np.einsum("ij,ij->i", vec, vec) < cutoff * cutoff
        return i[keep], j[keep], S[keep]
    i, j, S = (np.ascontiguousarray(a, dtype=np.int64) for a in (i, j, S))
    out_i, out_j, out_S = np.empty_like(i), np.empty_like(j), np.empty_like(S)
    kept = lib.nemp_within(len(i), _ptr(x), _ptr(cell), _ptr(i), _ptr(j), _ptr(S), float(cutoff), _ptr(out_i),
                           _ptr(out_j), _ptr(out_S))
    return out_i[:kept], out_j[:kept], out_S[:kept]
