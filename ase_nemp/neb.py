"""Reaction paths with ASE's NEB: one protocol, used by ``nemp demo`` and ``nemp learn``.

:func:`run_neb` relaxes the two end points (BFGS), interpolates the band (IDPP by
default), optimises it (FIRE by default) as a plain band until its largest force is below
``climb_fmax`` and then with a climbing image down to ``fmax``. With a committee
calculator it also returns the uncertainty of every image and of the barrier: the spread
over the members of ``E_m(image) - E_m(initial state)``, so that errors the members share
cancel as they do in the barrier itself.

Everything is plain ASE (``ase.mep.NEB``, ``ase.optimize``), so the band, the
constraints and ``NEBTools`` behave as documented there.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .uncertainty import interval

__all__ = ["NEBProtocol", "BatchedNEB", "run_neb", "optimise_band", "relax", "band_uncertainties", "make_optimizer",
           "StopExploration"]


class StopExploration(Exception):
    """Raised by an observer to end a run early (e.g. the band left the model's data)."""


@dataclass(frozen=True)
class NEBProtocol:
    """How a band is built and optimised. The defaults are the protocol of ``nemp demo``.

    With the reference potential itself as the calculator, this protocol brings the demo's
    band to a largest NEB force of 0.052 eV/Å in 879 steps (barrier 1.42 eV); FIRE in its
    place still had 0.56 eV/Å after 1500 steps, its climbing image stuck between the
    transition state and the bent CO2 intermediate.

    Attributes
    ----------
    images : int
        Images of the band, end points included (>= 3).
    fmax : float
        eV/Å: convergence of the climbing band (largest NEB force on a moving image).
    steps : int
        Optimiser steps for the band at most (plain and climbing together).
    relax_fmax, relax_steps : float, int
        BFGS relaxation of the end points (eV/Å, steps); ``relax_steps: 0`` keeps them.
    interpolation : {"idpp", "linear"}
        Initial band (with the minimum-image convention).
    method : str
        ASE's tangent: ``"improvedtangent"`` (Henkelman and Jónsson 2000), ``"aseneb"``...
    spring : float
        Spring constant between images, eV/Å^2.
    climb : bool
        Switch the highest image to climbing once the plain band is below ``climb_fmax``.
    climb_fmax : float
        eV/Å; the plain band also stops after ``steps // 3`` steps.
    optimizer : {"FIRE", "BFGS", "MDMin", "ODE"}
        ASE optimizer for the band; ``"ODE"`` is ASE's ``NEBOptimizer`` (adaptive ODE
        integration of the band, Makri, Ortner and Kermode 2019). Where the ODE
        integrator gives up before ``steps`` (its step size collapses), FIRE takes the
        remaining steps.
    maxstep : float
        Å, the optimizer's largest step per iteration (not used by ODE).
    batched : bool
        Evaluate all moving images in one model call per step (:class:`BatchedNEB`) when
        the calculator is an :class:`~ase_nemp.NEMPCalculator`; the band is the same as
        with one call per image.
    workers : int
        Without batching: moving images evaluated concurrently, each on one CPU thread
        (their calculators are separate, and the model's kernels release the GIL); 1
        evaluates them one after another with torch's own thread setting.
    """

    images: int = 7
    fmax: float = 0.05
    steps: int = 1000
    relax_fmax: float = 0.05
    relax_steps: int = 300
    interpolation: str = "idpp"
    method: str = "improvedtangent"
    spring: float = 0.1
    climb: bool = True
    climb_fmax: float = 0.5
    optimizer: str = "ODE"
    maxstep: float = 0.2
    batched: bool = True
    workers: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.images, int) or self.images < 3:
            problems.append(f"images must be a whole number >= 3 (end points included), got {self.images!r}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf
                   for x in (self.fmax, self.climb_fmax, self.relax_fmax)):
            problems.append("fmax, climb_fmax and relax_fmax must be finite and positive (eV/Å)")
        if not isinstance(self.steps, int) or self.steps < 1 or not isinstance(self.relax_steps, int) or self.relax_steps < 0:
            problems.append("steps must be >= 1 and relax_steps >= 0")
        if self.interpolation not in ("idpp", "linear"):
            problems.append(f"interpolation must be 'idpp' or 'linear', not {self.interpolation!r}")
        if self.optimizer not in _OPTIMIZERS:
            problems.append(f"optimizer must be one of {sorted(_OPTIMIZERS)}, not {self.optimizer!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            problems.append(f"workers must be a whole number >= 1, got {self.workers!r}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf
                   for x in (self.spring, self.maxstep)):
            problems.append("spring and maxstep must be finite and positive")
        if problems:
            raise ValueError("invalid NEB protocol: " + "; ".join(problems))

    def replace(self, **changes: Any) -> "NEBProtocol":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: dict, images: int) -> "NEBProtocol":
        """The protocol of a settings mapping (an exploration's), its other keys ignored."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"images"}
        return cls(images=images, **{k: v for k, v in settings.items() if k in fields})


def _same_potential(calc, other) -> bool:
    """Whether ``other`` is an NEMPCalculator of the same model as ``calc``: the same
    object, or a copy with the same configuration and parameters."""
    import torch

    from .calculator import NEMPCalculator

    if not isinstance(other, NEMPCalculator):
        return False
    if other.model is calc.model:
        return True
    mine, theirs = calc.model.state_dict(), other.model.state_dict()
    if type(other.model) is not type(calc.model) or calc.model.config != other.model.config or mine.keys() != theirs.keys():
        return False
    return all(torch.equal(mine[k].cpu().to(theirs[k].dtype), theirs[k].cpu()) for k in mine)


def __getattr__(name: str):
    # BatchedNEB subclasses ase.mep.NEB; its module is imported on first use so that
    # importing ase_nemp stays light
    if name == "BatchedNEB":
        from .batched_neb import BatchedNEB

        return BatchedNEB
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parallel_neb(images, workers: int, **kwargs):
    """ASE's ``NEB`` whose moving images are computed by ``workers`` threads before ASE
    reads their (then cached) results; with ``workers == 1`` the plain ``NEB``."""
    from ase.mep import NEB

    if workers <= 1:
        return NEB(images, **kwargs)

    class ParallelImagesNEB(NEB):
        def get_forces(self):
            list(self._pool.map(lambda im: im.get_forces(), self.images[1:-1]))
            return super().get_forces()

    neb = ParallelImagesNEB(images, **kwargs)
    from concurrent.futures import ThreadPoolExecutor

    neb._pool = ThreadPoolExecutor(workers, thread_name_prefix="nemp-neb")
    return neb


def make_optimizer(neb, protocol: "NEBProtocol"):
    """The band optimizer a protocol names (no log file)."""
    return _optimizer(neb, protocol.optimizer, protocol.maxstep)


def _optimizer(neb, name: str, maxstep: float):
    if name == "ODE":
        from ase.mep.neb import NEBOptimizer

        return NEBOptimizer(neb, logfile=None, method="ode")
    from ase import optimize

    return getattr(optimize, name)(neb, logfile=None, maxstep=maxstep)


_OPTIMIZERS = ("FIRE", "BFGS", "MDMin", "ODE")


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stdout, mininterval=0.2, disable=not progress)


def relax(atoms, calc, fmax: float = 0.05, steps: int = 300, label: str = "relax", progress: bool = True,
          observer: Callable | None = None) -> tuple[float, int, bool]:
    """BFGS relaxation of ``atoms`` (constraints respected) with a progress bar.

    ``observer(atoms, step)`` runs after every step. Returns ``(energy, steps, converged)``.
    """
    from ase.optimize import BFGS

    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    bar = _bar(steps + 1, label, progress)

    def update():
        f = atoms.get_forces(apply_constraint=True)
        bar.update(1)
        bar.set_postfix(E=f"{atoms.get_potential_energy():.4f} eV", fmax=f"{np.sqrt((f ** 2).sum(1).max()):.3f}")
        if observer is not None:
            observer(atoms, opt.nsteps)

    opt.attach(update)
    try:
        converged = opt.run(fmax=fmax, steps=steps) if steps > 0 else True
    finally:
        bar.close()
    return atoms.get_potential_energy(), opt.nsteps, bool(converged)


def band_uncertainties(images) -> dict[str, np.ndarray] | None:
    """Per image: ``energy`` (relative to image 0, eV), and for a committee calculator
    ``energy_uncertainty`` (spread of the members' relative energies, eV) and
    ``forces_uncertainty`` (largest atomic force spread, eV/Å), and for a calibrated
    committee ``energy_interval`` (eV, the calibrated interval of each relative energy at the
    calculator's ``interval_level``). None entries when the images' calculators are not
    committees."""
    energies = np.array([im.get_potential_energy() for im in images])
    out = {"energy": energies - energies[0]}
    results = [getattr(im.calc, "results", {}) for im in images]
    if all("committee_energy" in r for r in results):
        members = np.stack([r["committee_energy"] for r in results])  # (images, M)
        relative = members - members[:1]
        out["energy_uncertainty"] = relative.std(axis=1, ddof=1)
        out["forces_uncertainty"] = np.array([float(np.max(r["forces_uncertainty"])) for r in results])
        out["member_energies"] = relative
        radius = interval(images[-1].calc, out["energy_uncertainty"])
        if radius is not None:
            out["energy_interval"] = radius
    return out


def run_neb(initial, final, calculator_factory: Callable[[], Any], protocol: NEBProtocol = NEBProtocol(),
            observer: Callable | None = None, progress: bool = True) -> dict:
    """Relax the end points, build and optimise a climbing-image band.

    Parameters
    ----------
    initial, final : ase.Atoms
        End points (same atoms in the same order; constraints are kept). They are
        relaxed in place unless ``protocol.relax_steps`` is 0.
    calculator_factory : callable
        Returns a fresh calculator; each image gets its own, so each keeps its own
        neighbour list.
    protocol : NEBProtocol
    observer : callable, optional
        ``observer(images, step)`` after every band step; may raise :class:`StopExploration`.

    Returns
    -------
    dict with ``images``, ``energies`` (eV), ``barrier`` and ``reaction_energy`` (eV,
    relative to the initial state), ``converged``, ``neb_steps``, ``fmax`` (the final
    largest NEB force, eV/Å), ``relax_steps``, ``E_initial``, ``E_final``, ``seconds``,
    ``seconds_relax``, ``neb``, and for committees ``energy_uncertainty`` (per image),
    ``forces_uncertainty`` (per image), ``barrier_uncertainty`` (eV) and ``peak`` (index
    of the highest image); for a calibrated committee also ``energy_interval`` (per image)
    and ``barrier_interval`` (eV, the calibrated interval of the barrier).
    """
    p = protocol
    t0 = time.perf_counter()
    e_is, n_is, _ = relax(initial, calculator_factory(), p.relax_fmax, p.relax_steps, "relax initial state", progress)
    e_fs, n_fs, _ = relax(final, calculator_factory(), p.relax_fmax, p.relax_steps, "relax final state", progress)
    t_relax = time.perf_counter() - t0

    images = [initial] + [initial.copy() for _ in range(p.images - 2)] + [final]
    result = optimise_band(images, calculator_factory, p, observer, progress, interpolate=True)
    result.update(E_initial=e_is, E_final=e_fs, relax_steps=(n_is, n_fs), seconds=time.perf_counter() - t0,
                  seconds_relax=t_relax)
    return result


def optimise_band(images: list, calculator_factory: Callable[[], Any], protocol: NEBProtocol = NEBProtocol(),
                  observer: Callable | None = None, progress: bool = True, interpolate: bool = False) -> dict:
    """Optimise a band as :func:`run_neb` does (plain, then climbing), from ``images`` as
    they are (or interpolated between the end points with ``interpolate``); the end points
    are not moved. Returns :func:`run_neb`'s dict without the relaxation entries."""
    import torch

    from .calculator import NEMPCalculator

    p = protocol
    t0 = time.perf_counter()
    for end in (images[0], images[-1]):
        if end.calc is None:
            end.calc = calculator_factory()
    calc = calculator_factory()
    workers = 1
    if p.batched and isinstance(calc, NEMPCalculator):
        from .batched_neb import BatchedNEB

        neb = BatchedNEB(images, calc, k=p.spring, climb=False, method=p.method)
    else:
        for image in images[1:-1]:
            image.calc = calculator_factory()
        workers = p.workers
        neb = parallel_neb(images, workers, k=p.spring, climb=False, method=p.method)
    if interpolate:
        neb.interpolate(method=p.interpolation, mic=True)
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)  # one thread per image; restored below
    opt = make_optimizer(neb, p)
    bar = _bar(p.steps + 2, f"NEB ({len(images)} images)", progress)
    state = {"fmax": np.inf}

    def update():
        energies = [im.get_potential_energy() for im in images]
        state["fmax"] = float(np.sqrt((neb.get_forces() ** 2).sum(axis=1).max()))
        bar.update(1)
        bar.set_postfix(barrier=f"{max(energies) - energies[0]:.3f} eV", fmax=f"{state['fmax']:.3f}",
                        climb="on" if neb.climb else "off")
        if observer is not None:
            observer(images, opt.nsteps)

    opt.attach(update)
    # ASE's optimizers stop on the largest atomic force (a vector norm), NEBOptimizer on the
    # largest component: ask the latter for fmax / sqrt(3), so that both meet the same
    # criterion, judged below on the norm
    scale = 1.0 / np.sqrt(3.0) if p.optimizer == "ODE" else 1.0
    stopped, taken = None, 0
    try:
        if p.climb:
            opt.run(fmax=max(p.climb_fmax, p.fmax) * scale, steps=max(p.steps // 3, 1))
            neb.climb = True
        opt.run(fmax=p.fmax * scale, steps=p.steps - opt.nsteps)
        if p.optimizer == "ODE" and state["fmax"] > p.fmax and opt.nsteps < p.steps:
            # the ODE integrator gives up where its step size collapses (seen on the flat path of
            # a CO2 leaving the surface, 0.07 eV/Å after 84 steps): FIRE goes on for the rest
            taken, opt = opt.nsteps, _optimizer(neb, "FIRE", p.maxstep)
            opt.attach(update)
            opt.run(fmax=p.fmax, steps=p.steps - taken)
    except StopExploration as err:
        stopped = str(err) or "stopped by the observer"
    finally:
        bar.close()
        torch.set_num_threads(threads)
        if workers > 1:
            neb._pool.shutdown()
    converged = state["fmax"] <= p.fmax * (1 + 1e-9)
    band = band_uncertainties(images)
    energies = band["energy"] + images[0].get_potential_energy()
    peak = int(np.argmax(band["energy"]))
    result = {
        "images": images, "neb": neb, "energies": energies, "E_initial": energies[0], "E_final": energies[-1],
        "barrier": float(band["energy"][peak]), "reaction_energy": float(band["energy"][-1]), "peak": peak,
        "converged": converged and stopped is None, "stopped": stopped, "neb_steps": taken + opt.nsteps,
        "fmax": state["fmax"], "relax_steps": (0, 0), "seconds": time.perf_counter() - t0, "seconds_relax": 0.0,
        "protocol": p,
    }
    if "energy_uncertainty" in band:
        result.update(energy_uncertainty=band["energy_uncertainty"], forces_uncertainty=band["forces_uncertainty"],
                      barrier_uncertainty=float(band["energy_uncertainty"][peak]),
                      member_energies=band["member_energies"])
    if "energy_interval" in band:
        result.update(energy_interval=band["energy_interval"], barrier_interval=float(band["energy_interval"][peak]))
    return result
