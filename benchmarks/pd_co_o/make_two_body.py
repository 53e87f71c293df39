"""Two-body curves and molecular stretches labelled by the reference potential.

    EMLP_MODEL=/path/to/Ag-Pd-C-H-O_EMLP.pth python benchmarks/pd_co_o/make_two_body.py
    # writes benchmarks/pd_co_o/learn/two_body.extxyz

For every element pair of the pd-co-o data (C-O, O-O, C-C, Pd-C, Pd-O, Pd-Pd): a dimer in a
20 Å box from the repulsive wall to 5.5 Å (past the 5 Å cutoff), every 0.05 Å below 3 Å
and every 0.1 Å above. The reference potential itself collapses at very short distances
(about -300 eV at 0.5 Å for C-O, a NequIP artefact), so each curve starts where the
reference is still a wall: at the highest energy it reaches below its minimum, scanned down
to 0.5 Å every 0.01 Å, but not higher than 20 eV above the separated atoms. Then the
molecules' stretches: CO2 symmetric (C-O 0.95-1.6 Å) and antisymmetric (one C-O 0.95-1.6 Å,
the other at 1.17 Å), and bent CO2 (O-C-O 120-180 degrees).

Frames whose largest force component exceeds 40 eV/Å are left out (the data's own cap is
15 eV/Å; one such frame would dominate a training batch's force loss): below that the model's
built-in ZBL repulsion has to hold the wall.

Frames carry ``config_type`` ``two_body`` (``pair``, ``distance``) or ``molecule_stretch``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

HERE = Path(__file__).resolve().parent
PAIRS = ("CO", "OO", "CC", "PdC", "PdO", "PdPd")
BOX = 20.0
WALL_CAP = 20.0  # eV above the separated atoms
FORCE_CAP = 40.0  # eV/Å


def dimer(a: str, b: str, r: float) -> Atoms:
    return Atoms([a, b], positions=[[0, 0, 0], [r, 0, 0]], cell=[BOX] * 3, pbc=True)


def labelled(atoms: Atoms, calc, **info) -> Atoms:
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    out = atoms.copy()
    out.info.update(energy=float(energy), **info)
    out.arrays["forces"] = np.array(forces)
    return out


def wall_start(a: str, b: str, calc) -> float:
    """The shortest distance at which the reference is still a repulsive wall."""
    rs = np.arange(0.5, 3.0, 0.01)
    far = labelled(dimer(a, b, 6.0), calc).info["energy"]
    energies = np.array([labelled(dimer(a, b, r), calc).info["energy"] - far for r in rs])
    minimum = int(np.argmin(energies[rs > 0.9]) + np.count_nonzero(rs <= 0.9))
    top = int(np.argmax(energies[:minimum]))
    start = top
    while start < minimum and energies[start] > WALL_CAP:
        start += 1
    return float(rs[start])


def main() -> int:
    import sys

    sys.path.insert(0, str(HERE))
    from teacher import EMLPCalculator

    calc = EMLPCalculator(threads=1)
    frames = []
    for pair in PAIRS:
        a, b = re.findall("[A-Z][a-z]?", pair)
        r0 = wall_start(a, b, calc)
        grid = np.concatenate([np.arange(r0, 3.0, 0.05), np.arange(3.0, 5.51, 0.1)])
        for r in grid:
            frames.append(labelled(dimer(a, b, r), calc, config_type="two_body", pair=f"{a}-{b}",
                                   distance=round(float(r), 3)))
        print(f"{a}-{b}: {len(grid)} frames from {r0:.2f} Å")
    centre = np.full(3, BOX / 2)
    for r in np.arange(0.95, 1.61, 0.05):
        for kind, r2 in (("symmetric", r), ("antisymmetric", 1.17)):
            atoms = Atoms("OCO", positions=centre + [[-r, 0, 0], [0, 0, 0], [r2, 0, 0]], cell=[BOX] * 3, pbc=True)
            frames.append(labelled(atoms, calc, config_type="molecule_stretch", molecule="CO2", stretch=kind,
                                   distance=round(float(r), 3)))
    for angle in np.arange(120.0, 180.1, 10.0):
        theta = np.radians(angle) / 2
        positions = centre + 1.17 * np.array([[-np.sin(theta), np.cos(theta), 0], [0, 0, 0],
                                              [np.sin(theta), np.cos(theta), 0]])
        atoms = Atoms("OCO", positions=positions, cell=[BOX] * 3, pbc=True)
        frames.append(labelled(atoms, calc, config_type="molecule_stretch", molecule="CO2", stretch="bend",
                               angle=float(angle)))
    kept = [f for f in frames if np.abs(f.arrays["forces"]).max() <= FORCE_CAP]
    out = HERE / "learn" / "two_body.extxyz"
    write(out, kept, format="extxyz")
    print(f"{out}: {len(kept)} frames ({len(frames) - len(kept)} above {FORCE_CAP} eV/Å left out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
