"""Physics where there is no data (ase_nemp.model.limits): the isolated-atom limit and ZBL."""

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.data import covalent_radii

from ase_nemp.model import energy_forces_stress
from ase_nemp.nl import build_graph
from ase_nemp.testing import evaluate, random_crystal, random_model, random_molecule, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(species=(6, 8, 46), zbl=True), seed=5)


def zbl_reference(z1, z2, r, scale=0.6):
    """The universal ZBL pair energy (eV), written out independently of the package."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = 0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.4029 * x) \
        + 0.02817 * np.exp(-0.20162 * x)
    rmax = scale * (covalent_radii[z1] + covalent_radii[z2])
    u = r / rmax
    env = 1 - 28 * u**6 + 48 * u**7 - 21 * u**8 if u < 1 else 0.0
    return 14.399645 * z1 * z2 / r * phi * env


def fd_forces(model, atoms, h=1e-5):
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, c] += h
            minus.positions[a, c] -= h
            forces[a, c] = -(evaluate(model, plus)["energy"] - evaluate(model, minus)["energy"]) / (2 * h)
    return forces


# -- the isolated-atom limit ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_atom_alone_has_exactly_its_reference_energy(model, dtype):
    m = copy.deepcopy(model).to(dtype)
    for symbol in ("C", "O", "Pd"):
        s = m.config.species.index(Atoms(symbol).numbers[0])
        for fused in (True, False):
            graph = build_graph(Atoms(symbol), m.cutoff, dtype=dtype)
            out = energy_forces_stress(m, graph, training=not fused)
            assert float(out["energy"].detach()) == float(m.atomic_energies[s])
            assert torch.all(out["forces"] == 0)


def test_fragments_beyond_the_cutoff_add_up(model):
    co = Atoms("CO", positions=[[0, 0, 0], [1.15, 0, 0]])
    cluster = Atoms("Pd3O", positions=[[0, 0, 0], [2.7, 0, 0], [1.35, 2.3, 0], [1.35, 0.8, 1.2]])
    cluster.positions += [0.0, 0.0, model.cutoff + 1.2]  # every pair across the gap beyond the cutoff
    together = evaluate(model, co + cluster)
    apart = [evaluate(model, co), evaluate(model, cluster)]
    assert together["energy"] == pytest.approx(apart[0]["energy"] + apart[1]["energy"], abs=1e-10)
    np.testing.assert_allclose(together["energies"], np.concatenate([a["energies"] for a in apart]), atol=1e-12)
    np.testing.assert_allclose(together["forces"], np.concatenate([a["forces"] for a in apart]), atol=1e-12)


def test_an_atom_leaving_goes_smoothly_to_its_reference_energy():
    """A C-O pair pulled apart: the network energy fades with the coordination, smoothly."""
    model = random_model(tiny_config(), seed=6)  # no ZBL: the switch alone
    e0 = float(model.atomic_energies[1] + model.atomic_energies[2])
    grid = np.linspace(1.0, model.cutoff + 0.1, 400)
    energies, forces = [], []
    for r in grid:
        out = evaluate(model, Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]]))
        energies.append(out["energy"])
        forces.append(out["forces"][1, 0])
    energies, forces = np.array(energies), np.array(forces)
    assert np.all(energies[grid >= model.cutoff] == e0)
    assert abs(energies[0] - e0) > 1e-2  # the network does contribute when the atoms are close
    # continuity of E and F: each step changes E by what the forces allow, F without jumps
    dr = grid[1] - grid[0]
    assert np.all(np.abs(np.diff(energies)) <= dr * np.maximum(np.abs(forces[1:]), np.abs(forces[:-1])) * 1.5 + 1e-9)
    assert np.abs(np.diff(forces)).max() < 50 * dr * np.abs(forces).max() + 1e-9


def test_forces_are_the_gradient_where_the_switch_acts():
    model = random_model(tiny_config(), seed=6)
    # two atoms at 0.75 of the cutoff (coordination ~ 0.01, deep in the switch) and one pair closer
    atoms = Atoms("COH", positions=[[0, 0, 0], [0.75 * model.cutoff, 0, 0], [0.3, 0.62 * model.cutoff, 0.4]])
    graph = build_graph(atoms, model.cutoff)
    for fused in (True, False):
        out = energy_forces_stress(model, graph, training=not fused)
        np.testing.assert_allclose(out["forces"].detach().numpy(), fd_forces(model, atoms), atol=1e-7)


def test_switch_changes_nothing_for_well_coordinated_atoms():
    with_switch = random_model(tiny_config(), seed=2)
    without = random_model(tiny_config(isolated_atom_switch=None), seed=2)
    atoms = random_crystal(n=6, seed=3)  # every atom has several close neighbours
    a, b = evaluate(with_switch, atoms, stress=True), evaluate(without, atoms, stress=True)
    np.testing.assert_allclose(a["energies"], b["energies"], atol=1e-12)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-12)


# -- ZBL ------------------------------------------------------------------------------------


def test_zbl_adds_the_universal_pair_repulsion(model):
    plain = random_model(tiny_config(species=(6, 8, 46), zbl=False), seed=5)
    for pair, z in (("CO", (6, 8)), ("PdPd", (46, 46)), ("OPd", (8, 46))):
        rmax = 0.6 * (covalent_radii[z[0]] + covalent_radii[z[1]])
        for r in (0.3, 0.6 * rmax, 0.95 * rmax, 1.05 * rmax):
            atoms = Atoms(pair, positions=[[0, 0, 0], [r, 0, 0]])
            extra = evaluate(model, atoms)["energy"] - evaluate(plain, atoms)["energy"]
            assert extra == pytest.approx(zbl_reference(*z, r), rel=1e-6, abs=1e-9)


def test_two_atoms_cannot_be_pushed_onto_each_other(model):
    far = evaluate(model, Atoms("Pd2", positions=[[0, 0, 0], [2.7, 0, 0]]))
    close = evaluate(model, Atoms("Pd2", positions=[[0, 0, 0], [0.001, 0, 0]]))
    assert close["energy"] - far["energy"] > 1e6  # eV: ZBL at 1 mÅ is ~3e7 eV
    assert close["forces"][1, 0] > 1e6 and close["forces"][0, 0] < -1e6  # pushed apart
    assert np.isfinite(close["forces"]).all()
    energies = [evaluate(model, Atoms("Pd2", positions=[[0, 0, 0], [r, 0, 0]]))["energy"] for r in (0.2, 0.5, 1.0)]
    assert energies[0] > energies[1] > energies[2]


def test_zbl_forces_and_stress_are_derivatives(model):
    atoms = Atoms("PdOC", positions=[[0, 0, 0], [0.7, 0.2, 0.1], [0.3, 0.5, -0.4]])
    for fused in (True, False):
        out = energy_forces_stress(model, build_graph(atoms, model.cutoff), training=not fused)
        np.testing.assert_allclose(out["forces"].detach().numpy(), fd_forces(model, atoms, h=1e-6), rtol=1e-6, atol=1e-5)
    crystal = random_crystal(n=4, seed=2, symbols=["C", "O", "Pd"], min_dist=0.8)
    stress = evaluate(model, crystal, stress=True)["stress"]
    h, numeric = 1e-6, np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            strain = np.eye(3)
            energies = []
            for sign in (1, -1):
                strain[a, b] = sign * h + (1.0 if a == b else 0.0)
                strained = crystal.copy()
                strained.set_cell(crystal.cell.array @ strain, scale_atoms=True)
                energies.append(evaluate(model, strained)["energy"])
            numeric[a, b] = (energies[0] - energies[1]) / (2 * h) / crystal.get_volume()
    numeric = 0.5 * (numeric + numeric.T)
    np.testing.assert_allclose(stress, numeric, atol=1e-6)


def test_zbl_switches_off_smoothly(model):
    """Beyond r_ab ZBL adds nothing; inside, its force vanishes like (r_ab - r)^2 (the
    envelope's triple zero), so energy and force are continuous at r_ab."""
    rmax = 0.6 * (covalent_radii[8] + covalent_radii[46])
    plain = random_model(tiny_config(species=(6, 8, 46), zbl=False), seed=5)

    def zbl_force(r):
        atoms = Atoms("OPd", positions=[[0, 0, 0], [r, 0, 0]])
        return np.abs(evaluate(model, atoms)["forces"] - evaluate(plain, atoms)["forces"]).max()

    assert zbl_force(rmax + 1e-4) == 0.0
    near, nearer = zbl_force(rmax - 1e-3), zbl_force(rmax - 1e-4)
    assert 0 < nearer < 1e-4 and near / nearer == pytest.approx(100, rel=0.05)


def test_random_structures_agree_between_fused_and_eager_paths(model):
    atoms = random_molecule(n=7, seed=3, symbols=["C", "O", "Pd"], min_dist=0.7)
    graph = build_graph(atoms, model.cutoff)
    fused = energy_forces_stress(model, graph)
    eager = energy_forces_stress(model, graph, training=True)
    assert float(fused["energy"]) == pytest.approx(float(eager["energy"].detach()), abs=1e-10)
    np.testing.assert_allclose(fused["forces"].numpy(), eager["forces"].detach().numpy(), atol=1e-10)
