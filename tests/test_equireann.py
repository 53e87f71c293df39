"""EquiREANN's own tests (design/equireann-model.md section 8, items 4, 5 and 9); the
shared invariants run for it in test_invariants.py."""

import numpy as np
import pytest
import torch
from ase import Atoms

from ase_nemp.model import EquiREANN, create_model, equireann
from ase_nemp.nl import build_graph
from ase_nemp.testing import evaluate, random_model, random_molecule, tiny_equireann_config

from ase_nemp.testing import random_rotation


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_equireann_config(), seed=7)


def test_energy_does_not_depend_on_the_harmonic_basis(model, monkeypatch):
    """Y_l -> Q_l Y_l with a random orthogonal Q_l per degree: only sums and squares of
    whole degrees enter, so the energy is unchanged (any coupling across m would show)."""
    atoms = random_molecule(n=8, seed=3, symbols="HCO")
    ref = evaluate(model, atoms)
    rng = np.random.default_rng(0)
    blocks = [np.linalg.qr(rng.normal(size=(2 * l + 1, 2 * l + 1)))[0] for l in range(model.config.sh_lmax + 1)]
    Q = torch.from_numpy(np.asarray(__import__("scipy").linalg.block_diag(*blocks)))
    original = equireann.normalized_spherical_harmonics
    monkeypatch.setattr(equireann, "normalized_spherical_harmonics", lambda v, L, eps: original(v, L, eps) @ Q.T)
    out = evaluate(model, atoms)
    assert abs(out["energy"] - ref["energy"]) <= 1e-12 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-11)
    # a transformation that mixes degrees does change it: the test can fail
    mixed = torch.from_numpy(np.linalg.qr(rng.normal(size=Q.shape))[0])
    monkeypatch.setattr(equireann, "normalized_spherical_harmonics", lambda v, L, eps: original(v, L, eps) @ mixed.T)
    assert abs(evaluate(model, atoms)["energy"] - ref["energy"]) > 1e-6


def test_receptive_field_is_t_plus_one_hops(model):
    """A chain with spacing 0.55 r_c (nearest neighbours only): moving atom k changes the
    energy of atom 0 for k <= T + 1 and leaves it exactly unchanged beyond."""
    T, rc = model.config.num_iterations, model.cutoff
    n = T + 5
    chain = Atoms("C" * n, positions=[[0.55 * rc * k, 0.0, 0.0] for k in range(n)])
    graph = build_graph(chain, rc)
    assert graph.num_edges == 2 * (n - 1)
    ref = model(graph)["energies"][0].item()
    for k in range(1, n):
        moved = chain.copy()
        moved.positions[k, 0] += 0.1
        e0 = model(build_graph(moved, rc))["energies"][0].item()
        if k <= T + 1:
            assert abs(e0 - ref) > 1e-9, f"atom {k} should reach atom 0"
        else:
            assert e0 == ref, f"atom {k} is beyond the receptive field"


def test_atomic_number_pair_embedding_equals_the_per_edge_mlp():
    """The pair MLP is evaluated once per species pair and gathered; per edge it must give the same."""
    model = random_model(tiny_equireann_config(species_input="atomic_number"), seed=8)
    atoms = random_molecule(n=9, seed=4, symbols="HCO")
    graph = build_graph(atoms, model.cutoff)
    species = model.species_index(graph.numbers)
    i, j = graph.edge_index
    z = graph.numbers.double()
    z_edge = (z[i] * z[j] / (z[i] + z[j]))[:, None]
    per_edge = model.pair_mlp(z_edge)
    table, _ = model.embeddings()
    S = model.config.num_species
    gathered = table[model.pair_row[species[i] * S + species[j]]]
    torch.testing.assert_close(gathered, per_edge, rtol=1e-13, atol=1e-13)


def test_rotation_of_a_periodic_cell(model):
    from ase_nemp.testing import random_crystal

    atoms = random_crystal(n=5, seed=9, symbols="HCO")
    R = random_rotation(np.random.default_rng(1))
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ R.T
    rotated.cell = atoms.cell.array @ R.T
    a, b = evaluate(model, atoms, stress=True), evaluate(model, rotated, stress=True)
    assert abs(a["energy"] - b["energy"]) <= 1e-10 * abs(a["energy"])
    np.testing.assert_allclose(b["forces"], a["forces"] @ R.T, atol=1e-10)
    np.testing.assert_allclose(b["stress"], R @ a["stress"] @ R.T, atol=1e-10)


def test_create_model_builds_presets_and_refuses_unknown_names():
    model = create_model("equireann", species=["H", "O"], preset="water", seed=1)
    assert isinstance(model, EquiREANN) and model.cutoff == 5.0 and model.config.num_orbitals == 64
    again = create_model("equireann", species=["H", "O"], preset="water", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))  # seeded
    with pytest.raises(ValueError, match="unknown architecture 'mace'"):
        create_model("mace", species=["H"])
    with pytest.raises(ValueError, match="num_orbitals must be >= 1"):
        create_model("equireann", species=["H"], num_orbitals=0)


def test_an_untrained_model_is_not_blind():
    """With the spec's zero output layers (``output_init="zero"``) a freshly built model is
    the constant 0: its forces on ethanol are exactly zero and so is the gradient of a
    force loss with respect to every parameter, so force training has nothing to follow
    until the energy loss has moved the readout. The default Xavier-normal output layers
    give forces and a force-loss gradient on every parameter tensor from the first step."""
    from ase.build import molecule

    from ase_nemp.model.derivatives import energy_forces_stress

    graph = build_graph(molecule("CH3CH2OH"), 4.0)
    for init in ("xavier", "zero"):
        model = create_model("equireann", species=["H", "C", "O"], preset="equi-nn", seed=0, output_init=init)
        forces = energy_forces_stress(model, graph, training=True)["forces"]
        loss = (forces ** 2).sum()
        # every parameter but the readout's last bias, a constant energy that no force sees
        constant = f"readout.net.{len(model.readout.net) - 1}.bias"
        names, params = zip(*[(n, p) for n, p in model.named_parameters() if n != constant])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        still = [n for n, g in zip(names, grads) if g is None or not bool(g.abs().max() > 0)]
        if init == "xavier":
            assert loss.item() > 0 and not still, f"no gradient reaches {still}"
        else:
            assert loss.item() == 0 and len(still) == len(names)
    with pytest.raises(ValueError, match="output_init must be one of"):
        create_model("equireann", species=["H"], output_init="uniform")
