"""The shipped model, `from_pretrained`, and `nemp demo` (short)."""

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
    # the model was fitted to these states: energies on the reference scale (-218.9 / -218.8 eV)
    assert e[0] == pytest.approx(-218.925, abs=0.1) and e[1] == pytest.approx(-218.821, abs=0.1)


def test_demo_runs_and_writes_its_files(tmp_path, capsys):
    code = main(["demo", "--steps", "6", "--images", "5", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert code in (0, 3)  # 3: not converged within the (tiny) step budget
    assert "forward barrier" in out and "reaction energy" in out
    assert (tmp_path / "neb_profile.png").stat().st_size > 1000
    from ase.io import read

    band = read(tmp_path / "neb_band.extxyz", index=":")
    assert len(band) == 5 and len(band[0]) == 39
