"""Write the LAMMPS data files of the two example inputs (in.pdcoo, in.water).

    python examples/lammps/make_data.py [--repeat 2] [--waters 512]

pdcoo.data   the demo's initial state (CO + O on a 3x3 Pd(111) slab, 39 atoms) repeated
             ``--repeat`` x ``--repeat`` laterally; atom types 1 Pd, 2 C, 3 O; the two
             bottom Pd layers are the atoms the demo keeps fixed (group "fixed" in in.pdcoo
             selects them by height).
water.data   ``--waters`` water molecules on a cubic grid at 1 g/cm^3, randomly oriented;
             atom types 1 H, 2 O.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.io import write

HERE = Path(__file__).resolve().parent


def pdcoo(repeat: int) -> Atoms:
    from ase_nemp.demo import example_structures

    slab = example_structures()[0].repeat((repeat, repeat, 1))
    slab.set_constraint()
    return slab


def water(n: int, seed: int = 0) -> Atoms:
    side = round(n ** (1 / 3))
    if side ** 3 != n:
        raise SystemExit(f"--waters must be a cube (8, 64, 512, 4096 ...), got {n}")
    spacing = (18.015 / 0.6022) ** (1 / 3)  # Å per molecule at 1 g/cm^3
    rng = np.random.default_rng(seed)
    box = Atoms(cell=np.eye(3) * side * spacing, pbc=True)
    for ijk in np.ndindex(side, side, side):
        h2o = molecule("H2O")
        h2o.rotate(rng.uniform(0, 360), rng.normal(size=3))
        h2o.translate((np.array(ijk) + 0.5) * spacing - h2o.get_center_of_mass())
        box += h2o
    return box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--waters", type=int, default=512)
    args = parser.parse_args()
    write(HERE / "pdcoo.data", pdcoo(args.repeat), format="lammps-data", specorder=["Pd", "C", "O"], masses=True)
    write(HERE / "water.data", water(args.waters), format="lammps-data", specorder=["H", "O"], masses=True)
    print(f"wrote {HERE / 'pdcoo.data'} and {HERE / 'water.data'}")


if __name__ == "__main__":
    main()
