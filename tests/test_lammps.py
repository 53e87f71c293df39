"""The package's models in LAMMPS (ML-IAP unified): the same numbers as the ASE calculator.

Needs LAMMPS built with ML-IAP, PYTHON and MPI (scripts/build-lammps.sh, run by .ci/run).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111

from ase_nemp import NEMPCalculator
from ase_nemp.io import save
from ase_nemp.model import Committee
from ase_nemp.testing import random_model, tiny_configs

lammps = pytest.importorskip("lammps", reason="LAMMPS's Python module is not installed (bash scripts/build-lammps.sh)")
from ase_nemp.lammps import LammpsPotential, lammps_input, write_pointer  # noqa: E402

from .lammps_driver import run  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A two-layer NEMP model, a committee of three and an EquiREANN model, float64, on C, O, Pd."""
    root = tmp_path_factory.mktemp("lammps")
    configs = tiny_configs(species=(6, 8, 46), cutoff=3.0)
    nemp = configs["nemp"].replace(num_layers=2)
    save(random_model(nemp, seed=1), root / "nemp.pt")
    save(Committee([random_model(nemp, seed=s) for s in (2, 3, 4)]), root / "committee.pt")
    save(random_model(configs["equireann"], seed=5), root / "equireann.pt")
    save(random_model(configs["leignn-direct"], seed=6), root / "direct.pt")
    return root


def structures():
    """A periodic box, a slab (vacuum along z, not periodic there) and a triclinic cell, each
    with its cell in LAMMPS's orientation and smaller than twice the receptive field."""
    rng = np.random.default_rng(0)
    box = Atoms("Pd4C2O2", cell=np.diag([5.2, 5.0, 4.8]), pbc=True)
    box.positions = rng.uniform(0, 1, (8, 3)) @ box.cell
    slab = fcc111("Pd", (2, 2, 2), vacuum=5.0, orthogonal=False)
    slab += Atoms("CO", positions=slab.positions[-1] + [[0, 0, 1.9], [0, 0, 3.05]])
    slab.pbc = (True, True, False)
    tri = Atoms("Pd3CO2", cell=[[5.0, 0, 0], [1.3, 4.7, 0], [-0.8, 0.9, 5.1]], pbc=True)
    tri.positions = rng.uniform(0, 1, (6, 3)) @ tri.cell
    for atoms in (box, slab, tri):
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    return {"box": box, "slab": slab, "triclinic": tri}


def ase_results(model_file, atoms):
    atoms = atoms.copy()
    atoms.calc = NEMPCalculator(model_file)
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def lammps_results(model_file, atoms, dtype="float64", **kwargs):
    potential = LammpsPotential(model_file, dtype=dtype)
    out = run(atoms.positions, atoms.numbers, atoms.cell[:], atoms.pbc, potential, **kwargs)
    out["stats"] = dict(potential.stats)
    return out


@pytest.mark.parametrize("name", ["nemp", "committee", "equireann"])
@pytest.mark.parametrize("shape", ["box", "slab", "triclinic"])
def test_run_0_equals_the_ase_calculator(files, name, shape):
    atoms = structures()[shape]
    expected = ase_results(files / f"{name}.pt", atoms)
    got = lammps_results(files / f"{name}.pt", atoms)
    assert abs(expected["energy"]) > 1e-3 and np.abs(expected["forces"]).max() > 1e-3  # a model that acts
    assert got["energy"] == pytest.approx(expected["energy"], abs=1e-8)
    np.testing.assert_allclose(got["energies"], expected["energies"], atol=1e-8)
    np.testing.assert_allclose(got["forces"], expected["forces"], atol=1e-8)
    if "stress" in expected:  # the virial LAMMPS tallies from the pair forces
        np.testing.assert_allclose(got["stress"], expected["stress"], atol=1e-8)
    # on one rank every ghost is an image of a local atom: the model computes the local atoms only
    assert got["stats"]["calls"] >= 1 and got["stats"]["all_atoms"] == got["stats"]["local_atoms"]


def test_float32_is_close_to_float64(files):
    atoms = structures()["slab"]
    expected = ase_results(files / "nemp.pt", atoms)
    got = lammps_results(files / "nemp.pt", atoms, dtype="float32")
    assert got["energy"] == pytest.approx(expected["energy"], abs=1e-4)
    np.testing.assert_allclose(got["forces"], expected["forces"], atol=1e-4)


def mpirun(np_, job, out):
    mpi = shutil.which("mpirun")
    if mpi is None:
        pytest.skip("mpirun is not installed (bash scripts/build-lammps.sh installs OpenMPI)")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([mpi, "--oversubscribe", "-np", str(np_), sys.executable, str(HERE / "lammps_driver.py"),
                           str(job), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def wide_slab():
    """A periodic slab twice as wide as NEMP's receptive field along x, with C and O on top."""
    slab = fcc111("Pd", (6, 4, 2), vacuum=4.0, orthogonal=True)
    slab.pbc = True
    rng = np.random.default_rng(3)
    slab += Atoms("COO", positions=slab.positions[-3:] + [[0, 0, 1.9], [0.3, 0, 1.9], [0, 0.4, 2.0]])
    slab.positions += rng.normal(0, 0.05, slab.positions.shape)
    return slab


@pytest.mark.parametrize("name", ["nemp", "committee", "equireann"])
def test_two_mpi_ranks_equal_one(files, tmp_path, name):
    """Domain decomposition: a slab twice as wide as the receptive field, split between
    two ranks, gives the numbers of one rank: NEMP and its committee with the ghosts'
    features sent by their owners, EquiREANN recomputing its halo."""
    slab = wide_slab()
    job = tmp_path / "job.npz"
    np.savez(job, model=str(files / f"{name}.pt"), dtype="float64", positions=slab.positions, numbers=slab.numbers,
             cell=slab.cell[:], pbc=slab.pbc, velocities=np.zeros(0), steps=0)
    one, two = mpirun(1, job, tmp_path / "one.npz"), mpirun(2, job, tmp_path / "two.npz")
    assert (int(one["ranks"]), int(two["ranks"])) == (1, 2)
    assert float(two["energy"]) == pytest.approx(float(one["energy"]), abs=1e-8)
    np.testing.assert_allclose(two["forces"], one["forces"], atol=1e-8)
    np.testing.assert_allclose(two["stress"], one["stress"], atol=1e-8)
    np.testing.assert_allclose(one["forces"], ase_results(files / f"{name}.pt", slab)["forces"], atol=1e-8)
    exchanging = name != "equireann"
    assert bool(two["exchanged"]) == exchanging and int(one["beyond"]) == 0
    # the atoms computed beyond each rank's own: neighbours one cutoff deep (exchange), or a halo
    # 3 cutoffs deep, which on this narrow slab is the other rank's every atom
    beyond = int(two["beyond"])
    assert 0 < beyond < len(slab) if exchanging else beyond == len(slab), beyond


def test_md_on_two_ranks_follows_one_rank_while_atoms_change_ranks(files, tmp_path):
    """60 hot NVE steps on the wide slab: atoms cross between the two ranks and the ghosts
    change at every reneighbouring, the exchange is rebuilt each time, and the trajectory
    is that of one rank."""
    slab = wide_slab()
    velocities = np.random.default_rng(5).normal(0, 0.03, (len(slab), 3))  # Å/fs: about 1 Å in 60 steps
    job = tmp_path / "job.npz"
    np.savez(job, model=str(files / "nemp.pt"), dtype="float64", positions=slab.positions, numbers=slab.numbers,
             cell=slab.cell[:], pbc=slab.pbc, velocities=velocities, steps=60)
    one, two = mpirun(1, job, tmp_path / "one.npz"), mpirun(2, job, tmp_path / "two.npz")
    assert int(two["plans"]) >= 3  # the first, and one per reneighbouring at least twice
    np.testing.assert_allclose(two["etotal"], one["etotal"], atol=1e-8)
    np.testing.assert_allclose(two["positions"], one["positions"], atol=1e-8)
    np.testing.assert_allclose(two["forces"], one["forces"], atol=1e-7)
    assert np.abs(two["positions"] - slab.positions).max() > 0.5  # the atoms did move


def test_nve_in_lammps_conserves_energy_as_ase_does(files):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = structures()["box"]
    rng = np.random.default_rng(4)
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(300 * units.kB * atoms.get_masses())[:, None])
    velocities = atoms.get_velocities() * units.fs  # Å/fs
    md = atoms.copy()
    md.set_velocities(atoms.get_velocities())
    md.calc = NEMPCalculator(files / "nemp.pt")
    dyn = VelocityVerlet(md, 0.5 * units.fs)
    ase_total = []
    for _ in range(20):
        dyn.run(10)
        ase_total.append(md.get_total_energy())
    got = lammps_results(files / "nemp.pt", atoms, velocities=velocities, steps=200)
    ase_total, lmp_total = np.array(ase_total), got["etotal"]
    assert len(lmp_total) == 20
    # the same trajectory, step for step: the same total energy every 10 steps, the same positions
    np.testing.assert_allclose(lmp_total, ase_total, atol=1e-6)
    assert np.ptp(lmp_total) <= 1.01 * np.ptp(ase_total) + 1e-6
    shift = (got["positions"] - md.positions) @ np.linalg.inv(md.cell.array)  # LAMMPS wraps into the box
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-6)


def test_bad_models_and_species_get_clear_errors(files, tmp_path, capfd):
    with pytest.raises(ValueError, match="conservative"):
        LammpsPotential(files / "direct.pt")
    with pytest.raises(ValueError, match=r"atom types \['Au'\] are not species"):
        lammps_input(LammpsPotential(files / "nemp.pt"), "x", types=["Pd", "Au"])
    (tmp_path / "junk.pt").write_text("not a model")
    from ase_nemp.io import ModelFileError

    with pytest.raises(ModelFileError):
        write_pointer(tmp_path / "junk.pt", tmp_path / "junk.mliap")
    # LAMMPS itself naming an element the model lacks (pair_coeff): LAMMPS's error with the line, not a crash
    pointer = write_pointer(files / "nemp.pt", tmp_path / "nemp.mliap")
    from lammps.mliap import activate_mliappy

    def fresh():
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        lmp.commands_list(["units metal", "atom_style atomic", "region box block 0 6 0 6 0 6", "create_box 2 box",
                           "mass * 1.0", "create_atoms 1 single 1 1 1", "create_atoms 2 single 2 1 1"])
        activate_mliappy(lmp)
        return lmp

    lmp = fresh()
    lmp.command(f"pair_style mliap unified {pointer} 1")
    with pytest.raises(Exception, match="Incorrect args for pair coefficients"):
        lmp.command("pair_coeff * * Pd Au")
    lmp.close()
    # a model file edited after the pointer was written: the loader's own error, then LAMMPS's
    edited = tmp_path / "edited.pt"
    shutil.copyfile(files / "nemp.pt", edited)
    stale = write_pointer(edited, tmp_path / "edited.mliap")
    edited.write_text("edited")
    lmp = fresh()
    with pytest.raises(Exception, match="mliappy unified module failure"):
        lmp.command(f"pair_style mliap unified {stale} 1")
    lmp.close()
    assert "ModelFileError" in capfd.readouterr().err
    # the pointer holds the file's path, not its weights
    assert pointer.stat().st_size < 1000 and b"nemp.pt" in pointer.read_bytes()


def test_the_plain_lmp_executable_reads_the_pointer_file_under_mpirun(files, tmp_path):
    """`nemp lammps` writes the pointer and the input lines; the lmp executable (from
    scripts/build-lammps.sh) runs them on two MPI ranks and gives the ASE energy."""
    from ase.io import write

    from ase_nemp.cli import main

    lmp, mpi = shutil.which("lmp"), shutil.which("mpirun")
    if lmp is None or mpi is None:
        pytest.skip("the lmp executable or mpirun is not installed (bash scripts/build-lammps.sh)")
    slab = structures()["slab"]
    write(tmp_path / "slab.data", slab, format="lammps-data", specorder=["Pd", "C", "O"], masses=True)
    assert main(["lammps", str(files / "nemp.pt"), "--output", str(tmp_path / "m.mliap"), "--types", "Pd", "C", "O",
                 "--skin", "1.0"]) == 0
    assert main(["lammps", str(files / "nemp.pt"), "--output", str(tmp_path / "m.mliap")]) == 2  # never overwrites
    pair = lammps_input(LammpsPotential(files / "nemp.pt"), str(tmp_path / "m.mliap"), skin=1.0,
                        types=["Pd", "C", "O"])
    (tmp_path / "in.test").write_text("\n".join(
        ["units metal", "atom_style atomic", "boundary p p f", "read_data slab.data", "neighbor 1.0 bin", *pair,
         "thermo_style custom step pe", "thermo_modify format float %.12f", "run 0",
         # the potential folded the ghosts: it read the atoms' ids through the instance bind() kept
         'python nemp_folded input 1 SELF format p here "from lammps_probe import folded as nemp_folded"',
         "python nemp_folded invoke"]) + "\n")
    (tmp_path / "lammps_probe.py").write_text(
        "def folded(handle):\n    import ase_nemp.lammps as m\n"
        "    open(f\"bound-{m._BOUND.extract_setting('world_rank')}.txt\", 'w').write('yes')\n")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([mpi, "--oversubscribe", "-np", "2", lmp, "-in", "in.test", "-log", "none"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stdout.splitlines()
    energy = float(lines[lines.index(next(l for l in lines if l.split()[:2] == ["Step", "PotEng"])) + 1].split()[1])
    assert energy == pytest.approx(ase_results(files / "nemp.pt", slab)["energy"], abs=1e-8)
    assert sorted(f.name for f in tmp_path.glob("bound-*.txt")) == ["bound-0.txt", "bound-1.txt"]


def test_a_committee_writes_each_atom_s_energy_spread(files):
    """attach(..., spread=True): the members' standard deviation of each atom's energy, in a
    per-atom property LAMMPS can dump; the members' own per-atom energies give the same."""
    from ase_nemp import load
    from ase_nemp.model import committee_energy_forces_stress
    from ase_nemp.nl import build_graph

    atoms = structures()["box"]
    committee = load(files / "committee.pt")
    members = committee_energy_forces_stress(committee, build_graph(atoms, committee.cutoff), forces=False)
    expected = members["energies"].std(0, correction=1).numpy()
    assert expected.max() > 1e-4
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    a, b, c = atoms.cell[:].tolist()
    lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array sort 0 0", "boundary p p p",
                       f"region box prism 0 {a[0]} 0 {b[1]} 0 {c[2]} 0 0 0 units box", "create_box 3 box",
                       "mass * 1.0"])
    types = {"C": 1, "O": 2, "Pd": 3}
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), [types[s] for s in atoms.get_chemical_symbols()],
                     atoms.positions.ravel().tolist())
    lmp.command("neighbor 1.0 bin")
    potential = LammpsPotential(files / "committee.pt")
    potential.attach(lmp, types=["C", "O", "Pd"], skin=1.0, spread=True)
    lmp.command("run 0")
    got = np.array(lmp.gather("d_nemp_energy_spread", 1, 1))
    lmp.close()
    np.testing.assert_allclose(got, expected, atol=1e-10)
    with pytest.raises(ValueError, match="committee"):
        LammpsPotential(files / "nemp.pt").attach(None, spread=True)


def test_new_instances_while_other_python_threads_run(files):
    """The first ``pair_style mliap unified`` of each LAMMPS instance starts LAMMPS's embedded
    Python; the ``lammps`` module calls the library with the GIL released, and another
    Python thread running meanwhile (a Dask client's event loop, a progress bar's monitor)
    made that a segmentation fault at the second instance of the process. ``attach`` holds
    the GIL for that command, and puts back what LAMMPS's start changes in ``sys`` then
    (``argv``, ``prefix``). In a subprocess, so that a crash fails this test alone."""
    script = f"""
import sys, threading, time
import numpy as np
from ase import Atoms
from tests.lammps_driver import run
from ase_nemp.lammps import LammpsPotential

def churn():  # allocations and reference counting under the GIL, as any busy thread does
    while True:
        {{i: str(i) for i in range(200)}}
        time.sleep(0)

for _ in range(3):
    threading.Thread(target=churn, daemon=True).start()
atoms = Atoms("CO2", positions=[[3, 3, 3], [4.15, 3, 3], [1.85, 3, 3.1]], cell=np.diag([6.0, 6.0, 6.0]), pbc=True)
argv, prefix = list(sys.argv), sys.prefix
for k in range(5):
    out = run(atoms.positions, atoms.numbers, atoms.cell[:], atoms.pbc, LammpsPotential({str(files / "nemp.pt")!r}))
    assert (sys.argv, sys.prefix) == (argv, prefix), (sys.argv, sys.prefix)
    print("instance", k, out["energy"], flush=True)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
    energies = {line.split()[2] for line in proc.stdout.splitlines() if line.startswith("instance")}
    assert len(proc.stdout.splitlines()) == 5 and len(energies) == 1
