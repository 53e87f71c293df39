"""The reference ("teacher") potential of the pd-co-o data as an ASE calculator.

The labels of ``../shared/data/pd_co_o`` come from the public EMLP potential for
Ag/Pd/C/H/O (a NequIP 0.5.6 TorchScript model, r_max 5 Å, eV and Å), published in the
GitHub repository HuGroup-shanghaiTech/REICO as ``Ag-Pd-C-H-O EMLP/Ag-Pd-C-H-O_EMLP.pth``.
That file is not part of this package: download it yourself and pass its path::

    from teacher import EMLPCalculator
    atoms.calc = EMLPCalculator("/path/to/Ag-Pd-C-H-O_EMLP.pth")

or name it in an active-learning config (``nemp learn``)::

    teacher:
      calculator: teacher:EMLPCalculator      # with benchmarks/pd_co_o on PYTHONPATH
      kwargs: {model: /path/to/Ag-Pd-C-H-O_EMLP.pth}

The path may also come from the environment variable ``EMLP_MODEL``. The calculator builds
the model's edge list with matscipy and passes NequIP's input dictionary (float32
positions, cell and shifts; ``atom_types`` shaped (N, 1)); it returns ``energy``,
``free_energy``, ``energies``, ``forces`` and, for structures periodic in all three
directions, ``stress`` (ASE's sign convention).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from matscipy.neighbours import neighbour_list

__all__ = ["EMLPCalculator"]

_LOAD_LOCK = threading.Lock()


class EMLPCalculator(Calculator):
    """ASE calculator for the EMLP NequIP TorchScript model (Ag, Pd, C, H, O).

    Parameters
    ----------
    model : str, optional
        Path of ``Ag-Pd-C-H-O_EMLP.pth``; defaults to ``$EMLP_MODEL``.
    threads : int, optional
        torch CPU threads for the evaluation (left as they are if None).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: str | None = None, threads: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        path = model or os.environ.get("EMLP_MODEL")
        if not path or not os.path.exists(path):
            raise FileNotFoundError(
                f"EMLP model file {path!r} not found: download 'Ag-Pd-C-H-O EMLP/Ag-Pd-C-H-O_EMLP.pth' from the "
                "GitHub repository HuGroup-shanghaiTech/REICO and pass its path (or set EMLP_MODEL)"
            )
        self.model_path = str(path)
        self.threads = threads
        extra = {"r_max": "", "type_names": ""}
        with _LOAD_LOCK:
            # the profiling executor re-specialises the graph for every new edge count: several times slower
            torch._C._jit_set_profiling_executor(False)
            self.model = torch.jit.load(self.model_path, map_location="cpu", _extra_files=extra)
        self.model.eval()
        self.r_max = float(extra["r_max"])
        names = extra["type_names"].decode().split() if isinstance(extra["type_names"], bytes) else str(extra["type_names"]).split()
        from ase.data import atomic_numbers

        self.type_of_z = {atomic_numbers[name]: k for k, name in enumerate(names)}
        self.num_calls = 0

    def _inputs(self, atoms) -> dict[str, torch.Tensor]:
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.type_of_z))
        if unknown:
            raise ValueError(f"the EMLP model knows {sorted(self.type_of_z)} (atomic numbers), not {unknown}")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = atoms.cell.array if pbc.any() else np.eye(3) * 1000.0
        i, j, S = neighbour_list("ijS", positions=atoms.positions, cell=cell, pbc=pbc, cutoff=self.r_max)
        if len(i) == 0:  # the model cannot take an empty edge list: one edge longer than r_max changes nothing
            i, j, S = np.array([0]), np.array([0]), np.array([[1, 0, 0]])
            cell = np.diag([2.0 * self.r_max, 1.0, 1.0]) if not pbc.any() else cell
        types = np.array([self.type_of_z[z] for z in atoms.numbers], dtype=np.int64)
        f32 = torch.float32
        return {
            "pos": torch.tensor(atoms.positions, dtype=f32),
            "edge_index": torch.tensor(np.stack([i, j]), dtype=torch.long),
            "edge_cell_shift": torch.tensor(S, dtype=f32),
            "cell": torch.tensor(np.asarray(cell), dtype=f32),
            "pbc": torch.tensor(pbc),
            "atom_types": torch.tensor(types).reshape(-1, 1),
        }

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        data = self._inputs(self.atoms)
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            out = self.model(data)
        finally:
            torch.set_num_threads(old_threads)
        self.num_calls += 1
        energy = float(out["total_energy"].detach().reshape(-1)[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["atomic_energy"].detach().double().numpy().reshape(-1),
            "forces": out["forces"].detach().double().numpy().reshape(-1, 3),
        }
        if self.atoms.pbc.all() and "stress" in out:
            stress = out["stress"].detach().double().numpy().reshape(3, 3)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
