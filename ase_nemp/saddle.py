"""From a climbing image to a verified first-order saddle.

:func:`refine_saddle` converges a saddle point by partitioned rational-function
optimisation (P-RFO; Baker, J. Comput. Chem. 7, 385 (1986)) on the model's exact
Hessian: in the Hessian's eigenbasis it maximises the energy along one mode (the one
that overlaps most with the band's tangent, then the one that overlaps most with the
mode followed before) and minimises along all others, with a trust radius on the
largest atomic step. The Hessian is computed exactly at the start and whenever its
update (Bofill's, the usual one for saddles) no longer has exactly one negative
eigenvalue, and is updated from the gradients in between.

Why P-RFO and not ASE's dimer method: from the demo's climbing image (largest NEB force
0.05 eV/Å) P-RFO on the model's Hessian converges to 0.01 eV/Å in a handful of steps,
since the model gives the exact curvature for a few energy-and-forces calls' worth of
time, while the dimer method must find the lowest mode by rotating a dimer, two force
calls per rotation, and needed hundreds of force calls for the same saddle (README, "From
a band to a rate"). Sella, the field's tool, does the same with an iteratively built
Hessian; it needs JAX, so it is not a dependency.

:func:`verify_saddle` then checks the two things that make a saddle a transition state:
exactly one imaginary mode larger than a threshold (the Hessian over the free atoms), and
that following that mode downhill on both sides (a displacement along it, then BFGS)
ends in two minima, which it matches by RMSD to the minima it is given.

Units: eV, Å, cm^-1 for frequencies.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

from .vibrations import IMAGINARY_THRESHOLD, ModelVibrations, free_atoms, hessian, imaginary_frequencies

__all__ = ["refine_saddle", "verify_saddle", "SaddleResult", "Connection", "rmsd", "attach_calculator"]


@dataclass
class SaddleResult:
    """A refined saddle.

    Attributes
    ----------
    atoms : ase.Atoms
        The saddle, with its calculator's results.
    energy : float
        eV.
    converged : bool
        The largest atomic force on the free atoms fell below ``fmax``.
    steps : int
        P-RFO steps taken.
    fmax : float
        eV/Å, the largest atomic force at the end.
    hessians : int
        Exact Hessians computed during the search (the final one not counted).
    vibrations : ModelVibrations
        The exact Hessian at the saddle over the free atoms.
    imaginary : ndarray
        cm^-1, the magnitudes of the imaginary modes above the threshold (one for a
        first-order saddle).
    mode : ndarray (N, 3)
        The most negative curvature mode in Cartesian displacements, largest atomic
        displacement 1 (zero on atoms outside the Hessian).
    history : list of float
        Largest atomic force at every step (eV/Å).
    seconds : float
    """

    atoms: Atoms
    energy: float
    converged: bool
    steps: int
    fmax: float
    hessians: int
    vibrations: ModelVibrations
    imaginary: np.ndarray
    mode: np.ndarray
    threshold: float
    history: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def first_order(self) -> bool:
        """Exactly one imaginary mode above the threshold."""
        return len(self.imaginary) == 1

    @property
    def imaginary_frequency(self) -> float:
        """cm^-1, the largest imaginary frequency (nan when there is none)."""
        return float(self.imaginary[0]) if len(self.imaginary) else float("nan")


def attach_calculator(atoms: Atoms, calc: Any) -> None:
    """Give ``atoms`` a calculator: a sibling of an NEMPCalculator (its own neighbour
    list, the same model), or ``calc`` itself for any other calculator."""
    from .calculator import NEMPCalculator

    atoms.calc = calc.sibling() if isinstance(calc, NEMPCalculator) else calc


def _fmax(forces: np.ndarray) -> float:
    return float(np.sqrt((forces.reshape(-1, 3) ** 2).sum(1).max())) if forces.size else 0.0


def _largest_atomic(step: np.ndarray) -> float:
    return float(np.sqrt((step.reshape(-1, 3) ** 2).sum(1).max()))


def _bofill(h: np.ndarray, dx: np.ndarray, dg: np.ndarray) -> np.ndarray:
    """Bofill's update of the Hessian ``h`` (a mix of the symmetric rank-one and Powell's
    updates), which, unlike BFGS, keeps negative curvature."""
    xi = dg - h @ dx
    dxdx, xidx, xixi = dx @ dx, xi @ dx, xi @ xi
    if dxdx < 1e-16 or xixi < 1e-24:
        return h
    psb = (np.outer(xi, dx) + np.outer(dx, xi)) / dxdx - xidx * np.outer(dx, dx) / dxdx**2
    phi = xidx**2 / (xixi * dxdx)
    sr1 = np.outer(xi, xi) / xidx if abs(xidx) > 1e-12 else 0.0
    return h + phi * sr1 + (1.0 - phi) * psb


def _prfo_step(h: np.ndarray, g: np.ndarray, follow: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The P-RFO step (uphill along the followed mode, downhill along the rest) and the
    mode followed. ``follow``: a vector to overlap with, or None for the lowest mode."""
    b, v = np.linalg.eigh(h)
    k = 0 if follow is None else int(np.argmax(np.abs(v.T @ follow)))
    mode = v[:, k] if follow is None or v[:, k] @ follow >= 0 else -v[:, k]
    f = v.T @ g  # gradient in the eigenbasis
    step = np.zeros_like(g)
    # maximise along mode k: the larger root of the 2x2 RFO problem
    lam_p = 0.5 * b[k] + 0.5 * np.sqrt(b[k] ** 2 + 4.0 * f[k] ** 2)
    if abs(b[k] - lam_p) > 1e-12:
        step += v[:, k] * (-f[k] / (b[k] - lam_p))
    rest = np.arange(len(b)) != k
    if rest.any():
        br, fr = b[rest], f[rest]
        aug = np.zeros((len(br) + 1, len(br) + 1))
        aug[np.arange(len(br)), np.arange(len(br))] = br
        aug[:-1, -1] = aug[-1, :-1] = fr
        lam_n = min(float(np.linalg.eigvalsh(aug)[0]), 0.0)
        denom = br - lam_n
        denom = np.where(np.abs(denom) < 1e-8, 1e-8, denom)
        step += v[:, rest] @ (-fr / denom)
    return step, mode


def _mode_vector(vib: ModelVibrations, n_atoms: int) -> np.ndarray:
    """The lowest mode as Cartesian displacements (N, 3), largest atomic displacement 1."""
    _, modes = vib.get_energies_and_modes(all_atoms=True)
    mode = modes[0]
    return mode / max(np.sqrt((mode**2).sum(1)).max(), 1e-12)


def refine_saddle(atoms: Atoms, calc: Any, *, tangent: np.ndarray | None = None, fmax: float = 0.01,
                  steps: int = 100, trust: float = 0.1, max_trust: float = 0.2, method: str = "auto",
                  threshold: float = IMAGINARY_THRESHOLD, progress: bool = True) -> SaddleResult:
    """Converge a first-order saddle from a guess (a climbing image) by P-RFO.

    Parameters
    ----------
    atoms : ase.Atoms
        The guess; not modified (the saddle is a copy). Atoms fixed by ``FixAtoms``
        stay where they are; all others move.
    calc : NEMPCalculator or any ASE calculator
        Hessians are analytic for the package's calculator and by finite differences
        (6 force calls per free atom) for others (:func:`ase_nemp.vibrations.hessian`).
    tangent : array (N, 3), optional
        The band's tangent at the guess: the first step climbs along the Hessian mode
        that overlaps most with it. Without it, along the lowest mode.
    fmax : float
        eV/Å, convergence: largest atomic force on the free atoms.
    steps : int
        P-RFO steps at most.
    trust, max_trust : float
        Å, the initial and largest trust radius on the largest atomic step; it doubles
        after steps whose energy change the quadratic model predicted well and halves
        after poor ones.
    method : str
        How Hessians are computed (``"auto"``, ``"analytic"``, ``"finite-difference"``).
    threshold : float
        cm^-1; imaginary modes smaller than this are not counted.
    progress : bool
        A progress bar.

    Returns
    -------
    SaddleResult
    """
    from tqdm.auto import tqdm

    if not fmax > 0 or not isinstance(steps, int) or steps < 0 or not 0 < trust <= max_trust:
        raise ValueError("refine_saddle needs fmax > 0 (eV/Å), steps >= 0 and 0 < trust <= max_trust (Å)")
    start = time.perf_counter()
    saddle = atoms.copy()
    attach_calculator(saddle, calc)
    sel = np.asarray(free_atoms(saddle))
    if sel.size == 0:
        raise ValueError("refine_saddle: every atom is fixed, nothing can move")

    def exact() -> np.ndarray:
        return hessian(saddle, saddle.calc, indices=sel, method=method).get_hessian_2d()

    def gradient() -> tuple[float, np.ndarray]:
        forces = saddle.get_forces(apply_constraint=False)[sel]
        return float(saddle.get_potential_energy()), -forces.reshape(-1)

    h, n_exact = exact(), 1
    energy, g = gradient()
    follow = None if tangent is None else np.asarray(tangent, dtype=float)[sel].reshape(-1)
    history = [_fmax(g)]
    bar = tqdm(total=steps, desc="refine saddle (P-RFO)", file=sys.stdout, leave=False, mininterval=0.2,
               disable=not progress)
    step_count, fresh = 0, True
    try:
        while history[-1] > fmax and step_count < steps:
            dx, follow = _prfo_step(h, g, follow)
            largest = _largest_atomic(dx)
            if largest > trust:
                dx *= trust / largest
            predicted = g @ dx + 0.5 * dx @ h @ dx
            positions = saddle.get_positions()
            positions[sel] += dx.reshape(-1, 3)
            saddle.set_positions(positions, apply_constraint=False)
            new_energy, new_g = gradient()
            step_count += 1
            ratio = (new_energy - energy) / predicted if abs(predicted) > 1e-10 else 1.0
            if 0.5 < ratio < 2.0 and largest >= trust:
                trust = min(2.0 * trust, max_trust)
            elif not 0.25 < ratio < 4.0:
                trust = max(0.5 * trust, 0.01)
            h = _bofill(h, dx, new_g - g)
            energy, g = new_energy, new_g
            history.append(_fmax(g))
            fresh = False
            if history[-1] > fmax and int((np.linalg.eigvalsh(h) < 0).sum()) != 1:
                h, n_exact, fresh = exact(), n_exact + 1, True
            bar.update(1)
            bar.set_postfix(E=f"{energy:.4f} eV", fmax=f"{history[-1]:.4f}", trust=f"{trust:.2f}")
    finally:
        bar.close()
    vib = hessian(saddle, saddle.calc, indices=sel, method=method)
    return SaddleResult(atoms=saddle, energy=float(saddle.get_potential_energy()), converged=history[-1] <= fmax,
                        steps=step_count, fmax=history[-1], hessians=n_exact, vibrations=vib,
                        imaginary=imaginary_frequencies(vib, threshold), mode=_mode_vector(vib, len(saddle)),
                        threshold=threshold, history=history, seconds=time.perf_counter() - start)


def rmsd(a: Atoms, b: Atoms, indices: Sequence[int] | None = None) -> float:
    """Å, the root-mean-square distance between two structures of the same atoms over
    ``indices`` (default: the free atoms of ``a``), with the minimum-image convention."""
    if len(a) != len(b) or (a.numbers != b.numbers).any():
        raise ValueError("rmsd needs two structures of the same atoms in the same order")
    sel = free_atoms(a) if indices is None else list(indices)
    d = b.positions[sel] - a.positions[sel]
    if a.pbc.any():
        d, _ = find_mic(d, a.cell, a.pbc)
    return float(np.sqrt((d**2).sum(1).mean())) if len(sel) else 0.0


@dataclass
class Connection:
    """Where a saddle leads downhill, on its two sides.

    Attributes
    ----------
    minima : list of two ase.Atoms
        The relaxed ends: ``minima[0]`` on the side against the mode, ``minima[1]``
        along it.
    energies : list of two floats
        eV.
    matched : list of two (int or None)
        Index into the ``references`` each end matched (RMSD below the tolerance), or
        None.
    rmsd : ndarray (2, len(references))
        Å, every end against every reference.
    converged : list of two bools
        The relaxations reached their force tolerance.
    """

    minima: list
    energies: list
    matched: list
    rmsd: np.ndarray
    converged: list

    def match(self, references: Sequence[Atoms], rmsd_tolerance: float) -> "Connection":
        """Match both ends against ``references`` (in place; returns self)."""
        self.rmsd = np.array([[rmsd(ref, end) for ref in references] for end in self.minima]).reshape(
            2, len(references))
        self.matched = []
        for row in self.rmsd:
            best = int(np.argmin(row)) if len(row) else None
            self.matched.append(best if best is not None and row[best] <= rmsd_tolerance else None)
        return self

    def connects(self, i: int, j: int) -> bool:
        """The saddle leads to references ``i`` and ``j`` (one on each side)."""
        return sorted(m for m in self.matched if m is not None) == sorted([i, j]) and None not in self.matched


def verify_saddle(saddle: SaddleResult, calc: Any, references: Sequence[Atoms] = (), *,
                  displacement: float = 0.1, fmax: float = 0.01, steps: int = 500, rmsd_tolerance: float = 0.25,
                  progress: bool = True) -> Connection:
    """Follow the saddle's imaginary mode downhill on both sides and relax (BFGS).

    Parameters
    ----------
    saddle : SaddleResult
    calc : NEMPCalculator or any ASE calculator
    references : sequence of ase.Atoms
        Minima to match the two ends against (the band's end points).
    displacement : float
        Å, the largest atomic displacement along the mode before the relaxation.
    fmax, steps : float, int
        BFGS tolerance (eV/Å) and steps for each side.
    rmsd_tolerance : float
        Å over the free atoms: an end within this of a reference is that reference.

    Returns
    -------
    Connection
    """
    from .calculator import NEMPCalculator

    ends = []
    for sign in (-1.0, 1.0):
        end = saddle.atoms.copy()
        end.set_positions(end.get_positions() + sign * displacement * saddle.mode, apply_constraint=False)
        ends.append(end)
    if isinstance(calc, NEMPCalculator):
        from .relax import relax_many

        results = relax_many(ends, calc, fmax=fmax, steps=steps, progress=False, maxstep=0.1)
        converged = [r.converged for r in results]
    else:
        from ase.optimize import BFGS

        converged = []
        for end in ends:
            end.calc = calc
            converged.append(bool(BFGS(end, logfile=None, maxstep=0.1).run(fmax=fmax, steps=steps)))
    energies = [float(end.get_potential_energy()) for end in ends]
    connection = Connection(minima=ends, energies=energies, matched=[None, None], rmsd=np.zeros((2, 0)),
                            converged=converged)
    return connection.match(references, rmsd_tolerance)
