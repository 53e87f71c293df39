"""LammpsPotential.compute_forces fed the way LAMMPS's ML-IAP unified interface feeds it,
without LAMMPS: local atoms, ghost images out to the model's reach, the pairs within the
cutoff of every atom, and LAMMPS's own bookkeeping (f[i] += fij, f[j] -= fij, ghosts'
forces summed onto their owners, the virial from the pairs)."""

import itertools
import threading

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
    """The potential as attach() leaves it in library mode: it reads the atoms' ids (and,
    ``comm``, talks to the other ranks)."""

    comm = None

    def _tags(self, n):
        return self.data_tags[:n]

    def _communicator(self):
        return self.comm


class ThreadRanks:
    """The collective calls of mpi4py that FeatureExchange makes, for ranks that are
    threads of this process (``comm(rank)`` is rank ``rank``'s communicator)."""

    def __init__(self, size):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size, timeout=60)
        self.calls = 0

    def comm(self, rank):
        world = self

        class Comm:
            def Get_size(self):
                return world.size

            def Get_rank(self):
                return rank

            def _swap(self, value):
                world.slots[rank] = value
                world.barrier.wait()
                got = list(world.slots)
                world.barrier.wait()
                if rank == 0:
                    world.calls += 1
                return got

            def allreduce(self, value):
                return sum(self._swap(value))

            def Alltoall(self, send, recv):
                recv[:] = [row[rank] for row in self._swap(np.array(send))]

            def Alltoallv(self, send, recv):
                (sbuf, scounts), (rbuf, rcounts) = send, recv
                starts = np.concatenate([[0], np.cumsum(scounts)])
                pieces = self._swap([sbuf.ravel()[starts[k]:starts[k + 1]].copy() for k in range(world.size)])
                got = [theirs[rank] for theirs in pieces]
                assert [len(g) for g in got] == list(rcounts)  # what each rank said it sends
                rbuf.ravel()[:] = np.concatenate(got) if got else []

        return Comm()


def run_ranks(potentials, datas):
    """compute_forces of each rank in its own thread, as LAMMPS's ranks call it together."""
    errors = []

    def one(potential, data):
        try:
            potential.compute_forces(data)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=one, args=pair) for pair in zip(potentials, datas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


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
    # EquiREANN: ghosts as deep as its receptive field, with neighbour lists of their own
    model = random_model(configs["equireann"], seed=1)
    lines = lammps_input(LammpsPotential(model), "m.mliap", skin=1.0)
    assert lines[:3] == ["pair_style mliap unified m.mliap 1", "pair_coeff * * H C O",
                         f"comm_modify cutoff {model.receptive_hops * CUTOFF + 1.0:.3f}"]
    assert "SELF" in lines[3] and "bind as nemp_bind" in lines[3] and lines[4] == "python nemp_bind invoke"
    # NEMP receives its ghosts' features from their owners: LAMMPS's own ghost cutoff is enough
    model = random_model(configs["nemp"], seed=1)
    lines = lammps_input(LammpsPotential(model), "m.mliap", skin=1.0)
    assert lines[:2] == ["pair_style mliap unified m.mliap 0", "pair_coeff * * H C O"]
    assert "SELF" in lines[2] and lines[3] == "python nemp_bind invoke" and len(lines) == 4
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
    potential = WithTags(model, exchange=False)  # the halo recomputed on each rank
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


@pytest.mark.parametrize("name,ranks", [("nemp", 2), ("nemp", 3), ("committee", 2)])
def test_ranks_exchanging_features_give_the_periodic_results(name, ranks):
    """NEMP with its ghosts' features sent by their owners: each rank computes its own atoms
    only, from ghosts one cutoff deep, and the ranks together give the periodic energy,
    forces and virial. Three ranks: the directory rank of an id is mostly neither its
    owner nor the rank that asks."""
    model = model_named(name)
    atoms = random_crystal(n=6, seed=4).repeat((ranks * 2 + 1, 1, 1))
    atoms.calc = NEMPCalculator(model)
    world = ThreadRanks(ranks)
    potentials = [WithTags(model) for _ in range(ranks)]
    order = np.argsort(atoms.get_scaled_positions()[:, 0])
    datas = []
    for rank, (potential, local) in enumerate(zip(potentials, np.array_split(order, ranks))):
        potential.comm = world.comm(rank)
        datas.append(PairData(atoms, potential.element_types, CUTOFF + 0.5, local=local))
        potential.data_tags = datas[-1].tags
    run_ranks(potentials, datas)
    assert world.calls > 0 and all(p.stats["all_atoms"] < d.ntotal for p, d in zip(potentials, datas))
    energy = sum(d.energy for d in datas)
    forces = sum(d.owned_forces() for d in datas)
    virial = sum(d.virial for d in datas)
    assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-10)
    np.testing.assert_allclose(virial / atoms.get_volume(), atoms.get_stress(voigt=False), atol=1e-10)
    for potential, data in zip(potentials, datas):
        np.testing.assert_allclose(data.eatoms, atoms.get_potential_energies()[data.owner[:data.nlocal]], atol=1e-10)
        # no halo: the model computed the rank's own atoms and, as neighbours, each other rank's atom once
        neighbours = np.setdiff1d(data.tags[data.j[data.i < data.nlocal]], data.tags[:data.nlocal])
        assert len(neighbours) > 0 and potential.stats["all_atoms"] == data.nlocal + len(neighbours)
    # the atoms stayed on their ranks: the next call reuses the exchange without building it again
    plans = [p._plan for p in potentials]
    run_ranks(potentials, [PairData(atoms, p.element_types, CUTOFF + 0.5, local=d.owner[:d.nlocal])
                           for p, d in zip(potentials, datas)])
    assert all(p._plan is plan for p, plan in zip(potentials, plans))


def test_ghosts_without_ids_or_neighbour_lists_are_refused():
    """Ghost atoms one cutoff deep without neighbour lists (``pair_style mliap unified FILE 0``)
    and no LAMMPS instance handed over (an input without the python lines): the potential
    cannot know whose features they carry, and says so instead of returning wrong numbers."""
    model = model_named("nemp")
    atoms = random_crystal(n=5, seed=2)
    potential = LammpsPotential(model)
    data = PairData(atoms, potential.element_types, reach=CUTOFF)
    local = data.i < data.nlocal
    data.i, data.j, data.rij = data.i[local], data.j[local], data.rij[local]
    data.pair_i, data.jatoms, data.npairs = data.i.astype(np.int32), data.j.astype(np.int32), int(local.sum())
    with pytest.raises(RuntimeError, match="python lines"):
        potential.compute_forces(data)


@pytest.mark.parametrize("example,types", [("in.pdcoo", ["Pd", "C", "O"]), ("in.water", ["H", "O"])])
def test_the_example_inputs_carry_the_lines_nemp_lammps_prints(example, types):
    """examples/lammps: the pair lines of each input are those `nemp lammps` prints for a
    NEMP model (the shipped committee for in.pdcoo), so the examples follow the package."""
    from pathlib import Path

    from ase_nemp.pretrained import model_path

    text = (Path(__file__).resolve().parents[1] / "examples" / "lammps" / example).read_text()
    if example == "in.pdcoo":
        model = model_path("pd-co-o")
    else:
        model = random_model(tiny_configs(species=(1, 8), cutoff=CUTOFF)["nemp"], seed=1)
    pointer = example.replace("in.", "") + ".mliap"
    expected = lammps_input(LammpsPotential(model), pointer, skin=1.0, types=types)
    commands = [" ".join(line.split("#")[0].split()) for line in text.splitlines() if line.strip()]
    commands = [c for c in commands if c and c.split()[0] in ("pair_style", "pair_coeff", "comm_modify", "python")]
    assert commands == [" ".join(line.split()) for line in expected]


def test_nemp_lammps_writes_a_pointer_that_exchanges_or_recomputes_the_halo(tmp_path, capsys):
    """`nemp lammps`: by default the pointer file's potential exchanges NEMP's features and
    the input needs no deep ghosts; with --recompute-halo it recomputes the halo and the
    printed lines ask LAMMPS for it."""
    import pickle

    from ase_nemp.cli import main
    from ase_nemp.io import save

    model = save(model_named("nemp"), tmp_path / "nemp.pt")
    for flags, exchanges, style in (([], True, "0"), (["--recompute-halo"], False, "1")):
        pointer = tmp_path / f"m{len(flags)}.mliap"
        assert main(["lammps", str(model), "--output", str(pointer), "--skin", "1.0", *flags]) == 0
        printed = capsys.readouterr().out.splitlines()
        with open(pointer, "rb") as f:
            assert pickle.load(f).exchanges_features is exchanges
        assert f"pair_style mliap unified {pointer.resolve()} {style}" in printed
        assert any(line.startswith("comm_modify cutoff") for line in printed) is not exchanges
