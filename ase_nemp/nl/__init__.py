"""Neighbour lists: Atoms -> :class:`~ase_nemp.graph.AtomicGraph`.

The engine on the CPU is the package's own cell list in C (:mod:`ase_nemp.nl.cells`,
parallel on the kernels' threads), or matscipy's where the kernels cannot be built or
``engine="matscipy"`` asks for it; both give the same pairs. :class:`NeighbourList` adds a Verlet
skin: the list is built with ``cutoff + skin`` and reused while no atom has moved more
than ``skin / 2`` and the cell, pbc and atoms are unchanged; on reuse the candidate
pairs are filtered back to the true cutoff, so the model always sees exactly the
edges of a fresh list. Edge *vectors* are never passed on: the model rebuilds them
from positions, shifts and cell so that forces and stress come from autograd.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..graph import AtomicGraph
from . import cells
from .cluster import HAS_TORCH_CLUSTER, torch_cluster_neighbour_list
from .matscipy_nl import check_structure, matscipy_neighbour_list
from .reference import brute_force_neighbour_list

ENGINES = ("auto", "cells", "matscipy")


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"neighbour-list engine must be one of {ENGINES}, not {engine!r}")


def neighbour_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, engine: str = "auto",
                    capacity: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, S)`` within ``cutoff`` (Å) of validated arrays (``check_structure``),
    sorted by ``i``: from the C cell list (``"cells"``; ``"auto"`` where it builds) or
    matscipy's. ``capacity``: the number of pairs expected (a previous list's)."""
    _check_engine(engine)
    if engine == "cells" or (engine == "auto" and cells.available()):
        return cells.cell_list_neighbour_list(positions, cell, pbc, cutoff, capacity=capacity)
    return matscipy_neighbour_list(positions, cell, pbc, cutoff)

__all__ = [
    "NeighbourList",
    "neighbour_pairs",
    "build_graph",
    "atoms_to_arrays",
    "check_structure",
    "matscipy_neighbour_list",
    "brute_force_neighbour_list",
    "torch_cluster_neighbour_list",
    "HAS_TORCH_CLUSTER",
]


def atoms_to_arrays(atoms: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(positions, numbers, completed cell, pbc)`` of an ``ase.Atoms``, validated."""
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    positions, cell, pbc = check_structure(atoms.positions, atoms.cell.array, atoms.pbc)
    return positions, numbers, cell, pbc


class NeighbourList:
    """Full directed neighbour list with optional Verlet-skin reuse.

    Parameters
    ----------
    cutoff : float
        Interaction cutoff in Å.
    skin : float
        Extra distance (Å). With ``skin > 0`` the list of pairs within ``cutoff + skin``
        is reused until an atom has moved more than ``skin / 2`` since it was built, or
        the cell, pbc or atomic numbers change. 0 rebuilds on every call.
    engine : {"auto", "cells", "matscipy"}
        The search (:func:`neighbour_pairs`): the package's C cell list where it builds
        ("auto"), or matscipy's.

    Attributes
    ----------
    num_builds, num_calls : int
        How many times the list was rebuilt / requested (for diagnostics).
    seconds : float
        Wall time spent in this neighbour list (building and filtering).
    """

    def __init__(self, cutoff: float, skin: float = 0.0, engine: str = "auto") -> None:
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        _check_engine(engine)
        self.cutoff, self.skin, self.engine = float(cutoff), float(skin), engine
        self._pairs_found = 0  # the last list's length: room made for the next
        self.num_builds = self.num_calls = 0
        self.seconds = 0.0
        self._cache: tuple | None = None

    def reset(self) -> None:
        """Forget the stored list; the next call rebuilds."""
        self._cache = None

    def _can_reuse(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray | None) -> bool:
        if self._cache is None or self.skin <= 0:
            return False
        ref_pos, ref_cell, ref_pbc, ref_numbers = self._cache[:4]
        if positions.shape != ref_pos.shape or not np.array_equal(cell, ref_cell) or not np.array_equal(pbc, ref_pbc):
            return False
        if numbers is not None and not np.array_equal(numbers, ref_numbers):
            return False
        disp2 = ((positions - ref_pos) ** 2).sum(axis=1).max()
        return bool(disp2 <= (0.5 * self.skin) ** 2)

    def __call__(
        self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs ``(i, j, S)`` within the cutoff for validated arrays (see ``check_structure``)."""
        start = time.perf_counter()
        try:
            return self._pairs(positions, cell, pbc, numbers)
        finally:
            self.seconds += time.perf_counter() - start

    def _pairs(self, positions, cell, pbc, numbers):
        self.num_calls += 1
        if not self._can_reuse(positions, cell, pbc, numbers):
            i, j, S = neighbour_pairs(positions, cell, pbc, self.cutoff + self.skin, self.engine,
                                      capacity=self._pairs_found + self._pairs_found // 16)
            self._pairs_found = len(i)
            self.num_builds += 1
            if self.skin <= 0:
                return i, j, S
            self._cache = (positions.copy(), cell.copy(), pbc.copy(), None if numbers is None else numbers.copy(), i, j, S)
        i, j, S = self._cache[4:]
        return cells.pairs_within(positions, cell, i, j, S, self.cutoff)


def build_graph(
    atoms: Any,
    cutoff: float,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    neighbour_list: NeighbourList | None = None,
) -> AtomicGraph:
    """Turn an ``ase.Atoms`` into a one-structure :class:`AtomicGraph`.

    Parameters
    ----------
    atoms : ase.Atoms
    cutoff : float
        Å; ignored when ``neighbour_list`` is given (its own cutoff is used).
    device, dtype
        Where the tensors go, and the float type of positions, cell and shifts.
    neighbour_list : NeighbourList, optional
        Reused between calls for skin-based reuse. Without it a fresh list is built
        (:func:`neighbour_pairs`).
    """
    positions, numbers, cell, pbc = atoms_to_arrays(atoms)
    device = torch.device(device)
    if neighbour_list is not None:
        i, j, S = neighbour_list(positions, cell, pbc, numbers)
    elif device.type == "cuda" and not pbc.any() and HAS_TORCH_CLUSTER:
        return _graph_from_cluster(positions, numbers, cell, pbc, cutoff, device, dtype)
    else:
        i, j, S = neighbour_pairs(positions, cell, pbc, cutoff)
    # The model sees only differences of positions: moving the centroid to the origin in
    # float64 before any cast keeps float32 edge vectors exact for structures far from it.
    positions = positions - positions.mean(axis=0)
    return AtomicGraph(
        positions=torch.as_tensor(positions, dtype=dtype, device=device),
        numbers=torch.as_tensor(numbers, device=device),
        cell=torch.as_tensor(cell, dtype=dtype, device=device).unsqueeze(0),
        pbc=torch.as_tensor(pbc, device=device).unsqueeze(0),
        edge_index=torch.as_tensor(np.stack([i, j]), device=device),
        shifts=torch.as_tensor(S, dtype=dtype, device=device),
        batch=torch.zeros(len(numbers), dtype=torch.long, device=device),
    )


def _graph_from_cluster(positions, numbers, cell, pbc, cutoff, device, dtype) -> AtomicGraph:
    pos = torch.as_tensor(positions, dtype=dtype, device=device)
    edge_index = torch_cluster_neighbour_list(pos, cutoff)
    return AtomicGraph(
        positions=pos,
        numbers=torch.as_tensor(numbers, device=device),
        cell=torch.as_tensor(cell, dtype=dtype, device=device).unsqueeze(0),
        pbc=torch.as_tensor(pbc, device=device).unsqueeze(0),
        edge_index=edge_index,
        shifts=torch.zeros(edge_index.shape[1], 3, dtype=dtype, device=device),
        batch=torch.zeros(len(numbers), dtype=torch.long, device=device),
    )
