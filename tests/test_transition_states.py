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
    """One atom in V = A (1 - cos(pi x)) - T x + k_y y^2 / 2 + k_z z^2 / 2 (eV, Å). Without
    tilt T: minima at x = 0, +-2, ..., first-order saddles at x = +-1 with barrier 2 A and
    curvature -A pi^2 along x."""

    implemented_properties = ["energy", "forces"]
    A, T, KY, KZ = 0.4, 0.0, 3.0, 5.0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x, y, z = self.atoms.positions[0]
        self.results["energy"] = (self.A * (1 - np.cos(np.pi * x)) - self.T * x + 0.5 * self.KY * y**2
                                  + 0.5 * self.KZ * z**2)
        forces = np.zeros((len(self.atoms), 3))
        forces[0] = [-self.A * np.pi * np.sin(np.pi * x) + self.T, -self.KY * y, -self.KZ * z]
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


@pytest.mark.parametrize("method", ["dimer", "prfo"])
def test_refine_saddle_converges_counts_one_mode_and_connects_both_minima(method):
    calc = Corrugation()
    saddle = refine_saddle(_atom(0.75, 0.2, -0.1), calc, tangent=np.array([[1.0, 0, 0]]), method=method,
                           progress=False)
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

    saddle = refine_saddle(_atom(0.0, 0.0, 0.05), Hill(), method="prfo", progress=False)
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


def test_a_step_whose_bump_the_band_cannot_resolve_is_reported_barrierless():
    class Tilted(Corrugation):  # minima near x = 0.29 + 2n, each 0.1 eV below the last; bumps of 3 meV
        A, T = 0.02, 0.05

    path = elementary_steps(_atom(0.3), _atom(2.3), Tilted(), _corrugation_settings(), calculator_factory=Tilted,
                            progress=False)
    assert len(path.steps) == 1
    step = path.steps[0]
    assert step.saddle is None and step.verified and "barrierless" in step.notes[0]
    assert step.reaction_energy == pytest.approx(-2 * Tilted.T, abs=1e-4)
    assert step.barrier == 0.0


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


# -- the shipped model on the demo's reaction -------------------------------------------------
def test_shipped_model_refines_the_demo_saddle_to_a_verified_transition_state():
    """From the demo band's climbing image to the C-O bond-forming saddle: converged, one
    imaginary mode (the C-O approach), and downhill to CO + O on one side and CO2 on the other."""
    from pathlib import Path

    from ase.io import read

    guess = read(Path(__file__).parent / "data" / "pd_co_o_climbing_image.extxyz")
    calc = NEMPCalculator.from_pretrained("pd-co-o", dtype="float64")
    o_ads, carbon = 36, 37
    saddle = refine_saddle(guess, calc, progress=False)
    assert saddle.converged and saddle.fmax <= 0.01
    assert saddle.first_order, saddle.imaginary
    assert 100 < saddle.imaginary_frequency < 1500  # cm^-1: a heavy-atom reaction mode, not noise
    # the mode moves the C and the adsorbed O against each other along their axis
    axis = saddle.atoms.positions[carbon] - saddle.atoms.positions[o_ads]
    axis /= np.linalg.norm(axis)
    relative = saddle.mode[carbon] - saddle.mode[o_ads]
    assert abs(relative @ axis) > 0.7 * np.linalg.norm(relative)
    assert np.abs(saddle.mode[:18]).max() == 0.0  # the fixed layers stay fixed
    link = verify_saddle(saddle, calc, progress=False)
    distances = sorted(m.get_distance(o_ads, carbon, mic=True) for m in link.minima)
    assert all(link.converged)
    assert distances[0] < 1.35 and distances[1] > 2.3, distances  # CO2 formed / CO and O apart
    assert max(link.energies) < saddle.energy - 0.5  # both sides lie well below the saddle
    # the committee's rate of the step from the side where CO and O are apart, with the
    # Hessians over the adsorbates alone (the slab frozen, a common choice)
    start = link.minima[int(np.argmax([m.get_distance(o_ads, carbon, mic=True) for m in link.minima]))]
    adsorbates = [36, 37, 38]
    at_saddle = hessian(saddle.atoms, calc, indices=adsorbates)
    assert len(imaginary_frequencies(at_saddle)) == 1
    rate = harmonic_rate(hessian(start, calc, indices=adsorbates), at_saddle, saddle.energy - start.get_potential_energy(),
                         temperatures=[500.0], member_barriers=np.asarray(saddle.atoms.calc.results["committee_energy"])
                         - np.asarray(start.calc.results["committee_energy"]))
    assert 10 < rate.log10_prefactor < 15  # s^-1: a surface reaction's attempt frequency
    assert rate.barrier_spread is not None and 0 < rate.barrier_spread < 0.1


def test_nemp_neb_refuses_bad_input_before_any_work(tmp_path, capsys):
    from ase.io import write

    from ase_nemp.cli import main
    from ase_nemp.demo import example_structures

    initial, final = example_structures()
    write(tmp_path / "is.extxyz", initial)
    write(tmp_path / "fs.extxyz", final)
    out = tmp_path / "out"

    def run(*argv):
        code = main(["neb", *map(str, argv), "--output", str(out), "--quiet"])
        return code, capsys.readouterr()

    swapped = final.copy()
    swapped.positions[[36, 37]] = swapped.positions[[37, 36]]
    swapped.numbers[[36, 37]] = swapped.numbers[[37, 36]]
    write(tmp_path / "swapped.extxyz", swapped)
    code, err = run(tmp_path / "is.extxyz", tmp_path / "swapped.extxyz")
    assert code == 2 and "another order" in err.err and "Traceback" not in err.err
    fewer = final[:-1]
    write(tmp_path / "fewer.extxyz", fewer)
    code, err = run(tmp_path / "is.extxyz", tmp_path / "fewer.extxyz")
    assert code == 2 and "different numbers of atoms" in err.err
    for name, atoms in (("gold_is", initial), ("gold_fs", final)):
        gold = atoms.copy()
        gold.symbols[0] = "Au"
        write(tmp_path / f"{name}.extxyz", gold)
    code, err = run(tmp_path / "gold_is.extxyz", tmp_path / "gold_fs.extxyz")
    assert code == 2 and "Au" in err.err and "does not know" in err.err
    bad = initial.copy()
    bad.positions[5, 1] = np.nan
    write(tmp_path / "nan.extxyz", bad)
    code, err = run(tmp_path / "nan.extxyz", tmp_path / "fs.extxyz")
    assert code == 2 and "non-finite" in err.err
    write(tmp_path / "two.extxyz", [initial, initial])
    write(tmp_path / "three.extxyz", [final, final, final])
    code, err = run(tmp_path / "two.extxyz", tmp_path / "three.extxyz")
    assert code == 2 and "holds 2 structures" in err.err and "as many initial as final" in err.err
    write(tmp_path / "pairs_is.extxyz", [initial, bad])
    write(tmp_path / "pairs_fs.extxyz", [final, final])
    code, err = run(tmp_path / "pairs_is.extxyz", tmp_path / "pairs_fs.extxyz")
    assert code == 2 and "reaction 2: " in err.err and "non-finite" in err.err  # all pairs checked first
    code, err = run(tmp_path / "missing.extxyz", tmp_path / "fs.extxyz")
    assert code == 2 and "does not exist" in err.err
    out.mkdir(exist_ok=True)
    (out / "profile.png").write_text("the user's own")
    code, err = run(tmp_path / "is.extxyz", tmp_path / "fs.extxyz")
    assert code == 2 and "profile.png" in err.err and "nothing is" in err.err
    assert (out / "profile.png").read_text() == "the user's own"


def test_many_reactions_on_workers_give_the_serial_analysis(tmp_path, dask_executor):
    """Three reactions, one of which cannot be analysed: one job each, in this process and on
    Dask's worker processes; the same steps and barriers, each reaction's files in its own
    folder, the bad one reported without costing the others."""
    from ase_nemp.report import run_reactions

    pairs = [(_atom(-0.1), _atom(2.05)), (_atom(0.1), _atom(-0.1)), (_atom(-1.9, 0.1), _atom(2.1, -0.1))]
    runs = {}
    for name, executor in (("serial", None), ("dask", dask_executor)):
        runs[name] = run_reactions(pairs, None, _corrugation_settings(), tmp_path / name, executor,
                                   progress=False, calculator_factory=Corrugation)
    for serial, dask in zip(runs["serial"], runs["dask"]):
        assert serial.ok == dask.ok
        if serial.ok:
            assert [st["barrier"] for st in serial.value["steps"]] == [st["barrier"] for st in dask.value["steps"]]
            assert serial.value["table"] == dask.value["table"]
    first, bad, two = runs["dask"]
    assert not bad.ok and "same minimum" in str(bad.error)
    assert len(first.value["steps"]) == 1 and len(two.value["steps"]) == 2 and first.value["code"] == 0
    assert first.value["steps"][0]["barrier"] == pytest.approx(2 * Corrugation.A, abs=1e-4)
    for k in (1, 3):
        assert {"minima.extxyz", "steps.md", "profile.png", "step1_saddle.extxyz"} <= \
            {p.name for p in (tmp_path / "dask" / f"reaction-{k}").iterdir()}
    assert not (tmp_path / "dask" / "reaction-2").exists()


def test_nemp_neb_over_many_pairs_reports_each_reaction(tmp_path, capsys):
    from ase.io import write

    from ase_nemp.cli import main
    from ase_nemp.io import save
    from ase_nemp.testing import random_model, random_molecule, tiny_config

    save(random_model(tiny_config(species=(1, 6, 8), cutoff=3.0), seed=1), tmp_path / "m.pt")
    molecules = [random_molecule(n=4, seed=s, symbols="HCO", min_dist=1.0) for s in (1, 2)]
    write(tmp_path / "is.extxyz", molecules)
    write(tmp_path / "fs.extxyz", molecules)  # each relaxes to its own start: no reaction to analyse
    write(tmp_path / "three.extxyz", molecules + molecules[:1])
    base = ["neb", str(tmp_path / "is.extxyz"), "--model", str(tmp_path / "m.pt"), "--quiet"]
    assert main([*base[:2], str(tmp_path / "three.extxyz"), *base[2:], "--output", str(tmp_path / "x")]) == 2
    assert "holds 2 structures" in capsys.readouterr().err
    code = main([*base[:2], str(tmp_path / "fs.extxyz"), *base[2:], "--output", str(tmp_path / "out"),
                 "--scheduler", "processes:2"])
    captured = capsys.readouterr()
    assert code == 2 and "2 of 2 reactions could not be analysed" in captured.err
    table = (tmp_path / "out" / "reactions.md").read_text()
    assert table.count("failed: EndPointError") == 2 and "same minimum" in table
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "reactions.md").write_text("the user's own")
    assert main([*base[:2], str(tmp_path / "fs.extxyz"), *base[2:], "--output", str(tmp_path / "mine")]) == 2
    assert "already holds reactions.md" in capsys.readouterr().err
    assert (tmp_path / "mine" / "reactions.md").read_text() == "the user's own"
