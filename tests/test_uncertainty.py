"""Calibrated intervals from a committee's spread (ase_nemp.uncertainty, nemp calibrate)."""

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from ase_nemp import NEMPCalculator, load, save
from ase_nemp.cli import main
from ase_nemp.model import Committee
from ase_nemp.testing import random_model, random_molecule, tiny_config
from ase_nemp.uncertainty import Calibration, coverage, fit_calibration


def synthetic(n_structures, seed, scale=2.0):
    """Predictions whose errors are Gaussian with a standard deviation of ``scale`` times the
    spread (per structure for energies, per force component for forces)."""
    rng = np.random.default_rng(seed)
    atoms = 5
    e_spread = rng.lognormal(-3, 0.7, n_structures)
    f_spread = rng.lognormal(-2, 0.7, n_structures * atoms)
    ref = {"energy": rng.normal(size=n_structures), "forces": rng.normal(size=(n_structures * atoms, 3))}
    pred = {"energy": ref["energy"] + scale * e_spread * rng.normal(size=n_structures),
            "forces": ref["forces"] + scale * f_spread[:, None] / np.sqrt(3) * rng.normal(size=(n_structures * atoms, 3)),
            "energy_uncertainty": e_spread, "forces_uncertainty": f_spread}
    return pred, ref


def test_conformal_scale_reaches_its_coverage_on_new_data():
    cal = fit_calibration(*synthetic(3000, seed=0))
    # |N(0, (2 s)^2)| / s has its 90 % quantile at 2 x 1.645
    assert cal.factors["energy"][0.9] == pytest.approx(2 * 1.6449, rel=0.06)
    assert cal.floors == {"energy": 0.0, "forces": 0.0}
    seen = coverage(cal, *synthetic(3000, seed=1), levels=[0.5, 0.9, 0.95])
    for prop in ("energy", "forces"):
        for level, observed in seen[prop].items():
            assert abs(observed - level) < 0.03, (prop, level, observed)
    # the raw spread (factor 1) would cover far less than 90 %: the calibration is doing the work
    pred, ref = synthetic(3000, seed=1)
    raw = np.mean(np.abs(pred["energy"] - ref["energy"]) <= pred["energy_uncertainty"])
    assert raw < 0.5
    # a floor is chosen only where it makes the intervals narrower, and still covers
    floored = fit_calibration(*synthetic(3000, seed=0), floor=True)
    assert coverage(floored, *synthetic(3000, seed=1), levels=[0.9])["energy"][0.9] > 0.86


def test_structures_where_the_members_agree_exactly_are_set_aside():
    """Atoms farther apart than the cutoff (a two-body curve's tail) give every member the
    same energy and no force: a zero spread, which says nothing about the scale. The fit
    leaves them out instead of refusing the whole held-out set."""
    pred, ref = synthetic(200, seed=2)
    plain = fit_calibration(pred, ref)
    padded = {k: np.concatenate([v, v[:20]]) for k, v in pred.items()}
    padded_ref = {k: np.concatenate([v, v[:20] + 1e-4]) for k, v in ref.items()}
    padded["energy_uncertainty"][-20:] = 0.0
    padded["forces_uncertainty"][-20:] = 0.0
    fitted = fit_calibration(padded, padded_ref)
    assert fitted.factors == plain.factors and fitted.samples == plain.samples == {"energy": 200, "forces": 1000}
    agree = {k: v.copy() for k, v in pred.items()}
    agree["energy_uncertainty"][5:] = 0.0
    with pytest.raises(ValueError, match="zero on 195 of 200 held-out structures"):
        fit_calibration(agree, ref)


def test_radius_interpolates_and_refuses_bad_levels_and_tables():
    cal = Calibration({"energy": {0.5: 1.0, 0.9: 3.0}, "forces": {0.5: 2.0, 0.9: 4.0}},
                      {"energy": 0.01, "forces": 0.0})
    assert cal.radius("energy", 0.1, 0.7) == pytest.approx(2.0 * 0.11)
    np.testing.assert_allclose(cal.radius("forces", np.array([0.1, 0.2]), 0.9), [0.4, 0.8])
    for level in (0.0, 1.0, 0.95, "0.9", True):
        with pytest.raises(ValueError, match="level"):
            cal.radius("energy", 0.1, level)
    with pytest.raises(ValueError, match="property"):
        cal.radius("stress", 0.1)
    assert Calibration.from_dict(cal.to_dict()) == cal
    for broken in ({"factors": {}}, {**cal.to_dict(), "floors": {"energy": -1, "forces": 0}},
                   {**cal.to_dict(), "factors": {"energy": {"0.5": 3.0, "0.9": 1.0}, "forces": {"0.5": 1.0}}}):
        with pytest.raises(ValueError, match="malformed calibration"):
            Calibration.from_dict(broken)
    with pytest.raises(ValueError, match="committee"):
        fit_calibration({"energy": np.zeros(20)}, {"energy": np.zeros(20)})


@pytest.fixture(scope="module")
def committee_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    committee = Committee([random_model(tiny_config(species=(6, 8), cutoff=3.0), seed=s) for s in (1, 2, 3)])
    # nemp train records the rank correlations of spread and error under "calibration"
    save(committee, root / "committee.pt", calibration={"energy_spearman": 0.5, "forces_ratio": 1.4})
    save(random_model(tiny_config(species=(6, 8), cutoff=3.0), seed=1), root / "single.pt")
    for name, seed in (("heldout", 10), ("monitor", 50)):
        frames = []
        for k in range(24):
            atoms = random_molecule(n=5, seed=seed + k, symbols="CO", min_dist=1.1)
            atoms.calc = EMT()
            atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            frames.append(atoms)
        write(root / f"{name}.extxyz", frames)
    return root


def test_nemp_calibrate_stores_the_calibration_and_the_calculator_reports_intervals(committee_files, capsys):
    root = committee_files
    out = root / "calibrated.pt"
    assert main(["calibrate", str(root / "committee.pt"), str(root / "heldout.extxyz"), "--output", str(out),
                 "--check", str(root / "monitor.extxyz"), "--plot", str(root / "reliability.png")]) == 0
    text = capsys.readouterr().out
    assert "not used in the fit" in text and "90 % interval" in text and (root / "reliability.png").stat().st_size
    model = load(out)
    cal = Calibration.of(model)
    assert model.metadata["calibration"] == {"energy_spearman": 0.5, "forces_ratio": 1.4}  # kept as it was
    assert cal.source == "heldout.extxyz" and cal.samples == {"energy": 24, "forces": 120}
    atoms = random_molecule(n=5, seed=99, symbols="CO", min_dist=1.1)
    atoms.calc = NEMPCalculator(out, interval_level=0.68)
    spread = atoms.calc.get_property("energy_uncertainty", atoms)
    assert spread > 0
    assert atoms.calc.get_property("energy_interval", atoms) == pytest.approx(cal.radius("energy", spread, 0.68))
    np.testing.assert_allclose(atoms.calc.get_property("forces_interval", atoms),
                               cal.radius("forces", atoms.calc.get_property("forces_uncertainty", atoms), 0.68))
    assert cal.factors["energy"][0.9] > cal.factors["energy"][0.5] > 0
    # the same committee without the calibration: the raw spreads, and a clear word about intervals
    plain = NEMPCalculator(root / "committee.pt")
    atoms.calc = plain
    assert atoms.calc.get_property("energy_uncertainty", atoms) == pytest.approx(spread)
    assert "energy_interval" not in plain.implemented_properties
    with pytest.raises(PropertyNotImplementedError, match="nemp calibrate"):
        atoms.calc.get_property("energy_interval", atoms)
    with pytest.raises(ValueError, match="interval_level"):
        NEMPCalculator(out, interval_level=90)
    # nemp eval on a calibrated committee reports the coverage of its intervals
    assert main(["eval", str(out), str(root / "monitor.extxyz")]) == 0
    assert "calibrated intervals (fitted on heldout.extxyz)" in capsys.readouterr().out


def test_nemp_calibrate_refuses_what_it_cannot_do(committee_files, capsys):
    root = committee_files
    out = root / "calibrated-again.pt"
    out.write_text("mine")
    assert main(["calibrate", str(root / "committee.pt"), str(root / "heldout.extxyz"), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["calibrate", str(root / "single.pt"), str(root / "heldout.extxyz"), "--output",
                 str(root / "x.pt")]) == 2
    assert "needs a committee" in capsys.readouterr().err and not (root / "x.pt").exists()
