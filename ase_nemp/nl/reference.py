"""Brute-force neighbour list: slow, obviously correct, used by the tests as an oracle."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["brute_force_neighbour_list"]


def brute_force_neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, S)`` of every directed pair closer than ``cutoff`` by explicit enumeration.

    Atoms are first wrapped into the cell along periodic directions (remembering the
    integer offsets); every image shift that can reach the cutoff is then tried for every
    pair. Cost O(N^2 x images).
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    frac = np.linalg.solve(cell.T, positions.T).T
    offset = np.where(pbc, np.floor(frac), 0.0).astype(np.int64)  # x = x_wrapped + offset @ cell
    wrapped = positions - offset @ cell
    # distance between opposite faces of the cell along each direction
    volume = abs(np.linalg.det(cell))
    heights = np.array([volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])
    reach = np.where(pbc, np.ceil(cutoff / heights).astype(np.int64) + 1, 0)
    shifts = np.array(list(itertools.product(*(range(-n, n + 1) for n in reach))), dtype=np.int64)

    out_i, out_j, out_s = [], [], []
    for s in shifts:
        vec = wrapped[None, :, :] - wrapped[:, None, :] + s @ cell  # [i, j]
        dist = np.linalg.norm(vec, axis=-1)
        mask = dist < cutoff
        if not s.any():
            np.fill_diagonal(mask, False)
        ii, jj = np.nonzero(mask)
        out_i.append(ii)
        out_j.append(jj)
        # shift relative to the unwrapped positions
        out_s.append(s[None, :] + offset[ii] - offset[jj])
    i = np.concatenate(out_i)
    j = np.concatenate(out_j)
    S = np.concatenate(out_s).reshape(-1, 3)
    return i, j, S
