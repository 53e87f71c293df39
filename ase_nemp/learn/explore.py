"""Explorations with a committee: MD, relaxations, NEB bands and single points.

Every structure an exploration visits is checked against the committee's force
uncertainty (the largest ``forces_uncertainty`` over its atoms, eV/Å). Frames above the
selection threshold are kept as candidates for the teacher, together with the committee's
own prediction for them (so that its error can be measured once they are labelled).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from ase import Atoms

from ..calculator import NEMPCalculator
from ..neb import NEBProtocol, StopExploration, run_neb
from ..neb import relax as relax_structure

__all__ = ["Candidate", "Collector", "ExplorationReport", "explore", "nudged", "read_frames", "run_network"]


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during an exploration."""


@dataclass
class Candidate:
    """A visited frame above the threshold: positions, where it came from, what the committee said."""

    atoms: Atoms
    source: str
    uncertainty: float  # eV/Å, largest atomic force uncertainty
    energy_uncertainty: float  # eV
    energy: float  # eV, committee mean
    forces: np.ndarray  # eV/Å, committee mean


@dataclass
class ExplorationReport:
    """What one exploration met: frames evaluated, the largest uncertainty, its candidates."""

    name: str
    kind: str
    frames: int = 0
    max_uncertainty: float = 0.0
    max_source: str = ""
    stopped: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "frames": self.frames, "candidates": len(self.candidates),
                "max_uncertainty": self.max_uncertainty, "max_source": self.max_source, "stopped": self.stopped,
                "seconds": round(self.seconds, 1), **self.details}


class Collector:
    """Observes frames evaluated by a committee calculator (results already computed).

    ``threshold`` keeps candidates; ``stop_above`` raises :class:`StopExploration` so that
    an MD run or band that has left the data is not followed further; ``should_stop()``
    (Ctrl-C / SIGTERM) raises :class:`Interrupted`.
    """

    def __init__(self, report: ExplorationReport, threshold: float, stop_above: float,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.report, self.threshold, self.stop_above, self.should_stop = report, threshold, stop_above, should_stop

    def observe(self, atoms: Atoms, source: str) -> None:
        if self.should_stop():
            raise Interrupted()
        # cached when the dynamics already evaluated this geometry, computed otherwise
        unc = float(np.max(atoms.calc.get_property("forces_uncertainty", atoms)))
        results = atoms.calc.results
        rep = self.report
        rep.frames += 1
        if unc > rep.max_uncertainty:
            rep.max_uncertainty, rep.max_source = unc, source
        if unc > self.threshold:
            frame = Atoms(atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell.copy(), pbc=atoms.pbc.copy())
            frame.constraints = [c.copy() for c in atoms.constraints]
            rep.candidates.append(Candidate(frame, source, unc, float(results["energy_uncertainty"]),
                                            float(results["energy"]), np.array(results["forces"], copy=True)))
        if unc > self.stop_above:
            raise StopExploration(f"{source}: force uncertainty {unc:.2f} eV/Å above {self.stop_above:.2f}")


def read_frames(paths) -> list[tuple[str, Atoms]]:
    """``(label, atoms)`` for every structure of one or several files."""
    from pathlib import Path

    from ..files import read_structures

    out = []
    for path in paths if isinstance(paths, (list, tuple)) else [paths]:
        for k, atoms in enumerate(read_structures(path)):
            atoms.calc = None
            out.append((f"{Path(path).name}#{k}", atoms))
    return out


def _md(settings, factory, collector):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd

    rep = collector.report
    for label, start in read_frames(settings["structures"]):
        for temperature in settings["temperatures"]:
            atoms = start.copy()
            atoms.calc = factory()
            rng = np.random.default_rng([int(settings["seed"]), int(settings.get("round", 0))])
            if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
                vd.thermalize_momenta(atoms, float(temperature), rng=rng)
            else:
                vd.MaxwellBoltzmannDistribution(atoms, temperature_K=float(temperature), rng=rng)
            vd.Stationary(atoms)
            dyn = Langevin(atoms, float(settings["timestep"]) * units.fs, temperature_K=float(temperature),
                           friction=float(settings["friction"]) / units.fs, fixcm=False, rng=rng)
            interval = int(settings["interval"])
            tag = f"md:{label}:{temperature:g}K"
            dyn.attach(lambda: collector.observe(atoms, f"{tag}:step{dyn.nsteps}"), interval=interval)
            try:
                dyn.run(int(settings["steps"]))
            except StopExploration as err:
                rep.stopped.append(str(err))


def _relax(settings, factory, collector):
    rep = collector.report
    for label, start in read_frames(settings["structures"]):
        atoms = start.copy()
        try:
            relax_structure(atoms, factory(), float(settings["fmax"]), int(settings["steps"]), f"relax {label}",
                            progress=False, observer=lambda a, step: collector.observe(a, f"relax:{label}:step{step}"))
        except StopExploration as err:
            rep.stopped.append(str(err))


def _structures(settings, factory, collector):
    calc = factory()
    for label, atoms in read_frames(settings["structures"]):
        atoms.calc = calc
        atoms.get_forces()
        try:
            collector.observe(atoms, f"single:{label}")
        except StopExploration:
            pass  # single points are no trajectory: a frame far from the data stops nothing after it


def _neb(settings, factory, collector, progress):
    from ..files import read_structures

    rep = collector.report
    initial, final = read_structures(settings["initial"])[0], read_structures(settings["final"])[0]
    for n in settings["images"]:
        is_, fs_ = initial.copy(), final.copy()

        def observer(images, step, n=n):
            for k, image in enumerate(images[1:-1], start=1):
                collector.observe(image, f"neb{n}:image{k}:step{step}")

        res = run_neb(is_, fs_, factory, NEBProtocol.from_settings(settings, int(n)), observer=observer,
                      progress=progress)
        if res["stopped"]:
            rep.stopped.append(res["stopped"])
        rep.details[f"neb{n}"] = {"barrier_eV": res["barrier"], "converged": res["converged"],
                                  "steps": res["neb_steps"], "fmax": res["fmax"],
                                  "barrier_uncertainty_eV": res.get("barrier_uncertainty")}


def nudged(atoms: Atoms, name: str, n_slab: int, nudge: float = 0.05) -> Atoms:
    """A copy of a network structure whose adsorbate atoms (after the first ``n_slab``) are
    moved sideways by up to ``nudge`` Å, seeded by the structure's ``name`` (the same name
    always gets the same move): an adsorbate placed on a saddle of the surface (a bridge,
    often a top site) then slides off it instead of staying there by symmetry."""
    atoms = atoms.copy()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    atoms.positions[n_slab:, :2] += rng.uniform(-nudge, nudge, size=(len(atoms) - n_slab, 2))
    return atoms


def run_network(network, slab: Atoms, factory: Callable, protocol: NEBProtocol, fmax: float = 0.05,
                steps: int = 200, observe: Callable | None = None, groups=None, progress: bool = False,
                nudge: float = 0.05, log: Callable[[str], None] = lambda line: None) -> dict:
    """Relax every structure of a :class:`~ase_nemp.sites.Network` and optimise a band for
    every path whose ends relaxed to two different minima (once per pair of minima).

    ``factory()`` gives a calculator (a committee, or any ASE calculator such as a reference
    potential); ``protocol`` is the bands' :class:`~ase_nemp.neb.NEBProtocol` (its end-point
    relaxation is not used: the ends are the relaxed structures). ``observe(atoms, source)``
    sees every relaxation step and every image of every band step and may raise
    :class:`StopExploration`, which ends that relaxation or band only. ``groups`` limits the
    structures (and the paths between them) to those groups. Before relaxing, the adsorbate
    atoms are moved sideways by up to ``nudge`` Å (:func:`nudged`).

    Returns ``{"minima": {name: {"energy", "key", "converged", "atoms"}}, "paths": {name:
    {...}}}``; a path's entry has ``"skipped"`` (why) or the band's ``barrier``, ``reaction_energy``
    (eV), ``converged``, ``steps``, ``fmax``, ``energies`` and ``images``.
    """
    from ..neb import optimise_band
    from ..sites import find_sites, minimum_key

    sites = find_sites(slab)
    wanted = set(network.structures) if groups is None else {n for g in groups for n in network.groups[g]}
    minima: dict[str, dict] = {}
    names = [n for n in network.structures if n in wanted]
    starts = [nudged(network.structures[name], name, len(slab), nudge) for name in names]
    calc = factory()
    if isinstance(calc, NEMPCalculator):  # all relaxations in lockstep, one model call per step
        from ..relax import relax_many

        hook = None if observe is None else (lambda k, a, step: observe(a, f"relax:{names[k]}:step{step}"))
        # the committee's doubts are what the exploration collects: no warning about them
        results = relax_many(starts, calc, fmax, steps, progress=progress, observer=hook, warn=False)
        outcome = [(r.energy, r.steps, r.converged, r.stopped) for r in results]
    else:
        outcome = []
        for name, atoms in zip(names, starts):
            hook = None if observe is None else (lambda a, step, name=name: observe(a, f"relax:{name}:step{step}"))
            try:
                outcome.append((*relax_structure(atoms, factory(), fmax, steps, f"relax {name}", progress=False,
                                                 observer=hook), None))
            except StopExploration as err:
                outcome.append((None, None, False, str(err)))
    for name, atoms, (energy, n_steps, converged, stopped) in zip(names, starts, outcome):
        if stopped:
            minima[name] = {"stopped": stopped}
            log(f"  {name}: stopped ({stopped})")
            continue
        atoms.calc = None
        minima[name] = {"energy": float(energy), "key": minimum_key(atoms, slab, sites), "converged": converged,
                        "steps": n_steps, "atoms": atoms}
    paths: dict[str, dict] = {}
    seen: dict[frozenset, str] = {}
    for name, (first, last) in network.paths.items():
        if first not in wanted or last not in wanted:
            continue
        a, b = minima.get(first, {}), minima.get(last, {})
        if "key" not in a or "key" not in b:
            paths[name] = {"skipped": "an end point's relaxation was stopped"}
            continue
        if a["key"] == b["key"]:
            paths[name] = {"skipped": f"both ends relax to the same minimum {a['key']}"}
            continue
        pair = frozenset((a["key"], b["key"]))
        if pair in seen:
            paths[name] = {"skipped": f"the same minima as {seen[pair]}"}
            continue
        seen[pair] = name
        images = [a["atoms"].copy()] + [a["atoms"].copy() for _ in range(protocol.images - 2)] + [b["atoms"].copy()]
        hook = None
        if observe is not None:
            def hook(band, step, name=name):
                for k, image in enumerate(band[1:-1], start=1):
                    observe(image, f"neb:{name}:image{k}:step{step}")
        result = optimise_band(images, factory, protocol, hook, progress, interpolate=True)
        paths[name] = {key: result[key] for key in ("barrier", "reaction_energy", "converged", "stopped", "fmax",
                                                    "energies", "images")}
        paths[name]["steps"] = result["neb_steps"]
        log(f"  {name}: barrier {result['barrier']:.3f} eV, converged {result['converged']}")
    return {"minima": minima, "paths": paths}


def _network(settings, factory, collector, progress):
    from ..sites import co_oxidation_network
    from ..files import read_structures

    protocol = NEBProtocol.from_settings(settings, int(settings["images"][0]))
    slab = read_structures(settings["slab"])[0]
    slab.calc = None
    if settings["surface_atoms"] != "all":
        constraints = [c.copy() for c in slab.constraints]
        slab = slab[: int(settings["surface_atoms"])]
        slab.set_constraint(constraints)
    network = co_oxidation_network(slab, settings["kinds"], settings["min_distance"], settings["max_distance"])
    found = run_network(network, slab, factory, protocol, protocol.relax_fmax, protocol.relax_steps,
                        observe=collector.observe, groups=None if settings["groups"] == "all" else settings["groups"],
                        progress=progress)
    rep = collector.report
    rep.stopped.extend(f"{n}: {m['stopped']}" for n, m in found["minima"].items() if "stopped" in m)
    rep.stopped.extend(f"{n}: {p['stopped']}" for n, p in found["paths"].items() if p.get("stopped"))
    rep.details["network"] = {
        "minima": len({m["key"] for m in found["minima"].values() if "key" in m}),
        "bands": {n: {"barrier_eV": round(p["barrier"], 4), "converged": p["converged"], "steps": p["steps"]}
                  for n, p in found["paths"].items() if "barrier" in p},
    }


def explore(exploration, factory: Callable, threshold: float, stop_above: float,
            should_stop: Callable[[], bool] = lambda: False, progress: bool = False, round: int = 0) -> ExplorationReport:
    """Run one :class:`~ase_nemp.learn.config.Exploration` with calculators from ``factory``.

    ``round`` enters the MD seed, so that each round samples new trajectories (reproducibly)."""
    report = ExplorationReport(exploration.name, exploration.kind)
    collector = Collector(report, threshold, stop_above, should_stop)
    t0 = time.perf_counter()
    kind, settings = exploration.kind, {**exploration.settings, "round": round}
    if kind == "md":
        _md(settings, factory, collector)
    elif kind == "relax":
        _relax(settings, factory, collector)
    elif kind == "neb":
        _neb(settings, factory, collector, progress)
    elif kind == "network":
        _network(settings, factory, collector, progress)
    else:
        _structures(settings, factory, collector)
    report.seconds = time.perf_counter() - t0
    return report
