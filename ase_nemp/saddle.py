"""From a climbing image to a verified first-order saddle.

:func:`refine_saddle` converges a saddle point from a guess (a band's climbing image) by
one of two methods, and then takes the exact Hessian there:

``"dimer"`` (the default): ASE's dimer method (Henkelman and Jónsson 1999,
    ``ase.mep.dimer``): a pair of images a small distance apart finds the lowest
    curvature mode by rotating, and the structure moves uphill along it and downhill along
    all others; energy and forces only, starting from the band's tangent.
``"prfo"``: partitioned rational-function optimisation (Baker, J. Comput. Chem. 7, 385
    (1986)) on the model's exact Hessian, updated by Bofill's formula between exact
    Hessians (at the start, and with ``refresh`` whenever the update loses its single
    negative eigenvalue). Its use is a costly calculator with a good Hessian to start
    from: a reference method started from the model's saddle and Hessian.

Why the dimer is the default, measured on the demo's C-O bond-forming saddle with the
shipped committee (``benchmarks/pd_co_o/saddle_methods.py``, README "From a band to a
rate"): an exact Hessian over the 21 free atoms costs about as much as 180 energy and
force calls of the committee, so the dimer's 80-360 calls are cheaper than P-RFO's
Hessians; and it reached the same saddle (355-356i cm^-1) from all three guesses (the
climbing image, that image with 0.05 Å of noise, the top of a band stopped early at
0.74 eV/Å), while P-RFO on a single start Hessian went to another saddle from the
noisy guess and did not converge from the early band's top. Sella, the field's tool,
does what P-RFO does with an iteratively built Hessian; it needs JAX, so it is not a
dependency.

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

__all__ = ["refine_saddle", "verify_saddle", "SaddleResult", "Connection", "rmsd", "displacement",
           "attach_calculator"]


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


def _mode_vector(vib: ModelVibrations) -> np.ndarray:
    """The lowest mode as Cartesian displacements (N, 3), largest atomic displacement 1."""
    _, modes = vib.get_energies_and_modes(all_atoms=True)
    mode = modes[0]
    return mode / max(np.sqrt((mode**2).sum(1)).max(), 1e-12)


def refine_saddle(atoms: Atoms, calc: Any, *, tangent: np.ndarray | None = None, fmax: float = 0.01,
                  steps: int = 100, method: str = "dimer", trust: float = 0.1, max_trust: float = 0.2,
                  refresh: bool = False, hessian_method: str = "auto", threshold: float = IMAGINARY_THRESHOLD,
                  initial_hessian: np.ndarray | None = None, progress: bool = True) -> SaddleResult:
    """Converge a first-order saddle from a guess (a climbing image), then take the exact
    Hessian there.

    Parameters
    ----------
    atoms : ase.Atoms
        The guess; not modified (the saddle is a copy). Atoms fixed by ``FixAtoms``
        stay where they are; all others move.
    calc : NEMPCalculator or any ASE calculator
        Hessians are analytic for the package's calculator and by finite differences
        (6 force calls per free atom) for others (:func:`ase_nemp.vibrations.hessian`).
    tangent : array (N, 3), optional
        The band's tangent at the guess: the initial direction of the mode to climb.
        Without it, the lowest mode of the Hessian (P-RFO) or a random one (dimer).
    fmax : float
        eV/Å, convergence: largest atomic force on the free atoms.
    steps : int
        Steps at most (dimer translations, or P-RFO steps).
    method : {"dimer", "prfo"}
        ``"dimer"``: ASE's dimer method (``ase.mep.dimer``), energy and forces only;
        ``"prfo"``: P-RFO on the exact Hessian (module docstring).
    trust, max_trust : float
        P-RFO: Å, the initial and largest trust radius on the largest atomic step; it
        doubles after steps whose energy change the quadratic model predicted well and
        halves after poor ones.
    refresh : bool
        P-RFO: take a new exact Hessian whenever the updated one no longer has exactly
        one negative eigenvalue (otherwise only at the start).
    hessian_method : str
        How Hessians are computed (``"auto"``, ``"analytic"``, ``"finite-difference"``).
    threshold : float
        cm^-1; imaginary modes smaller than this are not counted.
    initial_hessian : array (3n, 3n), optional
        P-RFO: eV/Å^2 over the free atoms, the start instead of an exact Hessian, e.g. a
        model's for a calculator whose Hessians are costly (a reference method).
    progress : bool
        A progress bar.

    Returns
    -------
    SaddleResult
    """
    if not fmax > 0 or not isinstance(steps, int) or steps < 0 or not 0 < trust <= max_trust:
        raise ValueError("refine_saddle needs fmax > 0 (eV/Å), steps >= 0 and 0 < trust <= max_trust (Å)")
    if method not in ("dimer", "prfo"):
        raise ValueError(f"method must be 'dimer' or 'prfo', not {method!r}")
    start = time.perf_counter()
    saddle = atoms.copy()
    attach_calculator(saddle, calc)
    sel = np.asarray(free_atoms(saddle))
    if sel.size == 0:
        raise ValueError("refine_saddle: every atom is fixed, nothing can move")
    if method == "dimer":
        history, n_exact = _dimer(saddle, sel, tangent, fmax, steps, progress), 0
    else:
        history, n_exact = _prfo(saddle, sel, tangent, fmax, steps, trust, max_trust, refresh, hessian_method,
                                 initial_hessian, progress)
    forces = saddle.get_forces(apply_constraint=False)[sel]
    final = _fmax(forces)
    vib = hessian(saddle, saddle.calc, indices=sel, method=hessian_method)
    return SaddleResult(atoms=saddle, energy=float(saddle.get_potential_energy()), converged=final <= fmax,
                        steps=len(history) - 1, fmax=final, hessians=n_exact, vibrations=vib,
                        imaginary=imaginary_frequencies(vib, threshold), mode=_mode_vector(vib),
                        threshold=threshold, history=history, seconds=time.perf_counter() - start)


def _bar(steps: int, name: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"refine saddle ({name})", file=sys.stdout, leave=False, mininterval=0.2,
                disable=not progress)


def _dimer(saddle: Atoms, sel: np.ndarray, tangent, fmax: float, steps: int, progress: bool) -> list[float]:
    """ASE's dimer method in place on ``saddle``; the largest force at every step."""
    from ase.mep import DimerControl, MinModeAtoms, MinModeTranslate

    mask = np.zeros(len(saddle), dtype=bool)
    mask[sel] = True
    control = DimerControl(initial_eigenmode_method="displacement", displacement_method="vector", logfile=None,
                           mask=mask.tolist())
    dimer = MinModeAtoms(saddle, control)
    if tangent is None:
        tangent = np.random.default_rng(0).normal(size=(len(saddle), 3))
    direction = np.where(mask[:, None], np.asarray(tangent, dtype=float), 0.0)
    norm = np.linalg.norm(direction)
    if norm == 0:
        raise ValueError("the tangent is zero on every free atom")
    dimer.displace(displacement_vector=0.01 * direction / norm, mask=mask.tolist())
    opt = MinModeTranslate(dimer, logfile=None, trajectory=None)
    history = [_fmax(saddle.get_forces(apply_constraint=False)[sel])]
    bar = _bar(steps, "dimer", progress)

    def observe():
        history.append(_fmax(saddle.get_forces(apply_constraint=False)[sel]))
        bar.update(1)
        bar.set_postfix(E=f"{saddle.get_potential_energy():.4f} eV", fmax=f"{history[-1]:.4f}")

    opt.attach(observe)
    # the dimer stops on its own forces (the true ones with the component along the mode
    # reversed), whose per-atom norms differ slightly from the true ones: tighten its target
    # until the true forces meet fmax
    target = fmax
    try:
        for _ in range(5):
            if history[-1] <= fmax or len(history) > steps:
                break
            opt.run(fmax=target, steps=steps + 1 - len(history))
            target *= 0.7
    finally:
        bar.close()
    return history


def _prfo(saddle: Atoms, sel: np.ndarray, tangent, fmax: float, steps: int, trust: float, max_trust: float,
          refresh: bool, hessian_method: str, initial_hessian, progress: bool) -> tuple[list[float], int]:
    """P-RFO in place on ``saddle``; the largest force at every step and the number of
    exact Hessians taken."""

    def exact() -> np.ndarray:
        return hessian(saddle, saddle.calc, indices=sel, method=hessian_method).get_hessian_2d()

    def gradient() -> tuple[float, np.ndarray]:
        forces = saddle.get_forces(apply_constraint=False)[sel]
        return float(saddle.get_potential_energy()), -forces.reshape(-1)

    if initial_hessian is not None:
        h, n_exact = np.asarray(initial_hessian, dtype=float), 0
        if h.shape != (3 * len(sel), 3 * len(sel)):
            raise ValueError(f"initial_hessian must be ({3 * len(sel)}, {3 * len(sel)}) over the free atoms, "
                             f"got {h.shape}")
    else:
        h, n_exact = exact(), 1
    energy, g = gradient()
    follow = None if tangent is None else np.asarray(tangent, dtype=float)[sel].reshape(-1)
    history = [_fmax(g)]
    bar = _bar(steps, "P-RFO", progress)
    try:
        while history[-1] > fmax and len(history) <= steps:
            dx, follow = _prfo_step(h, g, follow)
            largest = _largest_atomic(dx)
            if largest > trust:
                dx *= trust / largest
            predicted = g @ dx + 0.5 * dx @ h @ dx
            positions = saddle.get_positions()
            positions[sel] += dx.reshape(-1, 3)
            saddle.set_positions(positions, apply_constraint=False)
            new_energy, new_g = gradient()
            ratio = (new_energy - energy) / predicted if abs(predicted) > 1e-10 else 1.0
            if 0.5 < ratio < 2.0 and largest >= trust:
                trust = min(2.0 * trust, max_trust)
            elif not 0.25 < ratio < 4.0:
                trust = max(0.5 * trust, 0.01)
            h = _bofill(h, dx, new_g - g)
            energy, g = new_energy, new_g
            history.append(_fmax(g))
            if refresh and history[-1] > fmax and int((np.linalg.eigvalsh(h) < 0).sum()) != 1:
                h, n_exact = exact(), n_exact + 1
            bar.update(1)
            bar.set_postfix(E=f"{energy:.4f} eV", fmax=f"{history[-1]:.4f}", trust=f"{trust:.2f}")
    finally:
        bar.close()
    return history, n_exact


def displacement(a: Atoms, b: Atoms) -> np.ndarray:
    """Å, (N, 3): how far each atom goes from ``a`` to ``b``, with the minimum-image
    convention of ``a``'s cell where it is periodic."""
    d = b.positions - a.positions
    if a.pbc.any():
        d, _ = find_mic(d, a.cell, a.pbc)
    return d


def rmsd(a: Atoms, b: Atoms, indices: Sequence[int] | None = None) -> float:
    """Å, the root-mean-square distance between two structures of the same atoms over
    ``indices`` (default: the free atoms of ``a``), with the minimum-image convention."""
    if len(a) != len(b) or (a.numbers != b.numbers).any():
        raise ValueError("rmsd needs two structures of the same atoms in the same order")
    sel = free_atoms(a) if indices is None else list(indices)
    d = displacement(a, b)[sel]
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
