"""The teacher: any ASE calculator, named as ``module:Class`` or ``path/to/file.py:Class``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = ["load_teacher", "label", "check_teacher", "label_on_worker"]


def load_teacher(spec: str, kwargs: dict | None = None):
    """Instantiate the calculator class named by ``spec`` with ``kwargs``.

    ``spec`` is ``"package.module:Class"`` (importable) or ``"path/to/file.py:Class"``
    (a file, imported by path; its folder is put on ``sys.path`` so it may import its
    neighbours). Errors name what could not be found.
    """
    module_name, _, class_name = str(spec).rpartition(":")
    if not module_name or not class_name:
        raise ValueError(f"teacher calculator {spec!r} must look like 'package.module:Class' or 'file.py:Class'")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.exists():
            raise FileNotFoundError(f"teacher module file {str(path)!r} does not exist")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        unit = importlib.util.spec_from_file_location(f"_nemp_teacher_{path.stem}", path)
        module = importlib.util.module_from_spec(unit)
        unit.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import the teacher's module {module_name!r}: {err}") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {class_name!r}")
    try:
        return cls(**(kwargs or {}))
    except TypeError as err:
        raise ValueError(f"cannot create the teacher {class_name}(**{kwargs}): {err}") from err


def label(atoms: Atoms, teacher, stress: bool = False) -> Atoms:
    """A copy of ``atoms`` with the teacher's energy and forces (and stress for a
    3D-periodic structure when ``stress``) as a single-point calculator; raises
    ``ValueError`` for non-finite results."""
    frame = atoms.copy()
    frame.calc = teacher
    energy = np.asarray(frame.get_potential_energy(), dtype=np.float64)
    if energy.size != 1:
        raise ValueError(f"the teacher returned an energy of shape {energy.shape}, not one number")
    energy = float(energy.reshape(()))
    forces = np.asarray(frame.get_forces(apply_constraint=False), dtype=np.float64)
    if forces.shape != (len(frame), 3):
        raise ValueError(f"the teacher returned forces of shape {forces.shape} for {len(frame)} atoms "
                         f"(expected {(len(frame), 3)})")
    results = {"energy": energy, "forces": forces.copy()}
    if stress and frame.pbc.all():
        results["stress"] = np.array(frame.get_stress(), dtype=np.float64)
    if not np.isfinite(energy) or not np.isfinite(forces).all():
        raise ValueError("the teacher returned non-finite energy or forces")
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


def check_teacher(spec: str, kwargs: dict | None, probe: Atoms, stress: bool = False):
    """Load the teacher and label ``probe`` once (a small structure of the data): a misspelt
    class, a missing file or a calculator that fails on every structure is found before
    any exploration. Returns the teacher; raises ``ValueError`` naming the problem."""
    teacher = load_teacher(spec, kwargs)
    try:
        label(probe, teacher, stress=stress)
    except Exception as err:
        raise ValueError(f"the teacher {spec} failed on a test structure ({probe.get_chemical_formula()}, "
                         f"{len(probe)} atoms): {type(err).__name__}: {err}") from None
    return teacher


_LOADED: dict[str, object] = {}  # the teachers a worker process has loaded, by specification


def label_on_worker(spec: str, kwargs: dict | None, stress: bool, job: tuple[Atoms, str | None]) -> Atoms:
    """:func:`label` as a job for an executor (:mod:`ase_nemp.jobs`): the worker loads the
    teacher named by ``spec`` once and keeps it for its next jobs. ``job`` is the structure
    and, for a calculator that works in a folder (ASE's file-based calculators have a
    ``directory``), a folder of its own, so that jobs running at once never share one."""
    import json

    atoms, directory = job
    key = json.dumps([spec, kwargs or {}], sort_keys=True, default=str)
    teacher = _LOADED.get(key)
    if teacher is None:
        teacher = _LOADED[key] = load_teacher(spec, kwargs)
    if directory is not None and hasattr(teacher, "directory"):
        teacher.directory = directory
    return label(atoms, teacher, stress=stress)
