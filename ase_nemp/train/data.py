"""Training data: labelled structures, reference energies, neighbour lists and batches.

Labels are looked up under configurable keys, first in ``atoms.info`` /
``atoms.arrays`` and then in the results of an attached calculator (what
``ase.io.read`` makes of an extxyz file with ``energy=...`` and ``forces``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from ..graph import AtomicGraph, collate
from ..nl import build_graph

__all__ = [
    "LabelKeys",
    "Sample",
    "get_labels",
    "fit_atomic_energies",
    "isolated_atom_energies",
    "build_samples",
    "Batch",
    "make_batch",
    "split_indices",
]


@dataclass(frozen=True)
class LabelKeys:
    """Where the labels are stored: ``info``/``arrays`` keys or calculator results."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"


@dataclass
class Sample:
    """One labelled structure with its neighbour list, built once and reused every epoch."""

    graph: AtomicGraph
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None  # (3, 3) or None
    config_type: str = "Default"
    index: int = -1
    weight: float = 1.0  # of this structure's terms in the loss (training.config_type_weights)

    @property
    def num_atoms(self) -> int:
        return self.graph.num_atoms


def _available_keys(atoms: Atoms) -> list[str]:
    keys = [f"info:{k}" for k in atoms.info] + [f"arrays:{k}" for k in atoms.arrays if k not in ("numbers", "positions")]
    if atoms.calc is not None:
        keys += [f"calc:{k}" for k in getattr(atoms.calc, "results", {})]
    return keys


def _lookup(atoms: Atoms, key: str, per_atom: bool):
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    results = getattr(atoms.calc, "results", None) if atoms.calc is not None else None
    if results and key in results:
        return results[key]
    return None


def get_labels(atoms: Atoms, keys: LabelKeys, index: int, need_forces: bool = True):
    """``(energy, forces, stress or None)`` of one structure, or ValueError naming what is missing."""
    energy = _lookup(atoms, keys.energy, per_atom=False)
    forces = _lookup(atoms, keys.forces, per_atom=True)
    missing = [name for name, value, needed in (("energy", energy, True), ("forces", forces, need_forces))
               if needed and value is None]
    if missing:
        raise ValueError(
            f"structure {index} ({atoms.get_chemical_formula()}) has no {' or '.join(missing)} label "
            f"(looked for key(s) {', '.join(repr(getattr(keys, m)) for m in missing)}); it has: "
            f"{', '.join(_available_keys(atoms)) or 'no labels at all'}"
        )
    energy = float(np.asarray(energy).reshape(()))
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"structure {index}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    if not np.isfinite(energy) or (forces is not None and not np.isfinite(forces).all()):
        raise ValueError(f"structure {index} has non-finite energy or forces")
    stress = _lookup(atoms, keys.stress, per_atom=False)
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    return energy, forces, stress


def isolated_atom_energies(frames: Iterable[Atoms], keys: LabelKeys = LabelKeys()) -> dict[int, float]:
    """Energies of single-atom structures, by atomic number (e.g. ``isolated_atoms.xyz``)."""
    out: dict[int, float] = {}
    for k, atoms in enumerate(frames):
        if len(atoms) != 1:
            raise ValueError(f"isolated-atom structure {k} has {len(atoms)} atoms, expected 1")
        energy, _, _ = get_labels(atoms, keys, k, need_forces=False)
        out[int(atoms.numbers[0])] = energy
    return out


def fit_atomic_energies(numbers_list: Sequence[np.ndarray], energies: Sequence[float], species: Sequence[int]) -> np.ndarray:
    """Least-squares per-element energies: ``E_g ~ sum_s n_gs e_s`` over the structures.

    Returns one energy per entry of ``species``. Elements that never vary independently
    (e.g. always in the same ratio) get the minimum-norm solution of the degenerate part.
    """
    species = list(species)
    counts = np.zeros((len(energies), len(species)))
    for g, numbers in enumerate(numbers_list):
        for s, z in enumerate(species):
            counts[g, s] = np.count_nonzero(np.asarray(numbers) == z)
    solution, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=np.float64), rcond=None)
    return solution


def build_samples(
    frames: Sequence[Atoms],
    cutoff: float,
    keys: LabelKeys = LabelKeys(),
    species: Sequence[int] | None = None,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> list[Sample]:
    """Label and neighbour-list every structure once (float64 tensors on the CPU).

    ``indices`` are the structures' positions in their file, used in error messages.
    """
    from tqdm.auto import tqdm

    known = None if species is None else set(int(z) for z in species)
    samples = []
    iterator = tqdm(frames, desc="neighbour lists", disable=not progress, leave=False)
    for k, atoms in enumerate(iterator):
        index = int(indices[k]) if indices is not None else k
        energy, forces, stress = get_labels(atoms, keys, index)
        if known is not None:
            unknown = sorted(set(atoms.numbers.tolist()) - known)
            if unknown:
                raise ValueError(f"structure {index} contains {', '.join(chemical_symbols[z] for z in unknown)}, "
                                 f"which the model does not know ({', '.join(chemical_symbols[z] for z in sorted(known))})")
        if stress is not None and not atoms.pbc.all():
            stress = None
        graph = build_graph(atoms, cutoff, dtype=torch.float64)
        samples.append(Sample(graph, energy, forces, stress, str(atoms.info.get("config_type", "Default")), index))
    return samples


@dataclass
class Batch:
    """Several samples joined into one graph, with their targets as tensors."""

    graph: AtomicGraph
    energy: torch.Tensor  # (B,)
    forces: torch.Tensor  # (N, 3)
    stress: torch.Tensor  # (B, 3, 3), zeros where absent
    has_stress: torch.Tensor  # (B,) bool
    num_atoms: torch.Tensor  # (B,)
    samples: list[Sample] = field(repr=False, default_factory=list)
    weight: torch.Tensor | None = None  # (B,) float64, each structure's weight in the loss; None: all 1

    def to(self, device: torch.device, dtype: torch.dtype) -> "Batch":
        # energies stay float64: totals of 1e3 eV would lose 1e-4 eV per structure in float32,
        # and the model's energies are float64 too (its reference energies are)
        return Batch(self.graph.to(device, dtype), self.energy.to(device), self.forces.to(device, dtype),
                     self.stress.to(device, dtype), self.has_stress.to(device), self.num_atoms.to(device), self.samples,
                     None if self.weight is None else self.weight.to(device))


def make_batch(samples: Sequence[Sample]) -> Batch:
    graph = collate([s.graph for s in samples])
    return Batch(
        graph=graph,
        energy=torch.tensor([s.energy for s in samples], dtype=torch.float64),
        forces=torch.from_numpy(np.concatenate([s.forces for s in samples])),
        stress=torch.from_numpy(np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in samples])),
        has_stress=torch.tensor([s.stress is not None for s in samples]),
        num_atoms=torch.tensor([s.num_atoms for s in samples]),
        samples=list(samples),
        weight=(torch.tensor([s.weight for s in samples], dtype=torch.float64)
                if any(s.weight != 1.0 for s in samples) else None),
    )


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut off ``valid_fraction`` for validation."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(valid_fraction * n))
    if valid_fraction > 0 and n_valid == 0:
        n_valid = 1
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])
