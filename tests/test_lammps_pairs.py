"""LammpsPotential.compute_forces fed the way LAMMPS's ML-IAP unified interface feeds it,
without LAMMPS: local atoms, ghost images out to the model's reach, the pairs within the
cutoff of every atom, and LAMMPS's own bookkeeping (f[i] += fij, f[j] -= fij, ghosts'
forces summed onto their owners, the virial from the pairs)."""

import itertools

import numpy as np
import pytest

from ase_nemp import NEMPCalculator
from ase_nemp.lammps import LammpsPotential, lammps_input
from ase_nemp.model import Committee
from ase_nemp.testing import random_crystal, random_model, tiny_configs

CUTOFF = 3.0


class PairData:
    """What ML-IAP hands to compute_forces for one rank that owns the atoms ``local`` of
    ``atoms`` (default: every atom): the other atoms and the periodic images out to
    ``reach`` of a local atom are its ghosts; ``tags`` are the LAMMPS ids (atom index + 1)."""

    def __init__(self, atoms, element_types, reach, local=None):
        cell = atoms.cell.array
        n = len(atoms)
        local = np.arange(n) if local is None else np.asarray(local)
        span = [int(np.ceil(reach / (abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[(k + 1) % 3],
                cell[(k + 2) % 3]))))) if atoms.pbc[k] else 0 for k in range(3)]
        others = np.setdiff1d(np.arange(n), local)
        positions, owners = [atoms.positions[local], atoms.positions[others]], [local, others]
        for shift in itertools.product(*(range(-s, s + 1) for s in span)):
            if any(shift):
                positions.append(atoms.positions + np.array(shift) @ cell)
                owners.append(np.arange(n))
        x, self.owner = np.concatenate(positions), np.concatenate(owners)
        # keep ghosts within reach of a local atom, as LAMMPS's ghost cutoff does
        near = np.linalg.norm(x[:, None, :] - atoms.positions[local][None, :, :], axis=2).min(1) <= reach
        near[: len(local)] = True
        x, self.owner = x[near], self.owner[near]
        self.tags = self.owner + 1
        d = x[None, :, :] - x[:, None, :]
        r = np.linalg.norm(d, axis=2)
        self.i, self.j = np.nonzero((r < CUTOFF) & (r > 0))
        self.ntotal, self.nlocal, self.nlistatoms, self.npairs = len(x), len(local), len(local), len(self.i)
        symbols = np.array(atoms.get_chemical_symbols())[self.owner]
        self.elems = np.array([element_types.index(s) for s in symbols], dtype=np.int32)
        self.pair_i, self.jatoms = self.i.astype(np.int32), self.j.astype(np.int32)
        self.rij = d[self.i, self.j]
        self.iatoms = np.arange(len(local), dtype=np.int32)
        self.f = np.zeros((len(x), 3))
        self.virial = np.zeros((3, 3))
        self.natoms = n

    def update_pair_forces(self, fij):
        np.add.at(self.f, self.i, fij)
        np.add.at(self.f, self.j, -fij)
        self.virial += self.rij.T @ fij  # sum of rij (x) fij, the pairs' virial

    def owned_forces(self):
        """The forces on every atom of the structure (ghosts' summed onto their owners)."""
        out = np.zeros((self.natoms, 3))
        np.add.at(out, self.owner, self.f)
        return out


class WithTags(LammpsPotential):
    """The potential as attach() leaves it in library mode: it reads the atoms' ids."""

    def _tags(self, n):
        return self.data_tags[:n]


@pytest.mark.parametrize("name", ["nemp", "equireann", "leignn-local", "committee"])
def test_local_energies_and_pair_forces_give_the_periodic_results(name):
    model = model_named(name)
    atoms = random_crystal(n=5, seed=2)
    potential = LammpsPotential(model)
    data = PairData(atoms, potential.element_types, reach=potential.hops * CUTOFF)
    assert data.ntotal > 10 * data.nlocal  # the ghosts are most of the graph here
    potential.compute_forces(data)
    calc = NEMPCalculator(model)
    atoms.calc = calc
    assert data.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(data.eatoms, atoms.get_potential_energies(), atol=1e-10)
    np.testing.assert_allclose(data.owned_forces(), atoms.get_forces(), atol=1e-10)
    # ASE's stress is the strain derivative over the volume; LAMMPS's virial is -sum rij (x) fij
    stress = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(data.virial / atoms.get_volume(), stress, atol=1e-10)
    # one cutoff less of ghosts is not enough: the local energies change
    short = PairData(atoms, potential.element_types, reach=(potential.hops - 1) * CUTOFF)
    potential.compute_forces(short)
    assert abs(short.energy - data.energy) > 1e-12


def test_models_that_domain_decomposition_cannot_split_are_refused():
    configs = tiny_configs(species=(1, 6, 8), cutoff=CUTOFF)
    with pytest.raises(ValueError, match="conservative"):
        LammpsPotential(random_model(configs["leignn-direct"], seed=1))
    with pytest.raises(ValueError, match="global node"):
        LammpsPotential(random_model(configs["leignn-conservative"], seed=1))
    model = random_model(configs["nemp"], seed=1)
    lines = lammps_input(LammpsPotential(model), "m.mliap", skin=1.0)
    assert lines[:3] == ["pair_style mliap unified m.mliap 1", "pair_coeff * * H C O",
                         f"comm_modify cutoff {model.receptive_hops * CUTOFF + 1.0:.3f}"]
    assert "SELF" in lines[3] and "bind as nemp_bind" in lines[3] and lines[4] == "python nemp_bind invoke"
    with pytest.raises(ValueError, match=r"atom types \['Fe'\]"):
        lammps_input(LammpsPotential(model), "m.mliap", types=["H", "Fe"])


def model_named(name):
    configs = tiny_configs(species=(1, 6, 8), cutoff=CUTOFF)
    if name == "committee":
        return Committee([random_model(configs["nemp"], seed=s) for s in (1, 2)])
    if name == "leignn-local":
        return random_model(configs["leignn-conservative"].replace(use_global=False), seed=1)
    return random_model(configs[name], seed=1)


@pytest.mark.parametrize("name", ["nemp", "equireann", "leignn-local", "committee"])
def test_folding_images_onto_their_owners_keeps_the_results_on_one_rank_and_two(name):
    """With the atoms' ids (library mode) the periodic images of an atom fold onto one: a
    rank's own atoms for theirs, the nearest image for another rank's atom. Two ranks, each
    owning half the atoms, sum to the periodic energy, forces and virial."""
    model = model_named(name)
    atoms = random_crystal(n=6, seed=4)
    atoms.calc = NEMPCalculator(model)
    potential = WithTags(model)
    reach = potential.hops * CUTOFF
    long = atoms.repeat((5, 1, 1))  # two ranks split it across a: the other rank's atoms lie at every depth
    long.calc = NEMPCalculator(model)
    halves = np.split(np.argsort(long.get_scaled_positions()[:, 0]), 2)
    for atoms, ranks in ((atoms, [np.arange(6)]), (long, halves)):
        n = len(atoms)
        energy, forces, virial, atoms_seen, ghosts = 0.0, np.zeros((n, 3)), np.zeros((3, 3)), 0, 0
        for local in ranks:
            data = PairData(atoms, potential.element_types, reach, local=local)
            potential.data_tags = data.tags
            before = potential.stats["all_atoms"]
            potential.compute_forces(data)
            atoms_seen += potential.stats["all_atoms"] - before
            ghosts += data.ntotal - data.nlocal
            np.testing.assert_allclose(data.eatoms, atoms.get_potential_energies()[local], atol=1e-10)
            energy, forces, virial = energy + data.energy, forces + data.owned_forces(), virial + data.virial
        assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(virial / atoms.get_volume(), atoms.get_stress(voigt=False), atol=1e-10)
        if len(ranks) == 1:  # every ghost folded: the model saw the six atoms, not the halo
            assert ghosts > 50 and atoms_seen == 6
        else:  # each rank computes the other rank's atoms it needs, each once
            assert ghosts > 100 and n < atoms_seen <= 2 * n
