"""Hessians, saddles, elementary steps and rates.

The model-based checks use tiny random models of every architecture; the workflow checks
use an analytic potential whose minima, saddles, curvatures and rates are known in closed
form, so that every number the code reports is compared with an independent one.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import _amu, _e, _hplanck, invcm, kB
from ase.vibrations import VibrationsData

from ase_nemp import NEMPCalculator
from ase_nemp.model.committee import Committee
from ase_nemp.neb import NEBProtocol
from ase_nemp.rates import harmonic_rate, vineyard_prefactor
from ase_nemp.reaction import EndPointError, ReactionSettings, check_end_points, elementary_steps, interior_minima
from ase_nemp.saddle import refine_saddle, verify_saddle
from ase_nemp.testing import random_model, random_molecule, tiny_configs
from ase_nemp.vibrations import hessian, imaginary_frequencies

CONSERVATIVE = [name for name in tiny_configs() if name != "leignn-direct"]


def _rotation(seed: int = 3) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# -- Hessians from the models ----------------------------------------------------------------
@pytest.mark.parametrize("name", CONSERVATIVE)
def test_hessian_is_symmetric_and_equals_finite_differences(name):
    calc = NEMPCalculator(random_model(tiny_configs()[name], seed=1))
    atoms = random_molecule(6, seed=2)
    analytic = hessian(atoms, calc)
    h = analytic.get_hessian_2d()
    assert analytic.method == "analytic" and h.shape == (18, 18)
    assert np.abs(h).max() > 1e-3, "the random model's curvature must not vanish, or the test proves nothing"
    assert np.abs(h - h.T).max() <= 1e-12 * np.abs(h).max()
    fd = hessian(atoms, calc, method="finite-difference", delta=1e-4).get_hessian_2d()
    assert np.abs(h - fd).max() <= 1e-6 * np.abs(h).max()


@pytest.mark.parametrize("name", ["nemp", "equireann", "leignn-conservative"])
def test_hessian_is_rotation_covariant(name):
    calc = NEMPCalculator(random_model(tiny_configs()[name], seed=1))
    atoms = random_molecule(5, seed=4)
    rotated = atoms.copy()
    r = _rotation()
    rotated.positions = atoms.positions @ r.T
    h = hessian(atoms, calc).get_hessian()
    hr = hessian(rotated, calc).get_hessian()
    expected = np.einsum("ac,icjd,bd->iajb", r, h, r)  # H'_ij = R H_ij R^T for every atom pair
    assert np.abs(hr - expected).max() <= 1e-9 * np.abs(h).max()


def test_hessian_over_selected_atoms_is_the_block_of_the_full_one():
    calc = NEMPCalculator(random_model(tiny_configs()["nemp"], seed=1))
    atoms = random_molecule(6, seed=2)
    full = hessian(atoms, calc).get_hessian()
    part = hessian(atoms, calc, indices=[4, 1])
    assert part.get_indices().tolist() == [4, 1]
    assert np.allclose(part.get_hessian(), full[[4, 1]][:, :, [4, 1]], rtol=0, atol=1e-10)


def test_direct_force_model_refuses_a_hessian():
    calc = NEMPCalculator(random_model(tiny_configs()["leignn-direct"], seed=1))
    with pytest.raises(ValueError, match="predicts its forces directly"):
        hessian(random_molecule(4, seed=0), calc)


def test_committee_hessian_is_the_members_mean_and_keeps_each_member():
    config = tiny_configs()["nemp"]
    members = [random_model(config, seed=s) for s in (1, 2, 3)]
    atoms = random_molecule(5, seed=6)
    committee = hessian(atoms, NEMPCalculator(Committee(members)))
    singles = [hessian(atoms, NEMPCalculator(m)).get_hessian_2d() for m in members]
    assert len(committee.members) == 3
    assert not np.allclose(singles[0], singles[1]), "members must differ for the check to mean anything"
    for own, single in zip(committee.members, singles):
        assert np.allclose(own.get_hessian_2d(), single, rtol=0, atol=1e-10)
    assert np.allclose(committee.get_hessian_2d(), np.mean(singles, axis=0), rtol=0, atol=1e-10)
    fd = hessian(atoms, NEMPCalculator(Committee(members)), method="finite-difference", delta=1e-4)
    assert np.allclose(fd.members[2].get_hessian_2d(), singles[2], rtol=0, atol=1e-5 * np.abs(singles[2]).max())


def test_hessian_feeds_ase_vibrations_and_thermochemistry(tmp_path):
    from ase.thermochemistry import HarmonicThermo

    calc = NEMPCalculator(random_model(tiny_configs()["nemp"], seed=1))
    vib = hessian(random_molecule(4, seed=3), calc)
    assert isinstance(vib, VibrationsData)
    energies = vib.get_energies()
    assert len(vib.get_frequencies()) == 12
    assert "Zero-point energy" in vib.tabulate()
    vib.write_jmol(tmp_path / "modes.xyz")
    assert (tmp_path / "modes.xyz").stat().st_size > 0
    real = energies[np.abs(energies.imag) == 0].real
    real = real[real > 1e-4]
    thermo = HarmonicThermo(real, potentialenergy=0.0)
    assert np.isfinite(thermo.get_helmholtz_energy(300.0, verbose=False))


def test_hessian_bad_input():
    calc = NEMPCalculator(random_model(tiny_configs()["nemp"], seed=1))
    atoms = random_molecule(4, seed=3)
    with pytest.raises(ValueError, match="indices"):
        hessian(atoms, calc, indices=[0, 9])
    with pytest.raises(ValueError, match="method"):
        hessian(atoms, calc, method="magic")
    with pytest.raises(ValueError, match="calculator"):
        hessian(atoms)


# -- an analytic surface: one atom in a periodic corrugation ---------------------------------
class Corrugation(Calculator):
    """One atom in V = A (1 - cos(pi x)) + k_y y^2 / 2 + k_z z^2 / 2 (eV, Å): minima at
    x = 0, +-2, ..., first-order saddles at x = +-1 with barrier 2 A and curvature
    -A pi^2 along x."""

    implemented_properties = ["energy", "forces"]
    A, KY, KZ = 0.4, 3.0, 5.0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x, y, z = self.atoms.positions[0]
        self.results["energy"] = self.A * (1 - np.cos(np.pi * x)) + 0.5 * self.KY * y**2 + 0.5 * self.KZ * z**2
        forces = np.zeros((len(self.atoms), 3))
        forces[0] = [-self.A * np.pi * np.sin(np.pi * x), -self.KY * y, -self.KZ * z]
        self.results["forces"] = forces


def _atom(x, y=0.0, z=0.0) -> Atoms:
    return Atoms("H", positions=[[x, y, z]])


def _nu(curvature: float, mass: float) -> float:
    """Hz, the harmonic frequency of a curvature (eV/Å^2) and mass (amu)."""
    omega = np.sqrt(curvature * _e / 1e-20 / (mass * _amu))
    return omega / (2 * np.pi)


def test_finite_difference_hessian_of_any_calculator_matches_the_curvature():
    vib = hessian(_atom(0.0), Corrugation(), delta=1e-4)
    assert vib.method == "finite-difference"
    a = Corrugation.A
    assert np.allclose(np.diag(vib.get_hessian_2d()), [a * np.pi**2, Corrugation.KY, Corrugation.KZ], rtol=1e-6)


def test_refine_saddle_converges_counts_one_mode_and_connects_both_minima():
    calc = Corrugation()
    saddle = refine_saddle(_atom(0.75, 0.2, -0.1), calc, tangent=np.array([[1.0, 0, 0]]), progress=False)
    assert saddle.converged and saddle.fmax <= 0.01
    assert np.allclose(saddle.atoms.positions[0], [1.0, 0, 0], atol=2e-3)
    assert saddle.first_order
    mass = saddle.atoms.get_masses()[0]
    expected = _nu(Corrugation.A * np.pi**2, mass) / (100 * 299792458.0)  # cm^-1
    assert saddle.imaginary_frequency == pytest.approx(expected, rel=1e-3)
    link = verify_saddle(saddle, calc, [_atom(0.0), _atom(2.0)], progress=False)
    assert link.connects(0, 1)
    assert sorted(np.round([m.positions[0, 0] for m in link.minima], 2)) == [0.0, 2.0]


def test_refine_saddle_reports_a_second_order_saddle():
    class Hill(Calculator):  # V = -x^2 - y^2 + z^2: a maximum in the plane
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            x, y, z = self.atoms.positions[0]
            self.results.update(energy=-x * x - y * y + z * z, forces=np.array([[2 * x, 2 * y, -2 * z]]))

    saddle = refine_saddle(_atom(0.0, 0.0, 0.05), Hill(), progress=False)
    assert saddle.converged and len(saddle.imaginary) == 2 and not saddle.first_order


def test_vineyard_rate_of_the_analytic_step():
    calc = Corrugation()
    initial, top = _atom(0.0), _atom(1.0)
    vib_is, vib_ts = hessian(initial, calc), hessian(top, calc)
    mass = initial.get_masses()[0]
    a = Corrugation.A
    # the y and z modes cancel: nu = nu_x(IS)
    expected = _nu(a * np.pi**2, mass)
    assert 10 ** vineyard_prefactor(vib_is, vib_ts) == pytest.approx(expected, rel=1e-4)
    rate = harmonic_rate(vib_is, vib_ts, 2 * a, temperatures=[300.0, 600.0])
    assert rate.rate == pytest.approx(expected * np.exp(-2 * a / (kB * np.array([300.0, 600.0]))), rel=1e-4)
    # zero-point energies: the x mode is lost at the saddle, the others are the same
    assert rate.zpe_barrier == pytest.approx(2 * a - 0.5 * _hplanck * expected / _e, rel=1e-4)
    assert rate.barrier_spread is None


def test_interior_minima():
    assert interior_minima([0, 0.5, -0.2, 1.0, 0.1], 0.05) == [2]
    assert interior_minima([0, 0.5, 0.48, 1.0, 0.1], 0.05) == []  # a shallow dip is a shoulder
    assert interior_minima([0, -0.1, -0.12, -0.1, 0.3], 0.05) == [2]  # below the lower end point
    assert interior_minima([0, 1.0, 0.0], 0.05) == []


def _corrugation_settings(**changes) -> ReactionSettings:
    protocol = NEBProtocol(images=7, interpolation="linear", fmax=0.02, climb_fmax=0.2, optimizer="FIRE", steps=400)
    return ReactionSettings(protocol=protocol, temperatures=(300.0,), **changes)


def test_elementary_steps_split_a_band_at_its_intermediate_minimum():
    # from x = -2 to x = 2 over the minimum at 0: two equal steps, each over a saddle at x = -1, +1
    path = elementary_steps(_atom(-1.9, 0.1), _atom(2.1, -0.1), Corrugation(), _corrugation_settings(),
                            calculator_factory=Corrugation, progress=False)
    assert len(path.steps) == 2
    assert np.allclose([m.positions[0, 0] for m in path.minima], [-2, 0, 2], atol=0.01)
    a = Corrugation.A
    for step, x in zip(path.steps, (-1.0, 1.0)):
        assert step.verified, step.flags
        assert step.saddle.atoms.positions[0, 0] == pytest.approx(x, abs=2e-3)
        assert step.barrier == pytest.approx(2 * a, abs=1e-4)
        assert step.reaction_energy == pytest.approx(0.0, abs=1e-4)
        assert step.rate.log10_rate[0] == pytest.approx(
            np.log10(_nu(a * np.pi**2, 1.008)) - 2 * a / (kB * 300.0) / np.log(10), abs=1e-3)


def test_elementary_steps_keep_a_single_step_whole():
    path = elementary_steps(_atom(-0.1), _atom(2.05), Corrugation(), _corrugation_settings(),
                            calculator_factory=Corrugation, progress=False)
    assert len(path.steps) == 1 and path.steps[0].verified
    assert path.steps[0].barrier == pytest.approx(2 * Corrugation.A, abs=1e-4)


def test_elementary_steps_refuse_bad_end_points():
    calc = Corrugation()
    with pytest.raises(EndPointError, match="not a minimum"):  # x = 1 is the saddle: BFGS stays on it
        elementary_steps(_atom(1.0), _atom(2.0), calc, _corrugation_settings(), calculator_factory=Corrugation,
                         progress=False)
    with pytest.raises(EndPointError, match="same minimum"):
        elementary_steps(_atom(0.1), _atom(-0.1), calc, _corrugation_settings(), calculator_factory=Corrugation,
                         progress=False)
    with pytest.raises(EndPointError, match="different numbers of atoms"):
        check_end_points(_atom(0.0), Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]]))
    with pytest.raises(EndPointError, match="another order"):
        check_end_points(Atoms("HO", positions=[[0, 0, 0], [1, 0, 0]]), Atoms("OH", positions=[[0, 0, 0], [1, 0, 0]]))
    with pytest.raises(EndPointError, match="non-finite"):
        check_end_points(_atom(np.nan), _atom(0.0))
