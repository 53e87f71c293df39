"""Neighbour lists: the C cell list and matscipy against a brute-force oracle, skin reuse, torch-cluster."""

import numpy as np
import pytest
import torch
from ase import Atoms

from ase_nemp.nl import (
    HAS_TORCH_CLUSTER,
    NeighbourList,
    brute_force_neighbour_list,
    build_graph,
    check_structure,
    matscipy_neighbour_list,
    torch_cluster_neighbour_list,
)
from ase_nemp.nl import cells
from ase_nemp.testing import evaluate, random_crystal, random_model


def edge_set(i, j, S):
    return sorted(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(S).tolist())))


def random_cell(rng, scale):
    cell = np.eye(3) * scale + rng.uniform(-0.45, 0.45, (3, 3)) * scale  # skewed
    if np.linalg.det(cell) < 0:
        cell[0] *= -1
    return cell


CASES = [
    ("tiny cubic, many images", (1.7, True, True, True)),
    ("skewed", (3.5, True, True, True)),
    ("slab (pbc x, y)", (3.0, True, True, False)),
    ("wire (pbc z)", (2.5, False, False, True)),
    ("mixed tiny", (1.3, True, False, True)),
]


def c_cells(positions, cell, pbc, cutoff):
    if not cells.available():
        pytest.skip("the C neighbour search needs the fused kernels (no C compiler)")
    i, j, S = cells.cell_list_neighbour_list(positions, cell, pbc, cutoff, threads=2)
    assert np.all(np.diff(i) >= 0)  # sorted by centre, as the kernels' CSR wants
    return i, j, S


ENGINES = {"matscipy": matscipy_neighbour_list, "cells": c_cells}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,spec", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", range(3))
def test_engines_match_brute_force(name, spec, seed, engine):
    rng = np.random.default_rng(seed)
    scale, *pbc = spec
    cell = random_cell(rng, scale)
    n = int(rng.integers(1, 7))
    positions = rng.uniform(-1.5, 2.5, (n, 3)) @ cell  # atoms well outside the cell too
    positions, cell, pbc = check_structure(positions, cell, pbc)
    cutoff = 3.1
    ours = ENGINES[engine](positions, cell, pbc, cutoff)
    ref = brute_force_neighbour_list(positions, cell, pbc, cutoff)
    assert edge_set(*ours) == edge_set(*ref)
    i, j, S = ours
    d = np.linalg.norm(positions[j] - positions[i] + S @ cell, axis=1)
    assert np.all(d < cutoff) and np.all(d > 0)
    if (np.linalg.norm(cell, axis=1)[pbc] < cutoff).any():
        assert (i == j).any(), "a lattice vector shorter than the cutoff must give self-images"


def test_molecule_without_cell_far_from_origin():
    rng = np.random.default_rng(0)
    atoms = Atoms("H6", positions=rng.uniform(0, 4, (6, 3)) + [1000.0, -500.0, 20.0])
    graph = build_graph(atoms, 3.0)
    ref = brute_force_neighbour_list(atoms.positions, np.eye(3), np.zeros(3, bool), 3.0)
    assert edge_set(*graph.edge_index.numpy(), graph.shifts.numpy().astype(int)) == edge_set(*ref)
    assert np.allclose(graph.cell[0].numpy(), np.eye(3))  # completed, not a giant box


@pytest.mark.parametrize(
    "atoms,message",
    [
        (Atoms(), "no atoms"),
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "non-finite"),
        (Atoms("H", cell=[[2, 0, 0], [0, 0, 0], [0, 0, 2]], pbc=True), "zero lattice vector"),
    ],
)
def test_bad_structures_are_named(atoms, message):
    with pytest.raises(ValueError, match=message):
        build_graph(atoms, 3.0)


def test_skin_reuse_equals_fresh_list():
    model = random_model(seed=2)
    atoms = random_crystal(n=8, seed=3)
    nl = NeighbourList(model.cutoff, skin=0.6)
    rng = np.random.default_rng(4)
    for step in range(12):
        atoms.positions += rng.normal(0, 0.04, atoms.positions.shape)
        reused = evaluate(model, build_graph(atoms, model.cutoff, neighbour_list=nl))
        fresh = evaluate(model, atoms)
        assert abs(reused["energy"] - fresh["energy"]) <= 1e-12 * abs(fresh["energy"])
        np.testing.assert_allclose(reused["forces"], fresh["forces"], atol=1e-12)
    assert nl.num_calls == 12 and 1 <= nl.num_builds < 12


def test_skin_rebuild_triggers():
    atoms = random_crystal(n=5, seed=5)
    nl = NeighbourList(3.0, skin=0.5)
    args = check_structure(atoms.positions, atoms.cell.array, atoms.pbc)
    nl(*args)
    pos, cell, pbc = args
    moved = pos.copy()
    moved[0, 0] += 0.24  # < skin/2: reuse
    nl(moved, cell, pbc)
    assert nl.num_builds == 1
    moved[0, 0] += 0.02  # now 0.26 > skin/2: rebuild
    nl(moved, cell, pbc)
    assert nl.num_builds == 2
    nl(moved, cell * 1.001, pbc)  # new cell: rebuild
    assert nl.num_builds == 3
    nl(moved, cell * 1.001, np.array([True, True, False]))  # new pbc: rebuild
    assert nl.num_builds == 4
    nl(moved, cell * 1.001, np.array([True, True, False]), np.arange(5))  # new atoms: rebuild
    assert nl.num_builds == 5
    without_skin = NeighbourList(3.0, skin=0.0)
    without_skin(*args)
    without_skin(*args)
    assert without_skin.num_builds == 2


@pytest.mark.skipif(not HAS_TORCH_CLUSTER, reason="torch-cluster is not installed (optional extra 'cluster')")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch-cluster path is used on CUDA devices only")
def test_torch_cluster_matches_matscipy():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 8, (60, 3))
    pos = torch.tensor(positions, device="cuda")
    ours = torch_cluster_neighbour_list(pos, 3.0).cpu().numpy()
    ref = matscipy_neighbour_list(positions, np.eye(3), np.zeros(3, bool), 3.0)
    assert edge_set(ours[0], ours[1], np.zeros((ours.shape[1], 3), int)) == edge_set(*ref)


@pytest.mark.parametrize("flatness", [1e-10, 1e-5, 1e-2, 0.3])
def test_nearly_flat_periodic_cells_are_refused_quickly(flatness):
    import time

    from ase import Atoms

    from ase_nemp.nl import build_graph

    cell = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, flatness]])
    atoms = Atoms("H2", positions=[[0, 0, 0], [1.0, 1.0, 0.0]], cell=cell, pbc=True)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"nearly flat: its height along lattice vector [0-2] is"):
        build_graph(atoms, 3.0)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("shape", ["dense box", "slab in a tall box", "molecule far away", "sparse gas"])
def test_c_cells_equal_matscipy_on_larger_structures(shape):
    """Hundreds of atoms: many slices per direction, the wrap at the cell's faces, open
    directions gridded over the atoms' extent, a grid capped for a nearly empty cell."""
    rng = np.random.default_rng(7)
    if shape == "dense box":
        cell, pbc = random_cell(rng, 14.0), (True, True, True)
        positions = rng.uniform(-0.2, 1.2, (600, 3)) @ cell
    elif shape == "slab in a tall box":
        cell, pbc = np.diag([12.0, 11.0, 80.0]), (True, True, False)
        positions = rng.uniform(0, 1, (400, 3)) * [12.0, 11.0, 9.0] + [0, 0, 30.0]
    elif shape == "molecule far away":
        cell, pbc = np.zeros((3, 3)), (False, False, False)
        positions = rng.uniform(0, 9, (300, 3)) + [1e4, -3e3, 50.0]
    else:
        cell, pbc = np.diag([400.0, 400.0, 400.0]), (True, True, True)
        positions = rng.uniform(0, 400, (50, 3))
    positions, cell, pbc = check_structure(positions, cell, np.array(pbc))
    ref = matscipy_neighbour_list(positions, cell, pbc, 4.0)
    got = c_cells(positions, cell, pbc, 4.0)
    assert len(ref[0]) > 0 or shape == "sparse gas"
    assert edge_set(*got) == edge_set(*ref)
    one_thread = cells.cell_list_neighbour_list(positions, cell, pbc, 4.0, threads=1, capacity=3)
    for a, b in zip(got, one_thread):  # the same list, in the same order, on any number of threads
        np.testing.assert_array_equal(a, b)


def test_neighbour_list_engines_give_the_same_model_results():
    """The calculator's list from either engine: the same energies and forces to round-off."""
    if not cells.available():
        pytest.skip("the C neighbour search needs the fused kernels (no C compiler)")
    model = random_model(seed=3)
    atoms = random_crystal(n=12, seed=5)
    graphs = {}
    for engine in ("cells", "matscipy"):
        nl = NeighbourList(model.cutoff, engine=engine)
        graphs[engine] = build_graph(atoms, model.cutoff, neighbour_list=nl)
    a, b = (evaluate(model, graphs[e]) for e in ("cells", "matscipy"))
    assert graphs["cells"].edge_index.shape[1] > 50
    np.testing.assert_allclose(a["energy"], b["energy"], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="engine"):
        NeighbourList(3.0, engine="kdtree")


def test_filtering_a_skin_list_keeps_exactly_the_pairs_within_the_cutoff(monkeypatch):
    """pairs_within (C) against numpy's filter: the same pairs, in the list's order."""
    rng = np.random.default_rng(2)
    cell = random_cell(rng, 9.0)
    positions = rng.uniform(0, 1, (80, 3)) @ cell
    pbc = np.ones(3, bool)
    i, j, S = matscipy_neighbour_list(positions, cell, pbc, 4.0)
    moved = positions + rng.normal(0, 0.2, positions.shape)
    got = cells.pairs_within(moved, cell, i, j, S, 3.5)
    monkeypatch.setattr(cells, "_library", lambda: None)
    expected = cells.pairs_within(moved, cell, i, j, S, 3.5)
    assert 0 < len(expected[0]) < len(i)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
