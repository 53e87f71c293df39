"""Many relaxations at once: ASE's optimizers stepping in lockstep, one model call per step.

Adsorption studies relax hundreds of small structures (tens of atoms each); for such a
system one model call is mostly fixed cost. :func:`relax_many` gives every structure
its own instance of an ASE optimizer class (``BFGS``, ``FIRE``, ``LBFGS``...), and at
each step evaluates all unconverged structures together
(:meth:`NEMPCalculator.calculate_batch`) before every optimizer takes its step from
those results. Each structure follows exactly the path its optimizer would follow with
``opt.run(fmax, steps)`` on its own (the same steps, to round-off), and stops at its own
convergence; constraints act as in ASE.

With a committee, every structure whose final force or energy spread lies above the
model's confidence thresholds (:func:`ase_nemp.uncertainty.model_confidence`) says so in
its result (``doubt``) and in a warning: a relaxation may end in a false minimum where
the model has never seen data. Ctrl-C or SIGTERM stops after the current step and raises
:class:`RelaxInterrupted`, which carries every structure's result so far.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["relax_many", "RelaxResult", "RelaxInterrupted", "OPTIMIZERS"]

# ASE optimizers that take one step at a time from the forces of the current positions (the
# line-search ones evaluate more points inside a step, one structure at a time); ODE12r has
# no single-step interface and CellAwareBFGS needs a cell filter
OPTIMIZERS = ("BFGS", "LBFGS", "FIRE", "FIRE2", "MDMin", "QuasiNewton", "GoodOldQuasiNewton", "RFO", "GPMin",
              "BFGSLineSearch", "LBFGSLineSearch")


@dataclass
class RelaxResult:
    """Outcome of one structure's relaxation: ``energy`` (eV), optimizer ``steps``, whether
    it ``converged``, its largest remaining atomic force ``fmax`` (eV/Å, constraints
    applied), and for a committee the final ``energy_uncertainty`` (eV), largest
    ``forces_uncertainty`` (eV/Å) and ``doubt``: why the structure lies outside the model's
    confidence, in words (None where it does not)."""

    energy: float
    steps: int
    converged: bool
    fmax: float
    energy_uncertainty: float | None = None
    forces_uncertainty: float | None = None
    doubt: str | None = None
    stopped: str | None = None


class RelaxInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM during :func:`relax_many`; ``results`` holds every structure's
    result at the step it reached (the structures themselves are where they were)."""

    def __init__(self, message: str, results: list[RelaxResult]) -> None:
        super().__init__(message)
        self.results = results


def _optimizer_class(optimizer: str | type):
    if not isinstance(optimizer, str):
        if not (isinstance(optimizer, type) and hasattr(optimizer, "step")):
            raise TypeError(f"optimizer must be an ASE optimizer class or one of {list(OPTIMIZERS)}, "
                            f"not {optimizer!r}")
        return optimizer
    from ase import optimize

    cls = getattr(optimize, optimizer, None)
    if optimizer not in OPTIMIZERS or not isinstance(cls, type):
        why = {"ODE12r": " (it has no single-step interface)",
               "CellAwareBFGS": " (it needs a cell filter)"}.get(optimizer, "")
        raise ValueError(f"optimizer {optimizer!r} cannot relax structures in lockstep{why}; use one of "
                         f"{', '.join(OPTIMIZERS)}")
    return cls


def relax_many(
    structures: Sequence[Any],
    calculator,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str | type = "BFGS",
    max_atoms: int = 4096,
    progress: bool = True,
    observer=None,
    warn: bool = True,
    executor=None,
    per_job: int = 8,
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
    observer : callable, optional
        ``observer(index, atoms, step)`` for every structure each time it is evaluated (its
        results are current), before its step; raising :class:`~ase_nemp.neb.StopExploration`
        ends that structure's relaxation there (its result has ``stopped`` set), the others
        go on.
    warn : bool
        Warn when structures end outside the committee's confidence (their results say so
        either way); callers that report the doubts themselves pass False.
    executor : concurrent.futures.Executor, optional
        Relax on these workers instead of this process (:mod:`ase_nemp.jobs`: local
        processes, a Dask cluster...): ``per_job`` structures per job, relaxed in lockstep
        there. Each structure takes the same steps as here (to round-off) and its final
        positions and results come back into ``structures``; no ``observer`` then.
    per_job : int
        Structures per job on an ``executor``.
    **optimizer_kwargs
        Passed to every optimizer (e.g. ``maxstep``).

    Returns
    -------
    list of :class:`RelaxResult`, in the order of ``structures``.
    """
    from ase import Atoms
    from tqdm.auto import tqdm

    from .calculator import NEMPCalculator, check_max_atoms
    from .neb import StopExploration
    from .signals import deferred_stop
    from .uncertainty import doubt, model_confidence

    if not isinstance(calculator, NEMPCalculator):
        raise TypeError(f"relax_many needs an NEMPCalculator, not {type(calculator).__name__}")
    if isinstance(fmax, bool) or not isinstance(fmax, (int, float)) or not (math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"fmax must be a finite force > 0 (eV/Å), got {fmax!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    max_atoms = check_max_atoms(max_atoms)
    cls = _optimizer_class(optimizer)
    if isinstance(structures, Atoms):
        raise TypeError("relax_many takes a list of Atoms; for one structure pass [atoms]")
    structures = list(structures)
    seen: dict[int, int] = {}
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"structure {k} is a {type(atoms).__name__}, not an ase.Atoms")
        if id(atoms) in seen:
            raise ValueError(f"structures {seen[id(atoms)]} and {k} are one and the same Atoms object: it would be "
                             "driven by two optimizers at once; pass a copy (atoms.copy()) to relax it twice")
        seen[id(atoms)] = k
    if executor is not None:
        if observer is not None:
            raise ValueError("an observer runs in this process: relax without an executor to observe every step")
        if isinstance(per_job, bool) or not isinstance(per_job, int) or per_job < 1:
            raise ValueError(f"per_job must be a whole number >= 1, got {per_job!r}")
        settings = dict(fmax=fmax, steps=steps, optimizer=optimizer, max_atoms=max_atoms, **optimizer_kwargs)
        results = _relax_on(executor, structures, calculator, per_job, settings, progress)
        _warn_doubts(results, warn)
        return results
    for atoms in structures:
        calculator._sibling_for(atoms)
    optimizers = []
    for atoms in structures:
        opt = cls(atoms, logfile=None, **optimizer_kwargs)
        opt.fmax = fmax  # what opt.run(fmax) would set; opt.converged() reads it
        optimizers.append(opt)
    active = list(range(len(structures)))
    converged = [False] * len(structures)
    stopped: dict[int, str] = {}
    bar = tqdm(total=len(structures), desc=f"relax {len(structures)} structures", file=sys.stdout,
               mininterval=0.2, disable=not progress)
    start, step = time.perf_counter(), 0
    stop: list[int] = []
    with deferred_stop(stop.append):
        try:
            while active and not stop:
                # the sequence of opt.run: forces at the current positions, a convergence check,
                # then a step; here the forces of all structures still running come from one call
                calculator.calculate_batch([structures[k] for k in active], ("energy", "forces"), max_atoms)
                if observer is not None:  # each structure as just evaluated, before its step
                    for k in list(active):
                        try:
                            observer(k, structures[k], optimizers[k].nsteps)
                        except StopExploration as err:
                            stopped[k] = str(err) or "stopped by the observer"
                            active.remove(k)
                            bar.update(1)
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
    confidence = model_confidence(calculator.model)
    results = []
    for atoms, opt, done in zip(structures, optimizers, converged):
        f = atoms.get_forces()  # constraints applied; computed afresh where an interruption left a step half done
        r = atoms.calc.results
        spreads = {}
        if "energy_uncertainty" in r:
            spreads = dict(energy_uncertainty=float(r["energy_uncertainty"]),
                           forces_uncertainty=float(np.max(r["forces_uncertainty"])) if len(atoms) else 0.0)
        results.append(RelaxResult(float(atoms.get_potential_energy()), opt.nsteps, done,
                                   float(np.sqrt((f**2).sum(axis=1).max())) if len(atoms) else 0.0,
                                   doubt=doubt(r, confidence), stopped=stopped.get(len(results)), **spreads))
    if stop:
        raise RelaxInterrupted(f"stopped by signal {stop[0]} after {step} batched steps: {sum(converged)} of "
                               f"{len(structures)} structures had converged", results)
    _warn_doubts(results, warn)
    if progress:
        print(f"relaxed {sum(converged)} of {len(structures)} structures to fmax {fmax} eV/Å in "
              f"{time.perf_counter() - start:.1f} s ({step} batched steps)")
    return results


def _warn_doubts(results: list[RelaxResult], warn: bool) -> None:
    doubtful = [k for k, res in enumerate(results) if res.doubt]
    if doubtful and warn:
        warnings.warn(f"{len(doubtful)} of {len(results)} relaxed structures lie outside the model's confidence "
                      f"(structure {doubtful[0]}: {results[doubtful[0]].doubt}); their minima may be artefacts of "
                      "the model (see RelaxResult.doubt)", stacklevel=3)


def _relax_job(job) -> list[tuple[np.ndarray, dict, RelaxResult]]:
    """One job of :func:`relax_many` on a worker: relax its structures in lockstep and send
    back each one's positions, calculator results and outcome."""
    recipe, structures, settings = job
    results = relax_many(structures, recipe.build(), progress=False, warn=False, **settings)
    return [(atoms.positions.copy(), dict(atoms.calc.results), res) for atoms, res in zip(structures, results)]


def _relax_on(executor, structures: list, calculator, per_job: int, settings: dict,
              progress: bool) -> list[RelaxResult]:
    """:func:`relax_many` with jobs of ``per_job`` structures on ``executor``; the results
    are put back into ``structures`` (positions, and their calculators' results)."""
    from .jobs import run_jobs
    from .signals import deferred_stop

    recipe = calculator.recipe()
    groups = [list(range(k, min(k + per_job, len(structures)))) for k in range(0, len(structures), per_job)]
    jobs = [(recipe, [structures[k].copy() for k in group], settings) for group in groups]
    results: list[RelaxResult | None] = [None] * len(structures)
    start, stop = time.perf_counter(), []
    with deferred_stop(stop.append):
        outcomes = run_jobs(_relax_job, jobs, executor, progress=progress,
                            desc=f"relax {len(structures)} structures in {len(jobs)} jobs", stop=lambda: bool(stop))
    failed = [o for o in outcomes if not o.ok]
    for outcome in outcomes:
        if not outcome.ok:
            continue
        for k, (positions, calc_results, res) in zip(groups[outcome.index], outcome.value):
            atoms = structures[k]
            atoms.positions = positions
            calc = calculator._sibling_for(atoms)
            calc.atoms, calc.results = atoms.copy(), calc_results
            results[k] = res
    if failed:
        first = failed[0]
        message = (f"{len(failed)} of {len(jobs)} relaxation jobs failed (structures {groups[first.index][0]}-"
                   f"{groups[first.index][-1]}: {type(first.error).__name__}: {first.error}); the others are relaxed "
                   "in place")
        # bad input (an element the model lacks, say) stays a ValueError, as on the serial path
        raise (ValueError if all(isinstance(o.error, ValueError) for o in failed) else RuntimeError)(message)
    if stop:
        unfinished = [k for k, r in enumerate(results) if r is None]
        for k in unfinished:
            results[k] = RelaxResult(float("nan"), 0, False, float("nan"), stopped="interrupted before it ran")
        raise RelaxInterrupted(f"stopped by signal {stop[0]}: {len(unfinished)} of {len(structures)} structures "
                               "were not relaxed", results)
    if progress:
        print(f"relaxed {sum(r.converged for r in results)} of {len(structures)} structures to fmax "
              f"{settings['fmax']} eV/Å in {time.perf_counter() - start:.1f} s ({len(jobs)} jobs)")
    return results
