"""LEIGNN's own tests (design/leignn-model.md section 9); the shared invariants run for it,
in both force modes, in test_invariants.py."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from ase_nemp import NEMPCalculator, collate, create_model
from ase_nemp.model import LEIGNN, LEIGNNConfig, energy_forces_stress
from ase_nemp.nl import build_graph
from ase_nemp.testing import evaluate, random_crystal, random_model, random_molecule, tiny_leignn_config

from ase_nemp.testing import random_rotation


def two_fragments(separation):
    a = random_molecule(n=4, seed=1, symbols="CO", min_dist=1.1)
    b = random_molecule(n=3, seed=2, symbols="HO", min_dist=1.0)
    b.positions += [separation, 0.0, 0.0]
    return a, b, a + b


def test_the_global_node_couples_separated_fragments_and_without_it_they_are_independent():
    """The paper's caveat as a regression test: with the global node two molecules far
    beyond any edge path still change each other's energy; without it they do not."""
    cfg = tiny_leignn_config(force_mode="conservative")
    a, b, both = two_fragments(3 * cfg.num_layers * cfg.cutoff)
    coupled = random_model(cfg, seed=1)
    gap = evaluate(coupled, both)["energy"] - evaluate(coupled, a)["energy"] - evaluate(coupled, b)["energy"]
    assert abs(gap) > 1e-6
    local = random_model(cfg.replace(use_global=False), seed=1)
    gap = evaluate(local, both)["energy"] - evaluate(local, a)["energy"] - evaluate(local, b)["energy"]
    assert abs(gap) < 1e-10
    np.testing.assert_allclose(evaluate(local, both)["forces"][: len(a)], evaluate(local, a)["forces"], atol=1e-12)


def test_direct_forces_are_equivariant_but_not_the_energy_gradient():
    model = random_model(tiny_leignn_config(), seed=2)
    assert not model.conservative
    atoms = random_molecule(n=6, seed=3, symbols="HCO")
    out = evaluate(model, atoms)
    R = random_rotation(np.random.default_rng(4)) @ np.diag([-1.0, 1.0, 1.0])  # a rotation and a mirror
    moved = atoms.copy()
    moved.positions = atoms.positions @ R.T
    np.testing.assert_allclose(evaluate(model, moved)["forces"], out["forces"] @ R.T, atol=1e-10)
    graph = build_graph(atoms, model.cutoff)
    pos = graph.positions.clone().requires_grad_(True)
    energy = model(graph._replace(positions=pos))["energy"].sum()
    (gradient,) = torch.autograd.grad(energy, pos)
    assert np.abs(out["forces"] + gradient.numpy()).max() > 1e-3  # a different vector field altogether


def test_direct_calculator_refuses_stress_and_says_why():
    model = random_model(tiny_leignn_config(), seed=3)
    atoms = random_crystal(n=4, seed=5, symbols="CO")
    atoms.calc = NEMPCalculator(model)
    assert "stress" not in atoms.calc.implemented_properties and not atoms.calc.conservative
    assert np.isfinite(atoms.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match="direct head.*force_mode 'conservative'"):
        atoms.get_stress()
    conservative = NEMPCalculator(random_model(tiny_leignn_config(force_mode="conservative"), seed=3))
    atoms.calc = conservative
    assert atoms.get_stress().shape == (6,)


def test_remove_net_force_gives_zero_total_force_per_structure():
    model = random_model(tiny_leignn_config(remove_net_force=True), seed=4)
    graphs = [build_graph(random_molecule(n=n, seed=n, symbols="HCO"), model.cutoff) for n in (4, 7)]
    forces = energy_forces_stress(model, collate(graphs))["forces"]
    assert forces.abs().max() > 1e-3
    np.testing.assert_allclose(forces[:4].sum(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(forces[4:].sum(0), 0.0, atol=1e-12)
    plain = random_model(tiny_leignn_config(), seed=4)
    assert energy_forces_stress(plain, graphs[0])["forces"].sum(0).abs().max() > 1e-6  # it had a net force


@pytest.mark.parametrize("changes", [dict(update="painn"), dict(use_global=False),
                                     dict(update="painn", use_global=False, force_mode="conservative")])
def test_ablations_build_and_keep_the_symmetries(changes):
    model = random_model(tiny_leignn_config(**changes), seed=5)
    atoms = random_crystal(n=5, seed=6, symbols="HCO")
    ref = evaluate(model, atoms)
    R = random_rotation(np.random.default_rng(7))
    moved = atoms.copy()
    moved.positions = atoms.positions @ R.T
    moved.cell = atoms.cell.array @ R.T
    out = evaluate(model, moved)
    assert abs(out["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"] @ R.T, atol=1e-10)
    big = evaluate(model, atoms.repeat((2, 1, 1)))
    assert abs(big["energy"] - 2 * ref["energy"]) <= 1e-11 * abs(big["energy"])


def test_config_refuses_inconsistent_modes_and_presets_build():
    with pytest.raises(ValueError, match="radial_bias"):
        LEIGNNConfig(force_mode="conservative", radial_bias=True)
    with pytest.raises(ValueError, match="zbl needs force_mode 'conservative'"):
        LEIGNNConfig(zbl=True)
    with pytest.raises(ValueError, match="even"):
        LEIGNNConfig(num_channels=7)
    assert LEIGNNConfig(force_mode="direct").radial_bias and not LEIGNNConfig(force_mode="conservative").radial_bias
    model = create_model("leignn", species=["H", "O"], preset="small", seed=0)
    assert isinstance(model, LEIGNN) and model.config.num_channels == 64 and not model.conservative
    conservative = create_model("leignn", species=["H", "O"], preset="small", force_mode="conservative", seed=0)
    assert conservative.conservative
    assert np.isfinite(evaluate(model, Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))["energy"])
