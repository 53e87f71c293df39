"""Choosing frames for the teacher: most uncertain first, a cap per round, no near-duplicates."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from ase import Atoms

__all__ = ["select", "largest_displacement"]


def largest_displacement(a: Atoms, others: Sequence[Atoms]) -> np.ndarray:
    """Largest atomic displacement (Å) between ``a`` and each of ``others``, with periodic
    images folded back (fractional differences rounded in periodic directions); ``inf``
    for frames with other atoms or another cell."""
    out = np.full(len(others), np.inf)
    cell = a.cell.array
    pbc = a.pbc
    inv = np.linalg.pinv(cell) if pbc.any() else None
    for k, b in enumerate(others):
        if len(b) != len(a) or not np.array_equal(b.numbers, a.numbers):
            continue
        if not np.array_equal(b.pbc, pbc) or (pbc.any() and not np.allclose(b.cell.array, cell)):
            continue
        d = b.positions - a.positions
        if inv is not None:
            frac = d @ inv
            frac[:, pbc] -= np.round(frac[:, pbc])
            d = frac @ cell
        out[k] = float(np.sqrt((d * d).sum(1).max()))
    return out


def select(candidates: Iterable, max_count: int, min_distance: float, existing: Sequence[Atoms] = ()) -> list:
    """The most uncertain candidates (``.uncertainty``, ``.atoms``), at most ``max_count``,
    none within ``min_distance`` (largest atomic displacement, Å) of another selected
    frame or of an ``existing`` (already labelled) one."""
    chosen: list = []
    kept: list[Atoms] = list(existing)
    for cand in sorted(candidates, key=lambda c: -c.uncertainty):
        if len(chosen) >= max_count:
            break
        if kept and largest_displacement(cand.atoms, kept).min() < min_distance:
            continue
        chosen.append(cand)
        kept.append(cand.atoms)
    return chosen
