"""Hessians and harmonic vibrations from a model (or any ASE calculator).

:func:`hessian` returns ASE's own :class:`~ase.vibrations.VibrationsData`, so
``get_frequencies()`` (cm^-1), ``get_energies()`` (eV), ``get_zero_point_energy()``,
``tabulate()``, ``write_jmol()`` and :class:`ase.thermochemistry.HarmonicThermo` work as
documented there. Imaginary modes come first: ASE reports them as complex numbers with a
zero real part (``50j`` cm^-1 is a mode of curvature -(2 pi c 50 cm^-1)^2 m).

How the Hessian is computed (``method``):

``"analytic"`` (the default for the package's calculator)
    Autograd second derivatives of the model's energy: the forces are computed with
    their graph kept, then one backward pass per selected coordinate gives a row. Exact
    to round-off; about 3 times the cost of an energy and forces call per row on the CPU.
``"finite-difference"``
    Central differences of the forces, ``H_ij = -(F_j(x + h e_i) - F_j(x - h e_i)) / 2h``,
    symmetrised; all 6n displaced structures go through the model in batched calls
    (:meth:`NEMPCalculator.calculate_batch`). The only way for a calculator that is not
    the package's (a reference potential, DFT), and what ``"auto"`` picks for those.

A committee gives the Hessian of its mean prediction (the mean of the members'
Hessians) and, in ``.members``, each member's own, so that frequencies and rates get a
committee spread (:mod:`ase_nemp.rates`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.units import invcm
from ase.vibrations import VibrationsData

__all__ = ["hessian", "ModelVibrations", "imaginary_frequencies", "free_atoms", "IMAGINARY_THRESHOLD"]

#: cm^-1: imaginary modes smaller than this are treated as numerical noise (soft modes of
#: a floppy adsorbate or of the slab relaxed to a finite force tolerance), larger ones count
IMAGINARY_THRESHOLD = 50.0

DIRECT_FORCES_MESSAGE = (
    "a Hessian needs forces that are the gradient of an energy; this model predicts its forces directly "
    "(LEIGNN force_mode 'direct'), so their derivative is neither symmetric nor the curvature of any energy "
    "surface, and frequencies, saddles and rates from it would mean nothing. Use a conservative model "
    "(force_mode 'conservative', NEMP or EquiREANN).")


class ModelVibrations(VibrationsData):
    """:class:`~ase.vibrations.VibrationsData` that also records how it was obtained.

    Attributes
    ----------
    method : str
        ``"analytic"`` or ``"finite-difference"``.
    members : list of VibrationsData or None
        For a committee, each member's Hessian at the same geometry (the object itself
        holds their mean); None for a single model or another calculator.
    """

    def __init__(self, atoms: Atoms, hessian, indices=None, method: str = "analytic",
                 members: list[VibrationsData] | None = None) -> None:
        super().__init__(atoms, hessian, indices=indices)
        self.method = method
        self.members = members


def free_atoms(atoms: Atoms) -> list[int]:
    """Indices of the atoms that no ``FixAtoms`` (or fully fixing ``FixCartesian``)
    constraint holds: the default selection of every analysis here."""
    return VibrationsData.indices_from_constraints(atoms)


def _selection(atoms: Atoms, indices: Sequence[int] | None) -> np.ndarray:
    if indices is None:
        indices = free_atoms(atoms)
    sel = np.asarray(list(indices), dtype=int).reshape(-1)
    if sel.size == 0:
        raise ValueError("no atoms selected for the Hessian (all atoms fixed by constraints, or an empty list)")
    if sel.min() < -len(atoms) or sel.max() >= len(atoms):
        raise ValueError(f"Hessian atom indices must lie in 0..{len(atoms) - 1}, got {sel.tolist()}")
    sel = sel % len(atoms)
    if len(np.unique(sel)) != len(sel):
        raise ValueError(f"Hessian atom indices repeat: {sel.tolist()}")
    return sel


def hessian(atoms: Atoms, calc: Any = None, indices: Sequence[int] | None = None, method: str = "auto",
            delta: float = 0.005) -> ModelVibrations:
    """The Hessian of the potential energy over ``indices`` as ASE's VibrationsData.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure (not modified). Constraints are ignored for the derivatives; they
        only set the default selection.
    calc : NEMPCalculator or any ASE calculator, optional
        Defaults to ``atoms.calc``.
    indices : sequence of int, optional
        Atoms whose displacements span the Hessian: (3n, 3n) for n atoms. Default: the
        atoms not fixed by ``FixAtoms`` (all atoms when there is no such constraint).
    method : {"auto", "analytic", "finite-difference"}
        See the module docstring. ``"auto"``: analytic for the package's calculator,
        finite differences for any other.
    delta : float
        Å, the displacement of ``"finite-difference"``.

    Returns
    -------
    ModelVibrations
        The Hessian in eV/Å^2 (``get_hessian_2d()`` is (3n, 3n), rows and columns in the
        order atom, x/y/z); for a committee the members' mean, with every member's in
        ``.members``.

    Raises
    ------
    ValueError
        A direct-force model (its forces are not an energy gradient), unknown method,
        bad indices or a non-finite result.
    """
    from .calculator import NEMPCalculator

    calc = atoms.calc if calc is None else calc
    if calc is None:
        raise ValueError("hessian needs a calculator: pass calc= or attach one to the atoms")
    if method not in ("auto", "analytic", "finite-difference"):
        raise ValueError(f"method must be 'auto', 'analytic' or 'finite-difference', not {method!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 0.5):
        raise ValueError(f"delta must be a displacement in Å between 0 and 0.5, got {delta!r}")
    sel = _selection(atoms, indices)
    ours = isinstance(calc, NEMPCalculator)
    if ours and not calc.conservative:
        raise ValueError(DIRECT_FORCES_MESSAGE)
    if method == "auto":
        method = "analytic" if ours else "finite-difference"
    if method == "analytic" and not ours:
        raise ValueError(f"the analytic Hessian needs an NEMPCalculator, not {type(calc).__name__}; "
                         "use method='finite-difference'")
    if method == "analytic":
        per_member = _analytic(atoms, calc, sel)
    elif ours:
        per_member = _finite_difference_batched(atoms, calc, sel, delta)
    else:
        per_member = [_finite_difference(atoms, calc, sel, delta)]
    for h in per_member:
        if not np.isfinite(h).all():
            raise ValueError("the Hessian has non-finite entries: the structure is outside what the model can "
                             "evaluate (overlapping atoms?)")
    atoms = atoms.copy()
    atoms.calc = None
    mean = np.mean(per_member, axis=0)
    members = None
    if len(per_member) > 1:
        members = [VibrationsData.from_2d(atoms, h, indices=sel) for h in per_member]
    n = len(sel)
    return ModelVibrations(atoms, mean.reshape(n, 3, n, 3), indices=sel, method=method, members=members)


def _analytic(atoms: Atoms, calc, sel: np.ndarray) -> list[np.ndarray]:
    """Each member's (3n, 3n) Hessian by autograd: forces with their graph, then a row
    per selected coordinate."""
    import torch

    from .graph import collate
    from .nl import build_graph

    model = calc.model
    graph = collate([build_graph(atoms, model.cutoff, device=calc.device, dtype=calc.dtype)])
    members = list(model.members) if calc.is_committee else [model]
    rows_index = torch.as_tensor(sel, device=calc.device)
    out = []
    with calc._lock:
        for member in members:
            positions = graph.positions.detach().requires_grad_(True)
            energy = member(graph._replace(positions=positions), fused=False)["energy"].sum()
            (gradient,) = torch.autograd.grad(energy, positions, create_graph=True)
            chosen = gradient.index_select(0, rows_index).reshape(-1)
            rows = []
            for k in range(chosen.numel()):
                (row,) = torch.autograd.grad(chosen[k], positions, retain_graph=k + 1 < chosen.numel(),
                                             allow_unused=True)
                if row is None:  # the energy does not depend on the positions (no neighbours)
                    row = torch.zeros_like(positions)
                rows.append(row.index_select(0, rows_index).reshape(-1))
            h = torch.stack(rows).to(torch.float64).cpu().numpy()
            out.append(0.5 * (h + h.T))  # symmetric to round-off already; make it exactly so
    return out


def _displaced(atoms: Atoms, sel: np.ndarray, delta: float) -> list[Atoms]:
    """+delta and -delta along every selected coordinate, in the order (atom, axis, sign)."""
    frames = []
    base = atoms.copy()
    base.calc = None
    base.constraints = []  # a displacement of a constrained atom must not be undone
    for a in sel:
        for axis in range(3):
            for sign in (1.0, -1.0):
                frame = base.copy()
                frame.positions[a, axis] += sign * delta
                frames.append(frame)
    return frames


def _from_forces(forces: np.ndarray, sel: np.ndarray, delta: float) -> np.ndarray:
    """(3n, 3n) Hessian from the forces on the selected atoms of the displaced frames,
    shaped (3n, 2, n, 3)."""
    n = len(sel)
    h = -(forces[:, 0] - forces[:, 1]).reshape(3 * n, 3 * n) / (2 * delta)
    return 0.5 * (h + h.T)


def _finite_difference_batched(atoms: Atoms, calc, sel: np.ndarray, delta: float) -> list[np.ndarray]:
    from .calculator import NEMPCalculator

    frames = _displaced(atoms, sel, delta)
    n = len(sel)
    if calc.is_committee:
        # the calculator keeps only the members' mean forces: evaluate member by member
        members = []
        for m in range(calc.model.size):
            single = NEMPCalculator(calc.model.members[m], device=calc.device, dtype=calc.dtype)
            for frame in frames:
                frame.calc = None
            single.calculate_batch(frames, ("energy", "forces"))
            forces = np.stack([f.calc.results["forces"][sel] for f in frames]).reshape(3 * n, 2, n, 3)
            members.append(_from_forces(forces, sel, delta))
        return members
    calc.sibling().calculate_batch(frames, ("energy", "forces"))
    forces = np.stack([f.calc.results["forces"][sel] for f in frames]).reshape(3 * n, 2, n, 3)
    return [_from_forces(forces, sel, delta)]


def _finite_difference(atoms: Atoms, calc, sel: np.ndarray, delta: float) -> np.ndarray:
    frames = _displaced(atoms, sel, delta)
    forces = []
    for frame in frames:
        frame.calc = calc
        forces.append(np.asarray(frame.get_forces(apply_constraint=False))[sel])
        frame.calc = None
    n = len(sel)
    return _from_forces(np.stack(forces).reshape(3 * n, 2, n, 3), sel, delta)


def imaginary_frequencies(vib: VibrationsData, threshold: float = IMAGINARY_THRESHOLD) -> np.ndarray:
    """Magnitudes (cm^-1, largest first) of the imaginary modes larger than ``threshold`` cm^-1."""
    nu = vib.get_energies() / invcm
    imag = np.abs(nu.imag[np.abs(nu.imag) > threshold])
    return np.sort(imag)[::-1]
