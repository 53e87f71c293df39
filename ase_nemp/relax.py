"""Many relaxations at once: ASE's optimizers stepping in lockstep, one model call per step.

Adsorption studies relax hundreds of small structures (tens of atoms each); for such a
system one model call is mostly fixed cost. :func:`relax_many` gives every structure
its own instance of an ASE optimizer class (``BFGS``, ``FIRE``, ``LBFGS``...), and at
each step evaluates all unconverged structures together
(:meth:`NEMPCalculator.calculate_batch`) before every optimizer takes its step from
those results. Each structure follows exactly the path its optimizer would follow with
``opt.run(fmax, steps)`` on its own (the same steps, to round-off), and stops at its own
convergence; constraints act as in ASE.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["relax_many", "RelaxResult"]


@dataclass
class RelaxResult:
    """Outcome of one structure's relaxation: ``energy`` (eV), optimizer ``steps``, whether
    it ``converged`` and its largest remaining atomic force ``fmax`` (eV/Å, constraints
    applied)."""

    energy: float
    steps: int
    converged: bool
    fmax: float


def _optimizer_class(optimizer: str | type):
    if not isinstance(optimizer, str):
        return optimizer
    from ase import optimize

    cls = getattr(optimize, optimizer, None)
    if not (isinstance(cls, type) and hasattr(cls, "step")):
        raise ValueError(f"unknown ASE optimizer {optimizer!r}; try BFGS, LBFGS, FIRE, BFGSLineSearch or MDMin")
    return cls


def relax_many(
    structures: Sequence[Any],
    calculator,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str | type = "BFGS",
    max_atoms: int = 4096,
    progress: bool = True,
    **optimizer_kwargs: Any,
) -> list[RelaxResult]:
    """Relax ``structures`` in place, all unconverged ones evaluated in one call per step.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Any sizes, cells, periodicity and constraints; relaxed in place. Each gets a
        calculator sharing ``calculator``'s model (:meth:`NEMPCalculator.sibling`).
    calculator : NEMPCalculator
    fmax : float
        Convergence: largest atomic force below this (eV/Å), per structure.
    steps : int
        Optimizer steps per structure at most.
    optimizer : str or ASE optimizer class
        ``"BFGS"`` (default), ``"LBFGS"``, ``"FIRE"``... one instance per structure.
    max_atoms : int
        Atoms per model call at most (larger batches are split).
    progress : bool
        A progress bar counting the structures that are done.
    **optimizer_kwargs
        Passed to every optimizer (e.g. ``maxstep``).

    Returns
    -------
    list of :class:`RelaxResult`, in the order of ``structures``.
    """
    from tqdm.auto import tqdm

    from .calculator import NEMPCalculator

    if not isinstance(calculator, NEMPCalculator):
        raise TypeError(f"relax_many needs an NEMPCalculator, not {type(calculator).__name__}")
    if not fmax > 0 or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"need fmax > 0 (eV/Å) and a whole number of steps >= 0, got fmax={fmax!r}, steps={steps!r}")
    cls = _optimizer_class(optimizer)
    structures = list(structures)
    for atoms in structures:
        calculator._sibling_for(atoms)
    optimizers = []
    for atoms in structures:
        opt = cls(atoms, logfile=None, **optimizer_kwargs)
        opt.fmax = fmax  # what opt.run(fmax) would set; opt.converged() reads it
        optimizers.append(opt)
    active = list(range(len(structures)))
    converged = [False] * len(structures)
    bar = tqdm(total=len(structures), desc=f"relax {len(structures)} structures", file=sys.stdout,
               mininterval=0.2, disable=not progress)
    start, step = time.perf_counter(), 0
    try:
        while active:
            # the sequence of opt.run: forces at the current positions, a convergence check,
            # then a step; here the forces of all structures still running come from one call
            calculator.calculate_batch([structures[k] for k in active], ("energy", "forces"), max_atoms)
            running = []
            for k in active:
                opt = optimizers[k]
                if opt.converged():
                    converged[k] = True
                elif opt.nsteps < steps:
                    opt.step()
                    opt.nsteps += 1
                    opt.call_observers()
                    running.append(k)
            bar.update(len(active) - len(running))
            active, step = running, step + 1
            bar.set_postfix(step=step, converged=sum(converged), running=len(active))
    finally:
        bar.close()
    results = []
    for atoms, opt, done in zip(structures, optimizers, converged):
        f = atoms.get_forces()  # constraints applied
        results.append(RelaxResult(float(atoms.get_potential_energy()), opt.nsteps, done,
                                   float(np.sqrt((f**2).sum(axis=1).max())) if len(atoms) else 0.0))
    if progress:
        print(f"relaxed {sum(converged)} of {len(structures)} structures to fmax {fmax} eV/Å in "
              f"{time.perf_counter() - start:.1f} s ({step} batched steps)")
    return results
