"""The ASE calculator: contract, derivatives, optimizers, NEB, MD and error handling."""

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from ase_nemp import NEMPCalculator, save
from ase_nemp.testing import random_crystal, random_model, random_molecule, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(cutoff=3.2), seed=7)


def counting(calc):
    """Wrap the calculator's model so that evaluations can be counted."""
    calls = []
    original = calc.model.forward

    def forward(graph, **kwargs):
        calls.append(graph.num_atoms)
        return original(graph, **kwargs)

    calc.model.forward = forward
    return calls


# -- the ASE contract -------------------------------------------------------------------


def test_properties_and_caching(model):
    atoms = random_crystal(n=6, seed=1)
    atoms.calc = calc = NEMPCalculator(model, skin=0.0)
    calls = counting(calc)
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    energies = atoms.get_potential_energies()
    assert len(calls) == 1  # energy, forces and per-atom energies come from one evaluation
    assert atoms.get_potential_energy(force_consistent=True) == e
    assert f.shape == (6, 3) and f.dtype == np.float64
    assert energies.sum() == pytest.approx(e, abs=1e-10)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    assert len(calls) == 2  # stress needs its own (strain) evaluation
    atoms.get_forces()
    assert len(calls) == 2  # cached until the atoms change
    atoms.positions[0, 0] += 0.01
    assert atoms.get_potential_energy() != e
    assert len(calls) == 3
    calc.reset()
    atoms.get_potential_energy()
    assert len(calls) == 4


def test_forces_match_numerical_forces(model):
    atoms = random_molecule(n=6, seed=2)
    atoms.calc = NEMPCalculator(model)
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), numeric, atol=1e-7)


def test_stress_matches_ase_numerical_stress(model):
    atoms = random_crystal(n=6, seed=3)
    atoms.calc = NEMPCalculator(model)
    analytic = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-6, voigt=True)
    assert np.abs(analytic).max() > 1e-4
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)


def test_single_atom_has_shape_n3_forces(model):
    atoms = Atoms("C")
    atoms.calc = NEMPCalculator(model)
    assert atoms.get_forces().shape == (1, 3)


# -- optimizers -------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,dtype", [(BFGS, "float64"), (FIRE, "float64"), (BFGS, "float32")])
def test_relaxation(model, optimizer, dtype):
    atoms = random_molecule(n=6, seed=4, symbols="CO", min_dist=1.1)
    atoms.calc = NEMPCalculator(model, dtype=dtype)
    e0 = atoms.get_potential_energy()
    opt = optimizer(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=500)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.get_forces()).max() < 0.01


def test_cell_relaxation_with_frechet_filter(model):
    atoms = random_crystal(n=4, seed=5, symbols="CO", min_dist=1.1)
    atoms.calc = NEMPCalculator(model)
    e0, cell0 = atoms.get_potential_energy(), atoms.cell.array.copy()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=0.02, steps=60)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.cell.array - cell0).max() > 1e-3  # the cell moved


# -- NEB --------------------------------------------------------------------------------


def neb_images(model, shared):
    initial = random_molecule(n=6, seed=6, symbols="CO", min_dist=1.1)
    final = initial.copy()
    final.positions[0] += [0.6, -0.3, 0.2]
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    if shared:
        calc = NEMPCalculator(model)
        for image in images:
            image.calc = calc
    else:
        for image in images:
            image.calc = NEMPCalculator(model)
    neb = NEB(images, climb=True, method="improvedtangent", allow_shared_calculator=shared)
    neb.interpolate()
    return images, neb


def test_neb_shared_and_separate_calculators_agree(model):
    runs = []
    for shared in (False, True):
        images, neb = neb_images(model, shared)
        FIRE(neb, logfile=None).run(fmax=0.05, steps=15)
        runs.append((np.array([im.get_potential_energy() for im in images]), neb.get_positions().copy()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=0, atol=1e-12)


# -- molecular dynamics -----------------------------------------------------------------


def md_system():
    atoms = random_crystal(n=4, seed=8, symbols="CO", min_dist=1.2).repeat((2, 1, 1))
    rng = np.random.default_rng(0)
    sigma = np.sqrt(300 * units.kB * atoms.get_masses())[:, None]  # Maxwell-Boltzmann at 300 K
    momenta = sigma * rng.standard_normal((len(atoms), 3))
    atoms.set_momenta(momenta - momenta.mean(axis=0))
    return atoms


def test_langevin_brings_a_cold_system_to_its_temperature(model):
    atoms = md_system()
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    atoms.calc = NEMPCalculator(model)
    # friction 1/(10 fs): the thermostat, not the potential, sets the temperature within ~20 fs
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.1 / units.fs, fixcm=False,
                   rng=np.random.default_rng(1))
    temperatures = []
    dyn.attach(lambda: temperatures.append(atoms.get_temperature()), interval=1)
    dyn.run(300)
    mean = np.mean(temperatures[100:])  # after five relaxation times
    # 16 atoms fluctuate by ~sqrt(2/48) = 20 % per step; the mean over 200 steps is much closer
    assert 200 < mean < 400, f"mean temperature {mean:.0f} K, thermostat at 300 K"
    assert temperatures[0] < 60  # started cold: the rise is the thermostat's doing


def nve_trajectory(model, skin, steps):
    atoms = md_system()
    atoms.calc = NEMPCalculator(model, skin=skin)
    dyn = VelocityVerlet(atoms, 0.25 * units.fs)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    return atoms, np.array(totals)


def test_nve_conserves_energy_and_skin_does_not_change_the_trajectory(model):
    steps = 300
    with_skin, totals = nve_trajectory(model, 0.5, steps)
    drift = np.abs(totals - totals[0]).max() / len(with_skin)
    kinetic = with_skin.get_kinetic_energy() / len(with_skin)
    # a force-energy mismatch shows up as a drift of order the kinetic energy
    assert drift < 1e-4, f"total energy drift {drift:.2e} eV/atom (kinetic {kinetic:.2e} eV/atom)"
    assert with_skin.calc.neighbour_list.num_builds < steps / 2
    without_skin, totals0 = nve_trajectory(model, 0.0, steps)
    np.testing.assert_allclose(with_skin.positions, without_skin.positions, atol=1e-9)


# -- bad input --------------------------------------------------------------------------


def assert_still_usable(atoms, calc):
    good = random_molecule(n=4, seed=9)
    good.calc = calc
    assert np.isfinite(good.get_potential_energy())


def test_unknown_element(model):
    calc = NEMPCalculator(model)
    atoms = Atoms("COFe", positions=[[0, 0, 0], [1.2, 0, 0], [0, 1.5, 0]])
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"element\(s\) Fe not known to this model; it was built for H, C, O"):
        atoms.get_potential_energy()
    assert_still_usable(atoms, calc)


def test_nan_positions(model):
    calc = NEMPCalculator(model)
    atoms = random_molecule(n=4, seed=10)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite .* atom\(s\) \[2\]"):
        atoms.get_forces()
    atoms.positions[2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        atoms.get_forces()
    assert_still_usable(atoms, calc)


def test_stress_needs_full_periodicity(model):
    calc = NEMPCalculator(model)
    slab = random_crystal(n=4, seed=11, pbc=(True, True, False))
    slab.calc = calc
    assert np.isfinite(slab.get_potential_energy())
    with pytest.raises(ValueError, match=r"periodic in all three directions.*False"):
        slab.get_stress()
    with pytest.raises(PropertyNotImplementedError):  # what ASE's own code expects
        slab.get_stress()
    assert_still_usable(slab, calc)


def test_empty_atoms(model):
    calc = NEMPCalculator(model)
    atoms = Atoms()
    atoms.calc = calc
    with pytest.raises(ValueError, match="no atoms"):
        atoms.get_potential_energy()
    assert_still_usable(atoms, calc)


def test_model_file_errors(model, tmp_path):
    path = save(model, tmp_path / "m.pt")
    calc = NEMPCalculator(path)
    assert calc.model.config == model.config
    assert NEMPCalculator.from_file(path, dtype="float32").model.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NEMPCalculator(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        NEMPCalculator(truncated)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="format version 99"):
        NEMPCalculator(tmp_path / "newer.pt")
    with pytest.raises(TypeError, match=r"a model \(NEMP, EquiREANN...\), a Committee or a path"):
        NEMPCalculator(object())
    with pytest.raises(ValueError, match="dtype"):
        NEMPCalculator(model, dtype="float16")


def test_calculator_does_not_modify_the_callers_model(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    NEMPCalculator(model, dtype="float32")
    assert model.dtype == torch.float64
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- precision --------------------------------------------------------------------------


def test_float32_forces_are_close_to_float64(model):
    atoms = random_crystal(n=6, seed=12).repeat((3, 3, 3))  # 162 atoms
    atoms.rattle(0.05, seed=1)
    f64 = NEMPCalculator(model, dtype="float64").get_forces(atoms)
    f32 = NEMPCalculator(model, dtype="float32").get_forces(atoms)
    err = np.abs(f32 - f64).max()
    assert err < 1e-4 * max(1.0, np.abs(f64).max()), err


def test_unknown_keywords_and_bad_skin_are_refused(model):
    with pytest.raises(TypeError, match="skn"):
        NEMPCalculator(model, skn=0.3)
    for skin in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="skin"):
            NEMPCalculator(model, skin=skin)
    calc = NEMPCalculator(model, dtype="float32", skin=0.3)
    info = calc.todict()
    assert info["dtype"] == "float32" and info["skin"] == 0.3 and info["committee_size"] == 1


def test_threads_sharing_one_calculator_get_their_own_results(model):
    """Four threads, one calculator, different structures: each must see its own numbers."""
    from concurrent.futures import ThreadPoolExecutor

    structures = [random_molecule(n=5 + k, seed=40 + k) for k in range(4)]
    expected = []
    for atoms in structures:
        atoms.calc = NEMPCalculator(model)
        expected.append((atoms.get_potential_energy(), atoms.get_forces().copy()))
    shared = NEMPCalculator(model, skin=0.3)

    def work(k):
        out = []
        for step in range(30):
            atoms = structures[k].copy()
            atoms.positions += 1e-4 * step  # a translation: same energy, new calculation
            atoms.calc = shared
            out.append((atoms.get_potential_energy(), atoms.get_forces().copy()))
        return out

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for k, runs in enumerate(results):
        for energy, forces in runs:
            assert energy == pytest.approx(expected[k][0], abs=1e-9)
            np.testing.assert_allclose(forces, expected[k][1], atol=1e-9)


# -- committees ---------------------------------------------------------------------------


def test_committee_gives_the_mean_and_the_spread_in_one_call():
    from ase_nemp.model import Committee

    members = [random_model(tiny_config(cutoff=3.2), seed=s) for s in (7, 8, 9)]
    atoms = random_crystal(n=6, seed=1)
    singles = []
    for m in members:
        atoms.calc = NEMPCalculator(m)
        singles.append((atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy(),
                        atoms.get_potential_energies().copy()))
    energies = np.array([s[0] for s in singles])
    forces = np.stack([s[1] for s in singles])
    atoms.calc = calc = NEMPCalculator(Committee(members))
    calls = []
    evaluate = calc._evaluate
    calc._evaluate = lambda *args, **kw: calls.append(1) or evaluate(*args, **kw)
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(0), atol=1e-10)
    np.testing.assert_allclose(atoms.get_potential_energies(), np.mean([s[3] for s in singles], 0), atol=1e-10)
    assert calc.get_property("energy_uncertainty", atoms) == pytest.approx(energies.std(ddof=1), abs=1e-10)
    spread = np.sqrt(((forces - forces.mean(0)) ** 2).sum((0, 2)) / 2)
    np.testing.assert_allclose(calc.get_property("forces_uncertainty", atoms), spread, atol=1e-10)
    np.testing.assert_allclose(calc.get_property("committee_energy", atoms), energies, atol=1e-10)
    assert len(calls) == 1  # one call for energy, forces, per-atom energies and both spreads
    np.testing.assert_allclose(atoms.get_stress(), np.mean([s[2] for s in singles], 0), atol=1e-10)
    assert spread.max() > 1e-3  # different members disagree, so the test can fail


def test_single_model_has_no_uncertainty(model):
    atoms = random_molecule(n=4, seed=3)
    atoms.calc = calc = NEMPCalculator(model)
    with pytest.raises(PropertyNotImplementedError, match="committee"):
        calc.get_property("forces_uncertainty", atoms)


def test_committee_file_through_the_calculator(tmp_path):
    from ase_nemp.model import Committee

    committee = Committee([random_model(tiny_config(cutoff=3.2), seed=s) for s in (1, 2)])
    path = save(committee, tmp_path / "c.pt")
    atoms = random_molecule(n=5, seed=4)
    atoms.calc = calc = NEMPCalculator(path, dtype="float32")
    assert calc.is_committee and "forces_uncertainty" in calc.implemented_properties
    assert calc.get_property("forces_uncertainty", atoms).shape == (5,)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=20)  # ASE drives it like any calculator


def test_float32_far_from_the_origin_keeps_its_precision(model):
    near = random_molecule(n=5, seed=6)
    far = near.copy()
    far.positions += 1e6  # a float32 coordinate of 1e6 Å has a resolution of 0.06 Å
    near.calc = NEMPCalculator(model, dtype="float64")
    far.calc = NEMPCalculator(model, dtype="float32")
    assert far.get_potential_energy() == pytest.approx(near.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(far.get_forces(), near.get_forces(), atol=1e-4)
