"""The invariants of design/nemp-model.md section 8, on tiny random-weight models (float64),
for every architecture (NEMP; EquiREANN with both species inputs)."""

import numpy as np
import pytest
import torch
from ase import Atoms

from ase_nemp import collate
from ase_nemp.graph import AtomicGraph
from ase_nemp.model import energy_forces_stress
from ase_nemp.nl import build_graph
from ase_nemp.testing import evaluate, random_crystal, random_model, random_molecule, tiny_config, tiny_configs

from .test_angular import random_rotation


ARCHITECTURES = list(tiny_configs())


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return random_model(tiny_configs()[request.param], seed=3)


@pytest.fixture(scope="module", params=ARCHITECTURES + ["nemp-without-feature-norm"])
def any_model(request):
    """Every architecture, and NEMP without its feature normalisation (three layers)."""
    if request.param == "nemp-without-feature-norm":
        return random_model(tiny_config(use_feature_norm=False, num_layers=3), seed=4)
    return random_model(tiny_configs()[request.param], seed=3)


def needs_conservative(model):
    if not model.conservative:
        pytest.skip("direct forces are not -dE/dx and have no stress (test_leignn.py checks them)")


def needs_locality(model):
    if getattr(model.config, "use_global", False):
        pytest.skip("LEIGNN's global node couples separated fragments (its caveat, checked in test_leignn.py)")


def reflect(atoms, matrix):
    out = atoms.copy()
    out.positions = atoms.positions @ matrix.T
    if atoms.pbc.any():
        out.cell = atoms.cell.array @ matrix.T
    return out


# -- 1, 2, 5: rotations, reflections, force equivariance ---------------------------------


@pytest.mark.parametrize("periodic", [False, True])
def test_rotation_invariance_and_force_equivariance(model, periodic):
    atoms = random_crystal(seed=1) if periodic else random_molecule(seed=1)
    with_stress = periodic and model.conservative
    ref = evaluate(model, atoms, stress=with_stress)
    rot = random_rotation(np.random.default_rng(11))
    moved = reflect(atoms, rot)
    moved.positions += np.array([0.3, -1.7, 2.2])
    out = evaluate(model, moved, stress=with_stress)
    assert abs(out["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["energies"], ref["energies"], atol=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"] @ rot.T, atol=1e-10)
    if with_stress:
        np.testing.assert_allclose(out["stress"], rot @ ref["stress"] @ rot.T, atol=1e-10)


@pytest.mark.parametrize("matrix", [-np.eye(3), np.diag([-1.0, 1.0, 1.0])], ids=["inversion", "mirror"])
def test_reflection_invariance(model, matrix):
    atoms = random_molecule(seed=2)
    ref = evaluate(model, atoms)
    out = evaluate(model, reflect(atoms, matrix))
    assert abs(out["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"] @ matrix.T, atol=1e-10)


def test_rotation_changes_forces_so_the_test_can_fail(model):
    atoms = random_molecule(seed=1)
    rot = random_rotation(np.random.default_rng(11))
    ref = evaluate(model, atoms)["forces"]
    out = evaluate(model, reflect(atoms, rot))["forces"]
    assert np.abs(out - ref).max() > 1e-3  # forces rotate, they are not invariant


# -- 3: translation and wrapping ---------------------------------------------------------


def test_translation_and_lattice_shift_of_one_atom(model):
    atoms = random_crystal(seed=5)
    ref = evaluate(model, atoms)
    moved = atoms.copy()
    moved.positions += np.array([0.4, 0.1, -0.3])
    moved.positions[2] += atoms.cell.array.T @ np.array([1, -2, 1])
    out = evaluate(model, moved)
    assert abs(out["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-10)
    wrapped = moved.copy()
    wrapped.wrap()
    np.testing.assert_allclose(evaluate(model, wrapped)["forces"], ref["forces"], atol=1e-10)


# -- 4: permutations ---------------------------------------------------------------------


def test_permutation_of_atoms_and_edges(model):
    atoms = random_molecule(n=9, seed=6)
    ref = evaluate(model, atoms)
    perm = np.random.default_rng(0).permutation(len(atoms))
    out = evaluate(model, atoms[perm])
    assert abs(out["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["energies"], ref["energies"][perm], atol=1e-12)
    np.testing.assert_allclose(out["forces"], ref["forces"][perm], atol=1e-12)

    graph = build_graph(atoms, model.cutoff)
    order = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(1))
    shuffled = graph._replace(edge_index=graph.edge_index[:, order], shifts=graph.shifts[order])
    out = evaluate(model, shuffled)
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-12)


# -- 6: forces are minus the gradient ----------------------------------------------------


def near_cutoff_molecule(cutoff):
    """A cluster in which several pairs sit at 0.90-0.99 of the cutoff."""
    atoms = random_molecule(n=6, seed=8, size=2.5)
    extra = []
    rng = np.random.default_rng(9)
    for k, frac in enumerate([0.91, 0.95, 0.985]):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        extra.append(atoms.positions[k] + frac * cutoff * direction)
    return atoms + Atoms("HOC", positions=extra)


def finite_difference_forces(model, atoms, h=1e-5):
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, c] += sign * h
                energies.append(evaluate(model, moved)["energy"])
            forces[a, c] = -(energies[0] - energies[1]) / (2 * h)
    return forces


@pytest.mark.parametrize("kind", ["molecule_near_cutoff", "crystal"])
def test_forces_equal_finite_differences(model, kind):
    needs_conservative(model)
    atoms = near_cutoff_molecule(model.cutoff) if kind != "crystal" else random_crystal(n=5, seed=10)
    analytic = evaluate(model, atoms)["forces"]
    numeric = finite_difference_forces(model, atoms)
    scale = np.abs(analytic).max()
    assert scale > 1e-3
    np.testing.assert_allclose(analytic, numeric, atol=1e-6 * scale + 1e-9)


def test_gradcheck_on_five_atoms(model):
    graph = build_graph(random_molecule(n=5, seed=12), model.cutoff)
    species = model.species_index(graph.numbers)

    def energy(pos):
        return model.network_energies(graph._replace(positions=pos), species).sum()

    pos = graph.positions.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(energy, (pos,), eps=1e-6, atol=1e-7)


# -- 7: stress ---------------------------------------------------------------------------


def strained_energy(model, atoms, strain):
    deformed = atoms.copy()
    deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return evaluate(model, deformed)["energy"]


def test_stress_equals_strain_derivative(any_model):
    m = any_model
    needs_conservative(m)
    atoms = random_crystal(n=5, seed=13)
    stress = evaluate(m, atoms, stress=True)["stress"]
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    volume = atoms.get_volume()
    delta = 1e-5
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] += 0.5 * delta
            e[b, a] += 0.5 * delta
            numeric[a, b] = (strained_energy(m, atoms, e) - strained_energy(m, atoms, -e)) / (2 * delta) / volume
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, numeric, atol=1e-7 * np.abs(stress).max() + 1e-11)


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


def test_energy_and_forces_continuous_as_an_edge_crosses_the_cutoff(model):
    needs_conservative(model)
    cutoff = model.cutoff
    base = random_molecule(n=7, seed=15, size=2.4)
    rng = np.random.default_rng(3)
    for _ in range(200):  # a direction in which only the probe-anchor pair is near the cutoff
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        probe = base.positions[0] + cutoff * direction
        others = np.linalg.norm(base.positions[1:] - probe, axis=1)
        if np.abs(others - cutoff).min() > 0.05 and (others < cutoff).any():
            break
    delta = 1e-6
    results = []
    for r in (cutoff - delta, cutoff + delta):
        atoms = base + Atoms("O", positions=[base.positions[0] + r * direction])
        results.append(evaluate(model, atoms))
    (inner, outer) = results
    # only the probe moves (by 2 delta): |dE| <= 2 delta |F_probe| up to second order
    fmax = max(np.linalg.norm(inner["forces"], axis=1).max(), 1e-3)
    assert abs(inner["energy"] - outer["energy"]) <= 2 * delta * fmax + 1e-10
    # dF/dr is bounded by a few eV/Å^2 here, so the forces must agree to well below 1e-3
    np.testing.assert_allclose(inner["forces"], outer["forces"], atol=1e-4)


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


def test_two_far_apart_copies_give_twice_the_energy(model):
    needs_locality(model)
    one = random_molecule(n=6, seed=16)
    two = one + one.copy()
    two.positions[len(one):] += np.array([20.0, 0.0, 0.0])
    a, b = evaluate(model, one), evaluate(model, two)
    assert abs(b["energy"] - 2 * a["energy"]) <= 1e-12 * abs(b["energy"])
    np.testing.assert_allclose(b["energies"], np.tile(a["energies"], 2), atol=1e-13)
    np.testing.assert_allclose(b["forces"], np.tile(a["forces"], (2, 1)), atol=1e-13)


def test_batch_equals_frames_one_by_one(any_model):
    m = any_model
    frames = [random_molecule(n=5, seed=17), random_crystal(n=4, seed=18), random_molecule(n=8, seed=19)]
    graphs = [build_graph(f, m.cutoff) for f in frames]
    batch = energy_forces_stress(m, collate(graphs))
    singles = [evaluate(m, g) for g in graphs]
    np.testing.assert_allclose(batch["energy"].numpy(), [s["energy"] for s in singles], rtol=1e-13)
    np.testing.assert_allclose(batch["forces"].numpy(), np.concatenate([s["forces"] for s in singles]), atol=1e-13)


def test_supercell_has_eight_times_the_energy(model):
    atoms = random_crystal(n=4, seed=20)
    ref = evaluate(model, atoms, stress=model.conservative)
    big = evaluate(model, atoms.repeat((2, 2, 2)), stress=model.conservative)
    assert abs(big["energy"] - 8 * ref["energy"]) <= 1e-11 * abs(big["energy"])
    if model.conservative:
        np.testing.assert_allclose(big["stress"], ref["stress"], atol=1e-11)
    np.testing.assert_allclose(big["forces"], np.tile(ref["forces"], (8, 1)), atol=1e-11)


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
