"""The invariants of design/nemp-model.md section 8, on tiny random-weight models (float64),
for every architecture (NEMP; EquiREANN with both species inputs)."""

import numpy as np
import pytest
import torch
from ase import Atoms

from ase_nemp.graph import AtomicGraph
from ase_nemp.model import energy_forces_stress
from ase_nemp.nl import build_graph
from ase_nemp.testing import (CONSERVATIVE_ONLY, INVARIANTS, check_extensivity, check_invariants, check_rotation,
                               evaluate, random_crystal, random_model, random_molecule, tiny_config, tiny_configs)


ARCHITECTURES = list(tiny_configs())


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return random_model(tiny_configs()[request.param], seed=3)


def make_model(name, dtype=torch.float64):
    """Every architecture, and NEMP without its feature normalisation (three layers)."""
    if name == "nemp-without-feature-norm":
        return random_model(tiny_config(use_feature_norm=False, num_layers=3), seed=4, dtype=dtype)
    return random_model(tiny_configs()[name], seed=3, dtype=dtype)




def needs_conservative(model):
    if not model.conservative:
        pytest.skip("direct forces are not -dE/dx and have no stress (test_leignn.py checks them)")


def needs_locality(model):
    if getattr(model.config, "use_global", False):
        pytest.skip("LEIGNN's global node couples separated fragments (its caveat, checked in test_leignn.py)")


# -- 1-9: the invariants of ase_nemp.testing, in float64 and float32 ----------------------


CASES = [(name, check) for name in ARCHITECTURES + ["nemp-without-feature-norm"] for check in INVARIANTS
         if not (check in CONSERVATIVE_ONLY and not make_model(name).conservative)]  # direct forces: test_leignn.py


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, check", CASES)
def test_invariant(name, check, dtype):
    model = make_model(name, dtype)
    if check == "extensivity":
        check_extensivity(model, local=not getattr(model.config, "use_global", False))
    else:
        INVARIANTS[check](model)


def test_the_invariant_checks_catch_a_broken_model():
    """A model whose energy also depends on where the atoms are (not only on their relative
    positions) fails the rotation and translation checks; a zero model is refused as
    proving nothing."""

    class Anchored(type(random_model(tiny_config(), seed=3))):
        def network_energies(self, graph, species, fused=False):
            return super().network_energies(graph, species, fused) + 0.05 * graph.positions[:, 0] ** 2

    broken = Anchored(tiny_config(), dtype=torch.float64, seed=3)
    broken.load_state_dict(random_model(tiny_config(), seed=3).state_dict())
    with pytest.raises(AssertionError, match=r"(?s)rotation: .*translation: "):
        check_invariants(broken)
    flat = random_model(tiny_config(), seed=3)
    with torch.no_grad():
        for p in flat.parameters():
            p.zero_()
    with pytest.raises(AssertionError, match="constant"):
        check_rotation(flat)
    assert "stress" in check_invariants(random_model(tiny_config(), seed=3), only=["stress"])


@pytest.mark.parametrize("name", ARCHITECTURES + ["leignn-local"])
def test_receptive_hops_is_how_far_an_energy_sees(name):
    """On a chain spaced 0.75 cutoffs, moving atom k changes atom 0's energy exactly for
    k <= receptive_hops (what LAMMPS's ghost atoms must cover); None for a global node."""
    config = tiny_configs(cutoff=3.0)[name if name != "leignn-local" else "leignn-conservative"]
    if name == "leignn-local":
        config = config.replace(use_global=False)
    model = random_model(config, seed=3)
    chain = Atoms("C" * 9, positions=[[2.25 * k, 0, 0] for k in range(9)])
    ref = evaluate(model, chain)["energies"][0]
    seen = []
    for k in range(1, 9):
        moved = chain.copy()
        moved.positions[k, 0] += 0.1
        seen.append(evaluate(model, moved)["energies"][0] != ref)
    if model.receptive_hops is None:
        assert all(seen)
    else:
        assert seen == [k <= model.receptive_hops for k in range(1, 9)]


# -- 6: forces are minus the gradient ----------------------------------------------------


def test_gradcheck_on_five_atoms(model):
    graph = build_graph(random_molecule(n=5, seed=12), model.cutoff)
    species = model.species_index(graph.numbers)

    def energy(pos):
        return model.network_energies(graph._replace(positions=pos), species).sum()

    pos = graph.positions.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(energy, (pos,), eps=1e-6, atol=1e-7)


# -- 7: stress ---------------------------------------------------------------------------


def test_cluster_in_a_box_virial_identity(model):
    needs_conservative(model)
    atoms = random_molecule(n=7, seed=14)
    atoms.positions += 10.0
    atoms.cell = np.eye(3) * 30.0
    atoms.pbc = True
    out = evaluate(model, atoms, stress=True)
    expected = -(atoms.positions.T @ out["forces"])  # V sigma = -sum_i x_i^T F_i, symmetrised
    expected = 0.5 * (expected + expected.T)
    np.testing.assert_allclose(out["stress"] * atoms.get_volume(), expected, atol=1e-10)


# -- 8: smooth at the cutoff -------------------------------------------------------------


def test_dimer_beyond_cutoff_is_two_isolated_atoms_and_continuous(model):
    needs_conservative(model)
    cutoff = model.cutoff
    isolated = evaluate(model, Atoms("C"))["energy"] + evaluate(model, Atoms("O"))["energy"]
    grid = np.arange(cutoff - 0.4, cutoff + 0.05, 1e-3)
    energies, forces = [], []
    for r in grid:
        out = evaluate(model, Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]]))
        energies.append(out["energy"])
        forces.append(out["forces"][1, 0])
    energies, forces = np.array(energies), np.array(forces)
    beyond = grid >= cutoff
    assert np.all(energies[beyond] == isolated)
    # continuity: each 1e-3 step changes E by no more than the largest |dE/dr| allows
    steps = np.abs(np.diff(energies))
    bound = 1e-3 * np.maximum(np.abs(forces[1:]), np.abs(forces[:-1])) * 1.5 + 1e-3 * np.abs(forces).max() * 0.05
    assert np.all(steps <= bound + 1e-12)


# -- 9: size extensivity and batches -----------------------------------------------------


# -- 10, 11, 12: degenerate inputs -------------------------------------------------------


def test_isolated_atom(model):
    for symbol in "HCO":
        out = evaluate(model, Atoms(symbol))
        s = model.config.species.index(Atoms(symbol).numbers[0])
        assert out["energy"] == float(model.atomic_energies[s])  # exactly E0 (limits.py)
        assert np.all(out["forces"] == 0.0)


def test_isolated_atom_without_the_switch_keeps_the_readout_shift():
    model = random_model(tiny_config(isolated_atom_switch=None), seed=3)
    for symbol in "HCO":
        out = evaluate(model, Atoms(symbol))
        s = model.config.species.index(Atoms(symbol).numbers[0])
        expected = (model.force_rms * model.shift[s] + model.atomic_energies[s]).detach()
        assert out["energy"] == pytest.approx(float(expected), abs=1e-12)
        assert abs(out["energy"] - float(model.atomic_energies[s])) > 1e-3


def test_zero_length_edges_contribute_nothing(model):
    atoms = random_molecule(n=6, seed=21)
    graph = build_graph(atoms, model.cutoff)
    ref = evaluate(model, graph)
    padding = torch.tensor([[0, 3], [0, 3]])
    padded = graph._replace(
        edge_index=torch.cat([graph.edge_index, padding], dim=1),
        shifts=torch.cat([graph.shifts, torch.zeros(2, 3, dtype=graph.shifts.dtype)]),
    )
    out = evaluate(model, padded)
    assert abs(out["energy"] - ref["energy"]) <= 1e-12 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-12)


def test_coincident_atoms_are_finite(model):
    atoms = random_molecule(n=5, seed=22) + Atoms("H", positions=[[0, 0, 0]])
    atoms.positions[-1] = atoms.positions[0]
    graph = build_graph(atoms, model.cutoff)
    pair = torch.tensor([[0, len(atoms) - 1], [len(atoms) - 1, 0]])
    graph = graph._replace(
        edge_index=torch.cat([graph.edge_index, pair], dim=1),
        shifts=torch.cat([graph.shifts, torch.zeros(2, 3, dtype=graph.shifts.dtype)]),
    )
    out = evaluate(model, graph)
    assert np.isfinite(out["energy"]) and np.isfinite(out["forces"]).all()


def test_single_atom_in_a_small_cell(model):
    atoms = Atoms("C", cell=np.eye(3) * 2.0, pbc=True)
    graph = build_graph(atoms, model.cutoff)
    assert graph.num_edges > 0 and bool((graph.edge_index[0] == graph.edge_index[1]).all())
    out = evaluate(model, atoms, stress=model.conservative)
    assert np.isfinite(out["energy"]) and (not model.conservative or np.isfinite(out["stress"]).all())
    np.testing.assert_allclose(out["forces"], 0.0, atol=1e-12)
    assert out["energy"] != evaluate(model, Atoms("C"))["energy"]  # the images do interact


# -- 13: precision -----------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_float32_agrees_with_float64_on_200_atoms(architecture):
    cfg = tiny_configs(cutoff=3.0)[architecture]
    m64 = random_model(cfg, seed=5)
    m32 = random_model(cfg, seed=5, dtype=torch.float32)
    assert m32.dtype == torch.float32
    atoms = random_crystal(n=6, seed=23).repeat((4, 3, 3))[:200]
    atoms.pbc = False
    e64 = evaluate(m64, atoms)
    e32 = evaluate(m32, atoms)
    assert abs(e32["energy"] - e64["energy"]) <= 1e-5 * abs(e64["energy"])
    assert np.abs(e32["forces"] - e64["forces"]).max() <= 1e-4 * np.abs(e64["forces"]).max()


def test_training_mode_keeps_the_graph_for_force_losses(model):
    graph = build_graph(random_molecule(n=5, seed=24), model.cutoff)
    out = energy_forces_stress(model, graph, training=True)
    loss = (out["forces"] ** 2).sum()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    assert all(torch.isfinite(g).all() for g in grads)
    # a force loss reaches the weights (not the constant output biases, which move no force)
    assert sum(bool(g.abs().max() > 0) for g in grads) >= 0.75 * len(grads)
    inference = energy_forces_stress(model, graph)
    assert not inference["forces"].requires_grad


def test_unknown_element_is_named(model):
    with pytest.raises(ValueError, match=r"Fe.*H, C, O"):
        evaluate(model, Atoms("HFe", positions=[[0, 0, 0], [1, 0, 0]]))


def test_graph_device_and_dtype_move():
    graph = build_graph(random_molecule(n=3), 3.0, dtype=torch.float32)
    assert graph.positions.dtype == torch.float32 and graph.shifts.dtype == torch.float32
    g64 = graph.to(dtype=torch.float64)
    assert g64.positions.dtype == torch.float64 and g64.edge_index.dtype == torch.long
    assert isinstance(g64, AtomicGraph)


def test_float32_model_keeps_reference_energies_in_float64(tmp_path):
    from ase_nemp import load, save

    cfg = tiny_config()
    m64 = random_model(cfg, seed=6)
    m64.set_reference_energies([-13.568422178253735, -1026.8538996116154, -2037.796869412825])
    m32 = random_model(cfg, seed=6, dtype=torch.float32)
    m32.set_reference_energies(m64.atomic_energies.tolist())
    assert m32.atomic_energies.dtype == torch.float64
    atoms = random_molecule(n=10, seed=25)
    e64, e32 = evaluate(m64, atoms)["energy"], evaluate(m32, atoms)["energy"]
    # float32 rounding of ~1e3 eV references alone would cost ~1e-4 eV per atom
    assert abs(e32 - e64) < 2e-5, abs(e32 - e64)
    reloaded = load(save(m32, tmp_path / "m32.pt"))
    assert reloaded.dtype == torch.float32 and reloaded.atomic_energies.dtype == torch.float64
    assert torch.equal(reloaded.atomic_energies, m64.atomic_energies)
