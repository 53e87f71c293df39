"""matscipy's cell-list neighbour search, wrapped for NEMP's full directed edge list."""

from __future__ import annotations

import numpy as np
from ase.geometry import complete_cell
from matscipy.neighbours import neighbour_list as _matscipy_neighbour_list

__all__ = ["check_structure", "matscipy_neighbour_list", "MIN_CELL_HEIGHT"]

MIN_CELL_HEIGHT = 0.5  # Å, between lattice planes of a periodic direction
MAX_BINS = 50_000_000  # cells of matscipy's grid (cutoff-sized boxes); each costs memory whether it holds atoms or not


def check_structure(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a structure and return ``(positions, completed cell, pbc)`` as float64/bool.

    Raises ``ValueError`` for an empty structure, NaN/inf positions or cell, a periodic
    direction without a lattice vector, or a periodic cell thinner than
    ``MIN_CELL_HEIGHT`` between lattice planes. Non-periodic directions with a zero (or missing)
    lattice vector get an orthogonal unit vector (``ase.geometry.complete_cell``); they
    only serve as a frame for the cell list and never shift an atom.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    if len(positions) == 0:
        raise ValueError("the structure has no atoms")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"non-finite (NaN or inf) positions for atom(s) {idx[:10].tolist()}{' ...' if len(idx) > 10 else ''}")
    if not np.isfinite(cell).all():
        raise ValueError("the cell contains NaN or inf")
    lengths = np.linalg.norm(cell, axis=1)
    flat = pbc & (lengths < 1e-12)
    if flat.any():
        raise ValueError(f"periodic direction(s) {np.flatnonzero(flat).tolist()} have a zero lattice vector")
    if pbc.any() or lengths.min() > 0:
        full = complete_cell(cell)
    else:
        full = np.eye(3)
    volume = abs(np.linalg.det(full))
    if volume < 1e-12:
        raise ValueError("the cell is singular (its lattice vectors are linearly dependent)")
    # the spacing of lattice planes along each periodic direction: a cell thinner than
    # this needs millions of periodic images within the cutoff (and is not a crystal)
    heights = volume / np.linalg.norm(np.cross(full[[1, 2, 0]], full[[2, 0, 1]]), axis=1)
    thin = [k for k in range(3) if pbc[k] and heights[k] < MIN_CELL_HEIGHT]
    if thin:
        k = thin[0]
        raise ValueError(f"the periodic cell is nearly flat: its height along lattice vector {k} is {heights[k]:.3g} Å "
                         f"(at least {MIN_CELL_HEIGHT} Å is needed); check the cell")
    return positions, full, pbc


def matscipy_neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All directed pairs ``(i, j, S)`` with ``|x_j - x_i + S @ cell| < cutoff``.

    Includes periodic self-images (``i == j``, ``S != 0``) and pairs from any number of
    image cells; atoms may lie outside the cell. Returns int64 arrays ``i`` (E,),
    ``j`` (E,), ``S`` (E, 3), sorted by ``i``. ``cell`` must be non-singular
    (see :func:`check_structure`).
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():  # a molecule: its box is only a frame; grid the atoms' own extent, not the box
        positions = np.asarray(positions, dtype=np.float64)
        positions = positions - positions.min(axis=0)
        cell = np.diag(positions.max(axis=0) + 1.0)
    volume = abs(np.linalg.det(cell))
    heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    bins = float(np.prod(np.maximum(heights / float(cutoff), 1.0)))
    if bins > max(MAX_BINS, 100 * len(positions)):
        k = int(np.argmax(heights))
        raise ValueError(f"the cell is far too large for its {len(positions)} atoms ({heights[k]:.3g} Å along lattice "
                         f"vector {k}): the neighbour search would grid it into {bins:.2g} boxes of the cutoff's size "
                         "(gigabytes of memory). Use a cell a few Å larger than the structure along its vacuum, or "
                         "pbc=False in every direction for a molecule")
    i, j, S = _matscipy_neighbour_list("ijS", positions=positions, cell=cell, pbc=pbc, cutoff=float(cutoff))
    return i.astype(np.int64, copy=False), j.astype(np.int64, copy=False), S.astype(np.int64, copy=False)
