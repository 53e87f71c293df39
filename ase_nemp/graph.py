"""The one data structure that crosses module boundaries: a batch of atomic graphs.

A batch is the disjoint union of B structures with N atoms and E directed edges in
total. Units: Å. Edge ``e`` points from neighbour ``j = edge_index[1, e]`` to centre
``i = edge_index[0, e]`` and its vector is::

    r_e = positions[j] - positions[i] + shifts[e] @ cell[batch[i]]

(rows of ``cell`` are lattice vectors). Edge vectors are always rebuilt from these
tensors inside torch, so forces and stress come from autograd.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

__all__ = ["AtomicGraph", "collate"]


class AtomicGraph(NamedTuple):
    """A batch of structures as tensors.

    Attributes
    ----------
    positions : (N, 3) float
        Cartesian positions, Å.
    numbers : (N,) int64
        Atomic numbers.
    cell : (B, 3, 3) float
        Cells, rows are lattice vectors (anything non-singular for molecules).
    pbc : (B, 3) bool
        Periodic directions (used for stress and by the neighbour list).
    edge_index : (2, E) int64
        Row 0 = centre (receiver) i, row 1 = neighbour (sender) j. Full directed list.
    shifts : (E, 3) float
        Integer lattice shifts n_e of the neighbour, stored in the float dtype.
    batch : (N,) int64
        Structure index of every atom.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return self.cell.shape[0]

    @property
    def num_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AtomicGraph":
        """Move to ``device`` and cast the float tensors to ``dtype``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return AtomicGraph(*(move(t) for t in self))


def collate(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Join single or batched graphs into one batch (atom and edge indices offset)."""
    if not graphs:
        raise ValueError("cannot collate an empty list of graphs")
    if len(graphs) == 1:
        return graphs[0]
    atom_offset, graph_offset = 0, 0
    edge_index, batch = [], []
    for g in graphs:
        edge_index.append(g.edge_index + atom_offset)
        batch.append(g.batch + graph_offset)
        atom_offset += g.num_atoms
        graph_offset += g.num_graphs
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat(edge_index, dim=1),
        shifts=torch.cat([g.shifts for g in graphs]),
        batch=torch.cat(batch),
    )
