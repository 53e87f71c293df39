"""The shipped model's two-body curves against the reference potential: one minimum per element
pair, where the reference has it, and a repulsive wall below it (the curves labelled by
benchmarks/pd_co_o/make_two_body.py, benchmarks/pd_co_o/learn/two_body.extxyz)."""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read
from ase.optimize import BFGS

from ase_nemp import NEMPCalculator

CURVES = Path(__file__).resolve().parents[1] / "benchmarks" / "pd_co_o" / "learn" / "two_body.extxyz"
PAIRS = ("C-O", "O-O", "C-C", "Pd-C", "Pd-O", "Pd-Pd")


def dimer(a: str, b: str, distance: float) -> Atoms:
    return Atoms([a, b], positions=[[0, 0, 0], [distance, 0, 0]], cell=[20] * 3, pbc=True)


@pytest.fixture(scope="module")
def calc():
    return NEMPCalculator.from_pretrained("pd-co-o", dtype="float64")


@pytest.fixture(scope="module")
def curves():
    frames = [f for f in read(CURVES, ":") if f.info.get("config_type") == "two_body"]
    out = {}
    for pair in PAIRS:
        chosen = sorted((f for f in frames if f.info["pair"] == pair), key=lambda f: f.info["distance"])
        out[pair] = (np.array([f.info["distance"] for f in chosen]), np.array([f.get_potential_energy() for f in chosen]))
    return out


@pytest.mark.parametrize("pair", PAIRS)
def test_each_pair_has_one_minimum_where_the_reference_has_it_and_repels_below(calc, curves, pair):
    r, ref = curves[pair]
    a, b = pair.split("-")
    images = [dimer(a, b, d) for d in r]
    calc.calculate_batch(images)
    model = np.array([im.get_potential_energy() for im in images])
    push = np.array([im.get_forces()[1, 0] for im in images])  # along the bond: > 0 pushes apart
    k_ref, k_model = int(np.argmin(ref)), int(np.argmin(model))
    assert np.ptp(model) > 0.5, f"{pair}: a flat curve"
    assert abs(r[k_model] - r[k_ref]) <= 0.1 + 1e-9, (f"{pair}: minimum at {r[k_model]:.2f} Å, the reference's at "
                                                      f"{r[k_ref]:.2f} Å")
    below = r < r[k_model] - 0.05
    assert np.all(np.diff(model[: k_model + 1]) < 0), f"{pair}: a dip below the minimum, at {r[:k_model][np.diff(model[: k_model + 1]) >= 0]}"
    assert np.all(push[below] > 0), f"{pair}: attracts at {r[below][push[below] <= 0]} Å, below the minimum"
    # one minimum: beyond it the curve falls back from what it had risen to by no more than the
    # reference's own curve does (O-O's wiggles by a few meV near 4.5 Å), plus 50 meV
    assert fallback(model[k_model:]) <= fallback(ref[k_ref:]) + 0.05, (
        f"{pair}: a second well beyond the minimum, {fallback(model[k_model:]):.3f} eV deep")


def fallback(energies: np.ndarray) -> float:
    """The deepest fall of a curve below the highest energy it reached before (eV)."""
    return float(np.max(np.maximum.accumulate(energies) - energies))


def test_compressed_co_relaxes_to_the_real_minimum(calc, curves):
    """A gas-phase CO compressed to 1.05 Å relaxes to the reference's bond length (a committee
    with a false well relaxed it to 0.84 Å)."""
    r, ref = curves["C-O"]
    atoms = dimer("C", "O", 1.05)
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    assert atoms.get_distance(0, 1) == pytest.approx(r[np.argmin(ref)], abs=0.03)
