"""ASE calculator for the package's models (NEMP, EquiREANN) and committees of them.

The hot path has two hops: ``atoms -> nl.build_graph`` (the C cell list or matscipy,
numpy, converted to tensors once) ``-> energy_forces_stress`` (torch, eV and Å throughout) ``->
self.results`` (float64 numpy).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .devices import resolve_device
from .io import load, resolve_dtype
from .model import AtomisticModel, Committee
from .graph import collate
from .model.derivatives import NO_STRESS_MESSAGE as _NO_STRESS
from .nl import NeighbourList, build_graph
from .perf import tune_cpu_allocator

__all__ = ["NEMPCalculator", "StressUnavailableError"]


def _chunks(indices: list[int], sizes: list[int], max_atoms: int) -> list[list[int]]:
    """Consecutive groups of ``indices`` of at most ``max_atoms`` atoms (a larger single
    structure forms a group alone)."""
    groups, current, atoms = [], [], 0
    for index, size in zip(indices, sizes):
        if current and atoms + size > max_atoms:
            groups.append(current)
            current, atoms = [], 0
        current.append(index)
        atoms += size
    return groups + ([current] if current else [])


def check_max_atoms(max_atoms) -> int:
    """``max_atoms`` (atoms per model call) as a whole number >= 1, or a clear error."""
    if isinstance(max_atoms, bool) or not isinstance(max_atoms, numbers.Integral) or max_atoms < 1:
        raise ValueError(f"max_atoms must be a whole number >= 1 (atoms per model call), got {max_atoms!r}")
    return int(max_atoms)


class StressUnavailableError(PropertyNotImplementedError, ValueError):
    """Stress was requested for a structure that is not periodic in all three directions."""


class NEMPCalculator(Calculator):
    """ASE calculator for a model of any architecture (NEMP, EquiREANN) or a committee.

    Parameters
    ----------
    model : model, Committee or path-like
        A model (e.g. from :func:`ase_nemp.create_model`), a committee, or a model file written by :func:`ase_nemp.save`. The
        calculator works on its own copy, moved to ``device`` and ``dtype``.
    device : str or torch.device
        ``"cpu"`` or ``"cuda"`` (or ``"cuda:1"``...).
    dtype : "float64" or "float32"
        Precision of the evaluation. float32 takes about two thirds of the time; its
        forces agree with float64 to ~1e-5 eV/Å for typical systems, which is ample for
        relaxations and MD.
    skin : float
        Verlet skin in Å. The neighbour list is built with ``cutoff + skin`` and reused
        while no atom has moved more than ``skin / 2`` and the cell, pbc and atoms are
        unchanged; results equal those of a fresh list to round-off. 0 rebuilds every call.
    interval_level : float
        Probability of the calibrated intervals (0.9: a 90 % interval), for a calibrated
        committee.
    compile : bool
        Compile the model with ``torch.compile`` (dynamic shapes). The first call then
        takes about a minute; later calls are faster. Worth it for long MD runs; the
        default eager mode is what the test suite checks in depth.

    Properties
    ----------
    ``energy`` and ``free_energy`` (eV), ``energies`` (per atom, eV; they sum to the
    energy), ``forces`` (eV/Å), and ``stress`` (eV/Å^3, Voigt order xx yy zz yz xz xy,
    ASE's sign convention) for structures periodic in all three directions.

    A **committee** gives the mean of its members for all of these, computed in the same
    call, plus ``energy_uncertainty`` (eV, the spread of the members' energies),
    ``forces_uncertainty`` (N,) (eV/Å, per atom, the spread of the members' force
    vectors) and ``committee_energy`` (M,) (eV, every member's energy); see
    :mod:`ase_nemp.model.committee`. ``calc.get_property("forces_uncertainty", atoms)``
    reads them. A committee whose model file carries a calibration
    (:mod:`ase_nemp.uncertainty`, ``nemp calibrate``) also gives calibrated error bars:
    ``energy_interval`` (eV) and ``forces_interval`` (N,) (eV/Å, per atom), the radii of
    intervals that hold the true error with probability ``interval_level``.

    One calculator may be shared by several threads: calls are serialised, so every
    thread gets the results of its own structure.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from ase_nemp import NEMP, NEMPConfig, NEMPCalculator
    >>> model = NEMP(NEMPConfig(species=["H", "O"]), seed=0)    # random weights
    >>> atoms = molecule("H2O")
    >>> atoms.calc = NEMPCalculator(model)
    >>> forces = atoms.get_forces()
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    committee_properties = ["energy_uncertainty", "forces_uncertainty", "committee_energy", "energy_interval",
                            "forces_interval"]
    default_parameters: dict[str, Any] = {}
    _ase_keywords = ("label", "atoms", "directory")

    def __init__(
        self,
        model: AtomisticModel | Committee | str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float64",
        skin: float = 0.5,
        compile: bool = False,
        interval_level: float = 0.9,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(self._ase_keywords))
        if unknown:
            raise TypeError(f"NEMPCalculator got unknown keyword argument(s) {', '.join(unknown)}; it takes model, "
                            f"device, dtype, skin, compile, interval_level and ASE's {', '.join(self._ase_keywords)}")
        if not isinstance(skin, (int, float)) or not math.isfinite(skin) or skin < 0:
            raise ValueError(f"skin must be a finite distance >= 0 in Å, got {skin!r}")
        super().__init__(**kwargs)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.model_file = None
        if isinstance(model, (str, os.PathLike)):
            self.model_file = str(model)
            model = load(model, device=self.device, dtype=self.dtype)
        elif isinstance(model, (AtomisticModel, Committee)):
            model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype)
        else:
            raise TypeError(f"model must be a model (NEMP, EquiREANN...), a Committee or a path to a model file, "
                            f"not {type(model).__name__}")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.is_committee = model.is_committee
        from .uncertainty import Calibration

        if isinstance(interval_level, bool) or not isinstance(interval_level, (int, float)) or \
                not 0 < interval_level < 1:
            raise ValueError(f"interval_level must be a probability between 0 and 1, got {interval_level!r}")
        self.calibration = Calibration.of(model) if self.is_committee else None
        if self.calibration is not None:
            self.calibration.radius("energy", 0.0, interval_level)  # a clear error for a level outside its table
        self.interval_level = float(interval_level)
        self.conservative = bool(model.conservative)
        self.implemented_properties = [p for p in type(self).implemented_properties
                                       if self.conservative or p != "stress"]
        self.implemented_properties += [p for p in self.committee_properties if self.is_committee
                                        and (self.calibration is not None or not p.endswith("_interval"))]
        self.neighbour_list = NeighbourList(model.cutoff, skin=skin)
        self._lock = threading.RLock()
        if compile:
            self.compile()

    def compile(self) -> "NEMPCalculator":
        """Compile the model's energy function with ``torch.compile`` (dynamic shapes)."""
        for member in self.model.members if self.is_committee else [self.model]:
            member.network_energies = torch.compile(member.network_energies, dynamic=True)
        return self

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> "NEMPCalculator":
        """Calculator for a model file (see :func:`ase_nemp.load`)."""
        return cls(Path(path), **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> "NEMPCalculator":
        """Calculator for a model shipped with the package (``ase_nemp.pretrained.available()``)."""
        from .pretrained import model_path

        return cls(model_path(name), **kwargs)

    # -- ASE contract -----------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        if hasattr(self, "neighbour_list"):
            self.neighbour_list.reset()

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name == "stress" and not self.conservative:
            raise PropertyNotImplementedError(_NO_STRESS)
        if name in self.committee_properties and not self.is_committee:
            raise PropertyNotImplementedError(
                f"{name!r} needs a committee model (several members whose spread estimates the error); this "
                "calculator holds a single model. Train one with training.committee: N in nemp train.")
        if name.endswith("_interval") and name in self.committee_properties and self.calibration is None:
            raise PropertyNotImplementedError(
                f"{name!r} needs a calibrated committee; this model file carries no calibration (fit one on "
                "held-out data with nemp calibrate). energy_uncertainty and forces_uncertainty are the raw spreads.")
        with self._lock:  # the check, the calculation and the read of one thread belong together
            return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        with self._lock:
            super().calculate(atoms, properties, system_changes)
            try:
                (self.results,) = self._evaluate([self.atoms], [self._neighbour_list_for(self.atoms)], properties)
            except Exception:
                self.reset()  # nothing half-computed survives; the next call starts afresh
                raise

    def calculate_batch(self, images: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces"),
                        max_atoms: int = 4096) -> None:
        """Evaluate many structures in one model call each ``max_atoms`` atoms.

        Every image gets (or keeps) a calculator of its own that shares this one's model
        (:meth:`sibling`): its own neighbour list and skin, and afterwards the results of
        its structure, exactly what it would have computed alone (the same numbers to
        round-off: one disjoint graph, and no quantity of one structure depends on
        another's). Images whose results are current are not recomputed. The images may
        differ in size, cell, periodicity and constraints; afterwards
        ``image.get_forces()`` and the rest read the stored results.

        Parameters
        ----------
        images : sequence of ase.Atoms
        properties : sequence of str
            As for :meth:`calculate`; ``"stress"`` needs every image periodic in 3D.
        max_atoms : int
            Atoms per model call at most (memory grows with it); larger batches are
            split, and a single larger structure goes alone.
        """
        if isinstance(images, Atoms):
            raise TypeError("calculate_batch takes a list of Atoms; for one structure pass [atoms]")
        if isinstance(properties, str):
            raise TypeError(f"properties must be a list of names such as ['energy', 'forces'], not the text "
                            f"{properties!r}")
        unknown = sorted(set(properties) - set(self.implemented_properties))
        if unknown:
            raise PropertyNotImplementedError(f"{', '.join(map(repr, unknown))} not available from this calculator; "
                                              f"it computes {', '.join(self.implemented_properties)}")
        max_atoms = check_max_atoms(max_atoms)
        images = list(images)
        for k, image in enumerate(images):
            if not isinstance(image, Atoms):
                raise TypeError(f"structure {k} of the batch is a {type(image).__name__}, not an ase.Atoms")
        with self._lock:
            calcs = [self._sibling_for(image) for image in images]
            todo = [k for k, (image, calc) in enumerate(zip(images, calcs)) if calc.calculation_required(image, properties)]
            for chunk in _chunks(todo, [len(images[k]) for k in todo], max_atoms):
                structures = [images[k] for k in chunk]
                results = self._evaluate(structures, [calcs[k]._neighbour_list_for(images[k]) for k in chunk], properties,
                                         labels=chunk)
                for k, result in zip(chunk, results):
                    calcs[k].atoms, calcs[k].results = images[k].copy(), result

    def sibling(self) -> "NEMPCalculator":
        """A calculator for another structure that shares this one's model (no copy of the
        weights), device, dtype and skin, with its own neighbour list and results. Use
        one per structure (NEB images, many relaxations); :meth:`calculate_batch`
        evaluates structures whose calculators are siblings in one call."""
        twin = copy.copy(self)
        Calculator.__init__(twin)
        twin.neighbour_list = NeighbourList(self.model.cutoff, skin=self.neighbour_list.skin)
        twin._lock = threading.RLock()
        return twin

    def recipe(self) -> "CalculatorRecipe":
        """What another process needs to build this calculator: the model file's bytes and
        the settings (picklable; for jobs on other workers, :mod:`ase_nemp.jobs`)."""
        import tempfile

        from .io import save

        if self.model_file is not None:
            data = Path(self.model_file).read_bytes()
        else:
            with tempfile.TemporaryDirectory() as folder:
                data = save(self.model, Path(folder) / "model.pt", **getattr(self.model, "metadata", {})).read_bytes()
        return CalculatorRecipe(data, str(self.dtype).replace("torch.", ""), self.neighbour_list.skin,
                                self.interval_level)

    def shares_model_with(self, calc: Any) -> bool:
        """Whether ``calc`` is an NEMPCalculator on this one's model and dtype (a sibling)."""
        return isinstance(calc, NEMPCalculator) and calc.model is self.model and calc.dtype == self.dtype

    def _sibling_for(self, image: Atoms) -> "NEMPCalculator":
        if not self.shares_model_with(image.calc):
            image.calc = self.sibling()
        return image.calc

    def _evaluate(self, structures: list[Atoms], lists: list[NeighbourList | None], properties,
                  labels: list[int] | None = None) -> list[dict]:
        """Results of ``structures`` (one disjoint graph, one model call), one dict each;
        ``labels`` are their indices in the caller's batch, for error messages."""
        want_stress = "stress" in properties
        if want_stress and not self.conservative:
            raise PropertyNotImplementedError(_NO_STRESS)
        for k, atoms in enumerate(structures):
            if want_stress and not atoms.pbc.all():
                which = "this one" if labels is None else f"structure {labels[k]} of the batch"
                raise StressUnavailableError(
                    f"stress needs a structure periodic in all three directions; {which} has pbc={atoms.pbc.tolist()}")
        graphs = []
        for k, (atoms, nl) in enumerate(zip(structures, lists)):
            try:
                graphs.append(build_graph(atoms, self.model.cutoff, device=self.device, dtype=self.dtype,
                                          neighbour_list=nl))
            except ValueError as err:
                if labels is None:
                    raise
                raise ValueError(f"structure {labels[k]} of the batch: {err}") from None
        graph = collate(graphs)
        out = self.model.predict(graph, stress=want_stress)
        out = {k: v.to(torch.float64).cpu().numpy() for k, v in out.items()}
        if self.is_committee:
            member_energies = out.pop("member_energy")  # (M, B)
        results, stop = [], 0
        for b, atoms in enumerate(structures):
            start, stop = stop, stop + len(atoms)
            energy = float(out["energy"][b])
            result = {"energy": energy, "free_energy": energy, "energies": out["energies"][start:stop],
                      "forces": out["forces"][start:stop]}
            if want_stress:
                result["stress"] = full_3x3_to_voigt_6_stress(out["stress"][b])
            if self.is_committee:
                result["energy_uncertainty"] = float(out["energy_uncertainty"][b])
                result["forces_uncertainty"] = out["forces_uncertainty"][start:stop]
                result["committee_energy"] = member_energies[:, b].copy()
                if self.calibration is not None:
                    level = self.interval_level
                    result["energy_interval"] = float(self.calibration.radius("energy", result["energy_uncertainty"],
                                                                              level))
                    result["forces_interval"] = self.calibration.radius("forces", result["forces_uncertainty"], level)
            results.append(result)
        return results

    def _neighbour_list_for(self, atoms) -> NeighbourList | None:
        # non-periodic systems on a GPU may use torch-cluster (see nl.build_graph)
        if self.device.type == "cuda" and not atoms.pbc.any():
            from .nl import HAS_TORCH_CLUSTER

            if HAS_TORCH_CLUSTER:
                return None
        return self.neighbour_list

    def todict(self) -> dict[str, Any]:
        """What this calculator is: model file (or architecture), committee size, dtype, device, skin."""
        cfg = self.model.config
        return {"model": self.model_file or f"{self.model.architecture} (in memory)",
                "architecture": self.model.architecture, "committee_size": self.model.size,
                "elements": cfg.symbols, "cutoff": cfg.cutoff, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device), "skin": self.neighbour_list.skin}

    def __repr__(self) -> str:
        cfg = self.model.config
        committee = f", committee of {self.model.size}" if self.is_committee else ""
        return (f"NEMPCalculator(elements={cfg.symbols}, cutoff={cfg.cutoff}{committee}, device='{self.device}', "
                f"dtype={str(self.dtype).replace('torch.', '')}, skin={self.neighbour_list.skin})")


_BUILT: dict[tuple, NEMPCalculator] = {}  # the calculators a worker process has built, by recipe


class CalculatorRecipe:
    """A picklable stand-in for an :class:`NEMPCalculator` (:meth:`NEMPCalculator.recipe`):
    :meth:`build` makes the calculator in the process that runs a job, once per process."""

    def __init__(self, model_bytes: bytes, dtype: str, skin: float, interval_level: float) -> None:
        import hashlib

        self.model_bytes, self.dtype, self.skin, self.interval_level = model_bytes, dtype, skin, interval_level
        self.key = (hashlib.sha256(model_bytes).hexdigest(), dtype, skin, interval_level)

    def build(self) -> NEMPCalculator:
        """The calculator (on the CPU), built on first use in this process and kept."""
        calc = _BUILT.get(self.key)
        if calc is None:
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.pt"
                path.write_bytes(self.model_bytes)
                calc = NEMPCalculator(path, dtype=self.dtype, skin=self.skin, interval_level=self.interval_level)
            calc.model_file = None  # the temporary file is gone
            _BUILT[self.key] = calc
        return calc
