"""A reaction from two end points to verified elementary steps with rates.

:func:`elementary_steps` is what ``nemp neb`` and ``nemp demo`` run:

1. relax both end points and check that they are minima (no imaginary mode above the
   threshold in the Hessian over the free atoms);
2. run a climbing-image band between them (:func:`ase_nemp.neb.run_neb`, batched);
3. split the band into elementary steps: an interior image that is a local minimum of the
   band's energies (below both neighbours by more than ``split_tolerance``, or below
   the lower end point by more than that) is relaxed; when it relaxes to a new minimum,
   the band is split there and each part is run again as a band of its own (in the
   spirit of ASE's AutoNEB), until no part has such an image;
   Each part starts from its share of the converged band (midpoints added where it has
   too few images), which converges in tens of steps instead of hundreds;
4. refine each step's climbing image to a saddle (:func:`ase_nemp.saddle.refine_saddle`),
   verify that it has exactly one imaginary mode and that following it downhill leads to
   the step's two minima (:func:`ase_nemp.saddle.verify_saddle`). Where it leads from one
   of them to a minimum that is neither (in the demo: from CO + O to a bent CO2 bound to
   the surface, before the CO2 leaves), that minimum splits the step too. A band that
   rises less than ``split_tolerance`` above its higher end point has no transition state
   the band resolves: the step is reported as barrierless;
5. give each step its barrier from the minimum it starts from, its reaction energy and
   its harmonic-TST rate (:mod:`ase_nemp.rates`), with committee spreads.

Everything a step could not establish is listed in its ``flags`` in words; a step
without flags is a verified elementary step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms

from .neb import NEBProtocol, optimise_band, relax, run_neb
from .rates import HarmonicRate, harmonic_rate
from .saddle import Connection, SaddleResult, displacement, refine_saddle, rmsd, verify_saddle
from .uncertainty import interval
from .vibrations import IMAGINARY_THRESHOLD, ModelVibrations, free_atoms, hessian, imaginary_frequencies

__all__ = ["ReactionSettings", "ElementaryStep", "ReactionPath", "elementary_steps", "interior_minima",
           "check_end_points", "EndPointError"]


class EndPointError(ValueError):
    """The two end points cannot be the two ends of one reaction path."""


@dataclass(frozen=True)
class ReactionSettings:
    """How a reaction is analysed (the defaults are those of ``nemp neb`` and ``nemp demo``).

    Attributes
    ----------
    protocol : NEBProtocol
        The bands (images, fmax, optimizer...). Its ``relax_*`` fields are not used:
        minima are relaxed to ``minimum_fmax``.
    minimum_fmax : float
        eV/Å, BFGS tolerance of every minimum (end points, intermediates, the ends of
        the downhill paths from a saddle). Tighter than a band's, since their Hessians
        are taken.
    relax_steps : int
        BFGS steps per minimum at most.
    saddle_fmax : float
        eV/Å, convergence of the saddle refinement.
    saddle_steps : int
        Saddle-search steps at most (:func:`ase_nemp.saddle.refine_saddle`).
    split_tolerance : float
        eV, how far an interior image must lie below its neighbours (or below the lower
        end point) to be taken for an intermediate minimum, and how far a band must rise
        above its higher end point to have a barrier (a transition state) at all.
    max_steps : int
        At most this many elementary steps (bands) in all.
    threshold : float
        cm^-1, imaginary modes smaller than this are not counted.
    rmsd_tolerance : float
        Å over the free atoms: two minima closer than this are the same.
    temperatures : tuple of float
        K, for the rates.
    """

    protocol: NEBProtocol = NEBProtocol()
    minimum_fmax: float = 0.01
    relax_steps: int = 500
    saddle_fmax: float = 0.01
    saddle_steps: int = 100
    split_tolerance: float = 0.05
    max_steps: int = 4
    threshold: float = IMAGINARY_THRESHOLD
    rmsd_tolerance: float = 0.25
    temperatures: tuple = (300.0, 500.0, 700.0)

    def __post_init__(self) -> None:
        problems = []
        for name in ("minimum_fmax", "saddle_fmax", "rmsd_tolerance"):
            if not 0 < getattr(self, name) < np.inf:
                problems.append(f"{name} must be finite and positive")
        if not 0 <= self.split_tolerance < np.inf or not 0 <= self.threshold < np.inf:
            problems.append("split_tolerance and threshold must be finite and >= 0")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            problems.append("max_steps must be a whole number >= 1")
        if not all(np.isfinite(t) and t > 0 for t in self.temperatures):
            problems.append(f"temperatures must be positive (K), got {list(self.temperatures)}")
        if problems:
            raise ValueError("invalid reaction settings: " + "; ".join(problems))

    def replace(self, **changes: Any) -> "ReactionSettings":
        import dataclasses

        return dataclasses.replace(self, **changes)


@dataclass
class ElementaryStep:
    """One elementary step: two minima, the band between them and its saddle.

    Attributes
    ----------
    initial, final : ase.Atoms
        The relaxed minima the step starts from and ends in (with results).
    band : dict
        :func:`ase_nemp.neb.run_neb`'s result for the band the step was found on.
    images : list of ase.Atoms
        The step's images: its band from ``initial`` to ``final`` (where the band ran on
        past the step's end, the part up to the image nearest to it, then ``final``).
    saddle : SaddleResult or None
        None when the band's highest image is an end point (no barrier beyond the
        reaction energy).
    connection : Connection or None
        Where the saddle leads downhill.
    initial_vibrations, final_vibrations : ModelVibrations
    rate : HarmonicRate or None
    barrier : float
        eV, E(saddle) - E(initial minimum) (the band's highest image without a saddle).
    reaction_energy : float
        eV, E(final) - E(initial).
    barrier_spread : float or None
        eV, the committee spread of the barrier (members' energies at the same geometries).
    barrier_interval : float or None
        eV, the radius of the calibrated interval of the barrier at ``interval_level`` (for a
        calibrated committee, :mod:`ase_nemp.uncertainty`: the energy factor times the
        barrier's spread).
    interval_level : float or None
    flags : list of str
        What could not be verified, in words; empty for a verified elementary step.
    notes : list of str
        What else a reader should know (a barrierless step, say).
    """

    initial: Atoms
    final: Atoms
    band: dict
    images: list
    saddle: SaddleResult | None
    connection: Connection | None
    initial_vibrations: ModelVibrations
    final_vibrations: ModelVibrations
    rate: HarmonicRate | None
    barrier: float
    reaction_energy: float
    barrier_spread: float | None = None
    barrier_interval: float | None = None
    interval_level: float | None = None
    flags: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def error_bar(self) -> tuple[float | None, str]:
        """The barrier's error bar (eV) and what it is: the calibrated interval where the
        committee has one, else its raw spread; ``(None, "")`` for a single model."""
        if self.barrier_interval is not None:
            return self.barrier_interval, f"calibrated {100 * self.interval_level:.0f} % interval"
        if self.barrier_spread is not None:
            return self.barrier_spread, "committee spread, not calibrated"
        return None, ""

    @property
    def reverse_barrier(self) -> float:
        return self.barrier - self.reaction_energy

    @property
    def verified(self) -> bool:
        return not self.flags


@dataclass
class ReactionPath:
    """The whole path: its minima in order and the steps between them.

    Attributes
    ----------
    minima : list of ase.Atoms
        Initial state, intermediates, final state (relaxed, with results).
    steps : list of ElementaryStep
    seconds : dict
        Wall time per part: ``relax``, ``hessians``, ``bands``, ``saddles``, ``verify``, ``total``.
    """

    minima: list
    steps: list
    seconds: dict

    @property
    def energies(self) -> np.ndarray:
        """eV, every minimum relative to the initial state."""
        e = np.array([m.get_potential_energy() for m in self.minima])
        return e - e[0]


def check_end_points(initial: Atoms, final: Atoms) -> None:
    """Refuse, with a message that names the problem, end points that cannot bound one path."""
    for name, atoms in (("initial", initial), ("final", final)):
        if len(atoms) == 0:
            raise EndPointError(f"the {name} structure has no atoms")
        if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.cell.array).all():
            raise EndPointError(f"the {name} structure has non-finite positions or cell")
    if len(initial) != len(final):
        raise EndPointError(f"the end points have different numbers of atoms ({len(initial)} and {len(final)})")
    if (initial.numbers != final.numbers).any():
        k = int(np.flatnonzero(initial.numbers != final.numbers)[0])
        raise EndPointError(f"the end points list different atoms or the same atoms in another order (first at index "
                            f"{k}: {initial.get_chemical_symbols()[k]} and {final.get_chemical_symbols()[k]}); "
                            "a band needs atom k of one to be atom k of the other")
    if (initial.pbc != final.pbc).any() or not np.allclose(initial.cell.array, final.cell.array, atol=1e-6):
        raise EndPointError("the end points have different cells or periodicity")
    if free_atoms(initial) != free_atoms(final):
        raise EndPointError("the end points fix different atoms (FixAtoms constraints differ)")


def interior_minima(energies: Sequence[float], tolerance: float) -> list[int]:
    """Interior images that look like intermediate minima, lowest first: below both
    neighbours by more than ``tolerance`` (eV), or at least below both neighbours and
    below the lower end point by more than ``tolerance``."""
    e = np.asarray(energies, dtype=float)
    lower_end = min(e[0], e[-1])
    found = []
    for k in range(1, len(e) - 1):
        below = min(e[k - 1], e[k + 1]) - e[k]
        if below > tolerance or (below > 0 and e[k] < lower_end - tolerance):
            found.append(k)
    return sorted(found, key=lambda k: e[k])


def member_energies(atoms: Atoms) -> np.ndarray | None:
    """Each committee member's energy (eV) from ``atoms``' current results; None for a
    single model."""
    results = getattr(atoms.calc, "results", {}) or {}
    return np.asarray(results["committee_energy"]) if "committee_energy" in results else None


def _resampled(images: list, n: int) -> list:
    """Copies of ``images`` (end points first and last) brought to ``n`` images: where
    there are fewer, midpoints are inserted (linear, minimum image) in the longest gaps;
    where there are more, the end points, the highest image and evenly spaced others are
    kept."""

    def energy(atoms):
        try:
            return atoms.get_potential_energy()
        except Exception:  # no calculator or results: no preference
            return -np.inf

    frames = [im.copy() for im in images]
    if len(frames) > n:
        keep = {0, len(frames) - 1, int(np.argmax([energy(im) for im in images[1:-1]])) + 1}
        for k in np.linspace(0, len(frames) - 1, n).round().astype(int):
            if len(keep) < n:
                keep.add(int(k))
        frames = [frames[k] for k in sorted(keep)]
    while len(frames) < n:
        steps = [displacement(a, b) for a, b in zip(frames[:-1], frames[1:])]
        k = int(np.argmax([np.sqrt((d**2).sum()) for d in steps]))
        middle = frames[k].copy()
        middle.positions = frames[k].positions + 0.5 * steps[k]
        frames.insert(k + 1, middle)
    for frame in frames:
        frame.calc = None
    return frames


def _tangent(images: list, k: int) -> np.ndarray:
    """The band's central-difference tangent at image k (minimum-image convention)."""
    return displacement(images[k - 1], images[k + 1])


class _Clock(dict):
    def add(self, key: str, since: float) -> float:
        now = time.perf_counter()
        self[key] = self.get(key, 0.0) + now - since
        return now


def elementary_steps(initial: Atoms, final: Atoms, calc: Any, settings: ReactionSettings = ReactionSettings(), *,
                     calculator_factory: Callable[[], Any] | None = None, progress: bool = True,
                     log: Callable[[str], None] | None = None) -> ReactionPath:
    """From two end points to verified elementary steps with rates (module docstring).

    Parameters
    ----------
    initial, final : ase.Atoms
        The same atoms in the same order, the same cell and constraints; not modified.
    calc : NEMPCalculator or any ASE calculator
        The potential. For a calculator that is not the package's, ``calculator_factory``
        must give a fresh one per band image (ASE's NEB needs one each).
    settings : ReactionSettings
    calculator_factory : callable, optional
    progress : bool
        Progress bars.
    log : callable, optional
        Receives one line per stage (e.g. ``print``).

    Returns
    -------
    ReactionPath

    Raises
    ------
    EndPointError
        The end points do not match (:func:`check_end_points`), or one of them relaxes
        to a structure that is not a minimum, or both relax to the same minimum.
    """
    from .calculator import NEMPCalculator

    check_end_points(initial, final)
    say = log or (lambda line: None)
    if calculator_factory is None:
        if not isinstance(calc, NEMPCalculator):
            raise TypeError("elementary_steps needs calculator_factory= for a calculator that is not an "
                            "NEMPCalculator (ASE's NEB needs a calculator per image)")
        calculator_factory = calc.sibling
    s = settings
    clock = _Clock()
    start = time.perf_counter()
    hess_cache: dict[int, tuple[Atoms, ModelVibrations]] = {}  # the Atoms kept, so that its id stays its own

    def relaxed(atoms: Atoms, label: str) -> Atoms:
        t0, atoms = time.perf_counter(), atoms.copy()
        relax(atoms, calculator_factory(), s.minimum_fmax, s.relax_steps, label, progress)
        clock.add("relax", t0)
        return atoms

    def vibrations(atoms: Atoms) -> ModelVibrations:
        if id(atoms) not in hess_cache:
            t0 = time.perf_counter()
            hess_cache[id(atoms)] = (atoms, hessian(atoms, atoms.calc))
            clock.add("hessians", t0)
        return hess_cache[id(atoms)][1]

    def is_minimum(atoms: Atoms) -> bool:
        return imaginary_frequencies(vibrations(atoms), s.threshold).size == 0

    def intermediate(res: dict, left: Atoms, right: Atoms) -> tuple[int, Atoms] | None:
        """(image, the new minimum it relaxes to) for an interior image of the band, or None."""
        for k in interior_minima(res["energies"], s.split_tolerance):
            middle = relaxed(res["images"][k], f"relax image {k}")
            if min(rmsd(middle, left), rmsd(middle, right)) <= s.rmsd_tolerance or not is_minimum(middle):
                continue  # back into an end point, or a shoulder
            say(f"image {k} of the band relaxes to an intermediate minimum "
                f"{middle.get_potential_energy() - left.get_potential_energy():+.3f} eV from the band's start: "
                "the band holds more than one elementary step; splitting it there")
            return k, middle
        return None

    def new_minimum(step: ElementaryStep) -> tuple[int, Atoms] | None:
        """When the saddle joins one of the step's minima (0 left, 1 right) and a minimum
        that is neither: (which of the step's minima, the new one)."""
        c = step.connection
        if c is None or not step.saddle.first_order or c.matched.count(None) != 1:
            return None
        side = c.matched.index(None)
        middle = c.minima[side]
        if not c.converged[side] or middle.get_potential_energy() >= step.saddle.energy or not is_minimum(middle):
            return None
        return c.matched[1 - side], middle

    a, b = relaxed(initial, "relax initial state"), relaxed(final, "relax final state")
    for name, atoms in (("initial", a), ("final", b)):
        imag = imaginary_frequencies(vibrations(atoms), s.threshold)
        if len(imag):
            raise EndPointError(
                f"the {name} state is not a minimum after relaxation: {len(imag)} imaginary mode(s) "
                f"({', '.join(f'{x:.0f}i' for x in imag)} cm^-1) above {s.threshold:.0f} cm^-1; it sits on a "
                "saddle or ridge. Displace it along that mode (ase.vibrations) and relax again, or start from "
                "another structure")
    if rmsd(a, b) <= s.rmsd_tolerance:
        raise EndPointError(f"the two end points relax to the same minimum (RMSD {rmsd(a, b):.3f} Å over the free "
                            "atoms): there is no reaction between them")
    say(f"end points relaxed: E(final) - E(initial) = {b.get_potential_energy() - a.get_potential_energy():+.3f} eV")

    band_protocol = s.protocol.replace(relax_steps=0)
    # the work list: [left, right, band, (saddle, connection)]; a band not yet run is None,
    # and a step whose saddle was found from a wider band carries it
    todo: list[list] = [[a, b, None, None, None]]
    steps: list[ElementaryStep] = []
    while todo:
        left, right, res, known, images = todo.pop(0)
        room = len(steps) + len(todo) + 2 <= s.max_steps  # may this step become two?
        if res is None:
            t0 = time.perf_counter()
            if images is None or len(images) < 3:  # a new band, interpolated between the minima
                res = run_neb(left.copy(), right.copy(), calculator_factory, band_protocol, progress=progress)
            else:  # seeded with its share of a converged wider band
                res = optimise_band(_resampled([left] + images[1:-1] + [right], s.protocol.images),
                                    calculator_factory, band_protocol, progress=progress)
            images = None
            clock.add("bands", t0)
            say(f"band: barrier {res['barrier']:.3f} eV, reaction energy {res['reaction_energy']:+.3f} eV, "
                f"{res['neb_steps']} steps, {'converged' if res['converged'] else 'NOT converged'}")
            found = intermediate(res, left, right) if room else None
            if found is not None:  # each part starts from its share of this band
                k, middle = found
                imgs = res["images"]
                todo[:0] = [[left, middle, None, None, imgs[:k] + [middle]],
                            [middle, right, None, None, [middle] + imgs[k + 1:]]]
                continue
        step = _analyse(left, right, res, calc, s, vibrations, clock, progress, say, known, images)
        new = new_minimum(step) if room else None
        if new is not None:
            joined, middle = new
            say(f"the saddle leads downhill to an intermediate minimum "
                f"{middle.get_potential_energy() - left.get_potential_energy():+.3f} eV from the step's start, "
                "not to the step's other end: splitting the step there")
            known = (step.saddle, step.connection)
            # the step's share of the band: up to (from) the image nearest the new minimum
            imgs, peak = step.images, int(np.argmax([im.get_potential_energy() for im in step.images]))
            if joined == 0:
                k = min(range(peak + 1, len(imgs)), key=lambda k: rmsd(imgs[k], middle), default=len(imgs))
                todo[:0] = [[left, middle, res, known, imgs[:k] + [middle]], [middle, right, None, None, None]]
            else:
                k = min(range(0, peak), key=lambda k: rmsd(imgs[k], middle), default=-1)
                todo[:0] = [[left, middle, None, None, None], [middle, right, res, known, [middle] + imgs[k + 1:]]]
            continue
        steps.append(step)
    clock["total"] = time.perf_counter() - start
    minima = [a] + [step.final for step in steps]
    return ReactionPath(minima=minima, steps=steps, seconds=dict(clock))


def _analyse(left: Atoms, right: Atoms, res: dict, calc: Any, s: ReactionSettings, vibrations, clock: _Clock,
             progress: bool, say, known: tuple | None = None, images: list | None = None) -> ElementaryStep:
    """Saddle, verification and rate of one step from its converged band (``known``: a
    saddle and its connection found already; ``images``: the step's share of the band,
    when the band spans more than the step)."""
    flags = []
    if not res["converged"]:
        flags.append(f"band not converged (largest NEB force {res['fmax']:.3f} eV/Å)")
    e_left = left.get_potential_energy()
    reaction_energy = right.get_potential_energy() - e_left
    vib_left, vib_right = vibrations(left), vibrations(right)
    peak = res["peak"]
    saddle = connection = rate = None
    barrier_spread = barrier_radius = level = None
    energies = np.asarray(res["energies"])
    rise = float(energies.max() - max(energies[0], energies[-1]))  # above the higher end point
    notes = []
    if known is not None:
        saddle, connection = known
        connection.match([left, right], s.rmsd_tolerance)
    elif 0 < peak < len(res["images"]) - 1 and rise >= s.split_tolerance:
        t0 = time.perf_counter()
        saddle = refine_saddle(res["images"][peak], calc, tangent=_tangent(res["images"], peak), fmax=s.saddle_fmax,
                               steps=s.saddle_steps, threshold=s.threshold, progress=progress)
        t0 = clock.add("saddles", t0)
        say(f"saddle: {saddle.steps} dimer steps (ASE), largest force {saddle.fmax:.4f} eV/Å, imaginary "
            f"{', '.join(f'{x:.0f}i' for x in saddle.imaginary) or 'none'} cm^-1")
        if saddle.converged:  # where a search stopped short, there is nothing to follow downhill
            connection = verify_saddle(saddle, calc, [left, right], fmax=s.minimum_fmax, steps=s.relax_steps,
                                       rmsd_tolerance=s.rmsd_tolerance, progress=progress)
            clock.add("verify", t0)
    if saddle is not None:
        barrier = saddle.energy - e_left
        if not saddle.converged:
            flags.append(f"saddle not converged (largest force {saddle.fmax:.3f} eV/Å after {saddle.steps} steps)")
        if not saddle.first_order:
            flags.append(f"{len(saddle.imaginary)} imaginary modes above {s.threshold:.0f} cm^-1 at the saddle "
                         "(a first-order saddle has exactly one)")
        if connection is None:
            flags.append("not followed downhill: the saddle search did not converge")
        elif not connection.connects(0, 1):
            ends = ["the initial minimum" if m == 0 else "the final minimum" if m == 1 else
                    f"another state (RMSD {min(r):.2f} Å from the nearest end point, E - E_IS {e - e_left:+.3f} eV)"
                    for m, r, e in zip(connection.matched, connection.rmsd, connection.energies)]
            flags.append(f"the saddle connects {ends[0]} and {ends[1]}, not this step's two minima")
        members = [member_energies(x) for x in (left, saddle.atoms)]
        member_barriers = members[1] - members[0] if members[0] is not None and members[1] is not None else None
        if member_barriers is not None:
            barrier_spread = float(np.std(member_barriers, ddof=1))
            barrier_radius = interval(calc, barrier_spread)
            if barrier_radius is not None:
                barrier_radius, level = float(barrier_radius), calc.interval_level
        if saddle.first_order:
            rate = harmonic_rate(vib_left, saddle.vibrations, barrier, s.temperatures, member_barriers)
    else:
        barrier = max(0.0, reaction_energy)
        notes.append(f"barrierless: the band rises {max(rise, 0.0):.3f} eV above its higher end point, less than the "
                     f"{s.split_tolerance} eV the bands resolve, so there is no transition state to refine; the "
                     "barrier is the reaction energy where that is positive")
    return ElementaryStep(initial=left, final=right, band=res, images=list(images or res["images"]), saddle=saddle, connection=connection,
                          initial_vibrations=vib_left, final_vibrations=vib_right, rate=rate, barrier=float(barrier),
                          reaction_energy=float(reaction_energy), barrier_spread=barrier_spread,
                          barrier_interval=barrier_radius, interval_level=level, flags=flags,
                          notes=notes)
