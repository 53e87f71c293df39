"""The shipped model, `from_pretrained`, and `nemp demo` (short)."""

import re

import numpy as np
import pytest
import torch

from ase_nemp import NEMPCalculator, pretrained
from ase_nemp.cli import main
from ase_nemp.demo import example_structures


def test_available_lists_the_shipped_model():
    models = pretrained.available()
    assert "pd-co-o" in models and "Pd(111)" in models["pd-co-o"]
    files = pretrained.files("pd-co-o")
    assert all(path.exists() for path in files.values()), files
    assert files["model"].stat().st_size < 5 * 1024 * 1024  # "a few MB at most"


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ValueError, match=r"no shipped model called 'pt-h2o'; available: pd-co-o: "):
        NEMPCalculator.from_pretrained("pt-h2o")


def test_shipped_model_is_a_committee_with_physical_limits():
    from ase import Atoms

    calc = NEMPCalculator.from_pretrained("pd-co-o", dtype="float64")
    assert calc.is_committee and calc.model.size >= 3
    cfg = calc.model.config
    assert cfg.zbl and cfg.isolated_atom_switch
    assert calc.model.metadata["confidence"]["forces_uncertainty"] > 0  # the loop's selection threshold
    assert calc.model.metadata["active_learning"]["teacher_calls"] > 0
    reference = {"C": -0.19971831, "O": -0.54903632, "Pd": -1.73055017}  # the teacher's isolated atoms (eV)
    for symbol, e0 in reference.items():
        atoms = Atoms(symbol, positions=[[0, 0, 0]], cell=[15, 15, 15], pbc=True)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(e0, abs=1e-6)
        assert calc.get_property("energy_uncertainty", atoms) == pytest.approx(0.0, abs=1e-9)
    pair = Atoms("Pd2", positions=[[0, 0, 0], [0.001, 0, 0]])
    pair.calc = calc
    assert pair.get_potential_energy() > 1e6 and pair.get_forces()[1, 0] > 1e6  # ZBL: no collapse


def test_from_pretrained_evaluates_the_example_structures():
    calc64 = NEMPCalculator.from_pretrained("pd-co-o", dtype="float64")
    calc32 = NEMPCalculator.from_pretrained("pd-co-o", dtype="float32")
    assert calc32.model.dtype == torch.float32
    initial, final = example_structures()
    assert initial.constraints and len(initial.constraints[0].index) == 18  # bottom layers fixed
    e = []
    for atoms in (initial, final):
        atoms.calc = calc64
        e.append(atoms.get_potential_energy())
        # raw forces of both precisions (atoms.get_forces() would zero the fixed layers)
        np.testing.assert_allclose(calc32.get_forces(atoms), calc64.get_forces(atoms), atol=1e-3)
        # the committee knows these states: small spreads
        assert calc64.get_property("forces_uncertainty", atoms).max() < 0.1
        # and the shipped file is calibrated: its intervals are the spreads scaled up, raw spreads kept
        spread, radius = calc64.get_property("energy_uncertainty", atoms), calc64.get_property("energy_interval", atoms)
        assert calc64.interval_level == 0.9 and radius > 1.5 * spread > 0
    # the reference potential gives -218.9251 and -218.8210 eV (reaction energy +0.104 eV); the
    # committee is held to the 0.05 eV that nemp demo's band is checked against
    assert e[0] == pytest.approx(-218.9251, abs=0.05) and e[1] == pytest.approx(-218.8210, abs=0.05)
    assert e[1] - e[0] == pytest.approx(0.104, abs=0.05)


def test_demo_runs_the_reaction_analysis_and_flags_what_it_cannot_trust(tmp_path, capsys):
    """A short demo (one band of 6 optimiser steps, 3 saddle steps) through the whole
    machinery, with the shipped committee under confidence thresholds so strict that every
    point exceeds them: everything it could not establish is said, nothing is hidden."""
    from ase.io import read

    from ase_nemp import save

    committee = pretrained.load("pd-co-o")
    strict = {**committee.metadata, "confidence": {"forces_uncertainty": 1e-4, "energy_uncertainty": 1e-5}}
    model = save(committee, tmp_path / "strict.pt", **strict)
    output = tmp_path / "out"
    code = main(["demo", "--model", str(model), "--steps", "6", "--images", "5", "--max-steps", "1",
                 "--saddle-steps", "3", "--output", str(output), "--quiet"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 4, out
    assert "WARNING" in captured.err and "not to be trusted" in captured.err
    # six steps cannot converge the band, three cannot converge the saddle: both reported
    assert "band not converged" in out and "saddle not converged" in out, out
    assert re.search(r"step 1 \(.*\): barrier \d+\.\d{3} ± \d+\.\d{3} eV \(calibrated 90 % interval\) "
                     r"from the minimum it starts from", out), out
    assert "outside the model's confidence" in out
    for name in ("minima.extxyz", "steps.md", "profile.png", "step1_band.extxyz", "step1_saddle.extxyz"):
        assert (output / name).stat().st_size > 100, name
    band = read(output / "step1_band.extxyz", index=":")
    assert len(band) == 5 and len(band[0]) == 39
    assert all("energy_uncertainty" in im.info and "relative_energy" in im.info for im in band)
    assert all(im.info["outside_confidence"] and "force spread" in im.info["doubt"] for im in band)
    saddle = read(output / "step1_saddle.extxyz")
    mode = saddle.arrays["mode"]
    assert mode.shape == (39, 3) and np.sqrt((mode**2).sum(1)).max() == pytest.approx(1.0)
    # a second run into the same folder is refused before any work, and keeps the files
    before = (output / "steps.md").read_text()
    assert main(["demo", "--output", str(output), "--quiet"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert (output / "steps.md").read_text() == before


def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--output", str(blocker / "sub")]) == 2
    assert "cannot write to the folder" in capsys.readouterr().err
    assert main(["demo", "--images", "1", "--output", str(tmp_path)]) == 2
    assert "images must be a whole number >= 3" in capsys.readouterr().err
    assert main(["demo", "--threads", "-1", "--output", str(tmp_path)]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["demo", "--fmax", "inf", "--output", str(tmp_path)]) == 2  # a band that never converges
    assert "fmax, climb_fmax and relax_fmax must be finite and positive" in capsys.readouterr().err
