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

__all__ = ["AtomicGraph", "collate", "values_known"]


def values_known(t: torch.Tensor) -> bool:
    """False while ``t`` stands for the input of a graph being traced or compiled
    (``make_fx``, ``torch.compile``): its values, and so checks on them, exist only when
    the graph runs. Whoever runs such a graph checks its inputs first."""
    from torch._subclasses.fake_tensor import is_fake

    return not (torch.compiler.is_compiling() or is_fake(t))


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

    def checked(self, dtype: torch.dtype | None = None) -> "AtomicGraph":
        """This graph with its index tensors as contiguous int64, after checking that the
        tensors fit together: shapes, one device, integer indices inside their ranges
        (``0 <= edge_index < N``, ``0 <= batch < B``) and one float dtype (``dtype``, the
        model's, if given). Raises ``ValueError`` or ``TypeError`` naming the problem.

        Models call it on every graph they are given: the fused kernels index memory
        with these numbers and must never see one out of range.
        """
        positions, numbers, cell, pbc, edge_index, shifts, batch = self
        N = positions.shape[0] if positions.dim() == 2 else -1
        problems = []
        if positions.dim() != 2 or positions.shape[1] != 3:
            problems.append(f"positions must be (N, 3), got {tuple(positions.shape)}")
        if cell.dim() != 3 or cell.shape[1:] != (3, 3):
            problems.append(f"cell must be (B, 3, 3), got {tuple(cell.shape)}")
        B = cell.shape[0] if cell.dim() == 3 else -1
        if tuple(pbc.shape) != (B, 3):
            problems.append(f"pbc must be (B, 3) = ({B}, 3), got {tuple(pbc.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            problems.append(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
        E = edge_index.shape[1] if edge_index.dim() == 2 else -1
        if tuple(shifts.shape) != (E, 3):
            problems.append(f"shifts must be (E, 3) = ({E}, 3), got {tuple(shifts.shape)}")
        for name, t in (("numbers", numbers), ("batch", batch)):
            if tuple(t.shape) != (N,):
                problems.append(f"{name} must be (N,) = ({N},), got {tuple(t.shape)}")
        if problems:
            raise ValueError("malformed AtomicGraph: " + "; ".join(problems))
        for name, t in (("numbers", numbers), ("edge_index", edge_index), ("batch", batch)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"AtomicGraph.{name} must hold integers, got {t.dtype}")
        floats = {name: t.dtype for name, t in (("positions", positions), ("cell", cell), ("shifts", shifts))}
        if any(not torch.empty(0, dtype=d).is_floating_point() for d in floats.values()):
            raise TypeError(f"AtomicGraph positions, cell and shifts must be floating point, got {floats}")
        expected = dtype or positions.dtype
        if any(d != expected for d in floats.values()):
            raise TypeError(
                f"AtomicGraph float dtypes {floats} do not match the model's {expected}; "
                f"convert with graph.to(dtype={expected})"
            )
        devices = {t.device for t in self}
        if len(devices) > 1:
            raise ValueError(f"AtomicGraph tensors are on several devices: {sorted(map(str, devices))}")
        edge_index = edge_index.to(torch.int64).contiguous()
        batch = batch.to(torch.int64).contiguous()
        numbers = numbers.to(torch.int64).contiguous()
        if not values_known(edge_index):
            return AtomicGraph(positions, numbers, cell, pbc, edge_index, shifts, batch)
        if E > 0 and (int(edge_index.min()) < 0 or int(edge_index.max()) >= N):
            raise ValueError(f"edge_index holds atom indices outside [0, {N}): "
                             f"min {int(edge_index.min())}, max {int(edge_index.max())}")
        if N > 0 and (int(batch.min()) < 0 or int(batch.max()) >= B):
            raise ValueError(f"batch holds structure indices outside [0, {B}): "
                             f"min {int(batch.min())}, max {int(batch.max())}")
        return AtomicGraph(positions, numbers, cell, pbc, edge_index, shifts, batch)

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
