"""Model files: round trip, metadata, and clear errors for bad files."""

import zipfile

import numpy as np
import pytest
import torch

import ase_nemp
from ase_nemp.io import FORMAT_VERSION, ModelFileError, read_model_file
from ase_nemp.testing import evaluate, random_crystal, random_model, tiny_config


@pytest.fixture
def saved(tmp_path):
    model = random_model(seed=1)
    path = ase_nemp.save(model, tmp_path / "model.pt", dataset="synthetic", val_rmse={"forces": 0.05})
    return model, path


def test_save_load_gives_bit_identical_outputs(saved):
    model, path = saved
    loaded = ase_nemp.load(path)
    atoms = random_crystal(seed=2)
    a, b = evaluate(model, atoms, stress=True), evaluate(loaded, atoms, stress=True)
    for key in ("energy", "energies", "forces", "stress"):
        assert np.array_equal(a[key], b[key]), key
    assert loaded.config == model.config
    assert loaded.metadata == {"dataset": "synthetic", "val_rmse": {"forces": 0.05}}
    assert not loaded.training


def test_file_records_versions_species_and_energies(saved):
    model, path = saved
    payload = read_model_file(path)
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["package_version"] == ase_nemp.__version__
    assert payload["species"] == [1, 6, 8]
    np.testing.assert_allclose(payload["atomic_energies"], model.atomic_energies.numpy())
    assert payload["force_rms"] == pytest.approx(1.3)


def test_load_converts_dtype(saved):
    _, path = saved
    m32 = ase_nemp.load(path, dtype="float32")
    assert m32.dtype == torch.float32
    assert ase_nemp.load(path).dtype == torch.float64
    with pytest.raises(ValueError, match="float32"):
        ase_nemp.load(path, dtype="float16")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ase_nemp.load(tmp_path / "nope.pt")


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated, corrupt"):
        ase_nemp.load(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a model\n" * 10)
    with pytest.raises(ModelFileError, match="truncated, corrupt"):
        ase_nemp.load(bad)


def test_foreign_torch_file(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not an ase-nemp model file"):
        ase_nemp.load(foreign)
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(ModelFileError, match="not an ase-nemp model file"):
        ase_nemp.load(foreign)


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ase-nemp-model", "payload": zipfile.ZipInfo("x")}, evil)  # an arbitrary class
    with pytest.raises(ModelFileError, match="cannot run code"):
        ase_nemp.load(evil)


def test_newer_format_version(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    payload["package_version"] = "9.9.9"
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(ModelFileError, match=r"format version 2.*9\.9\.9.*Upgrade"):
        ase_nemp.load(newer)


def test_state_dict_must_match_config(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["num_channels"] = 6
    bad = tmp_path / "mismatch.pt"
    torch.save(payload, bad)
    with pytest.raises(ModelFileError, match="do not match"):
        ase_nemp.load(bad)
    payload = torch.load(path, weights_only=True)
    payload["config"]["colour"] = "blue"
    torch.save(payload, bad)
    with pytest.raises(ModelFileError, match="colour"):
        ase_nemp.load(bad)


def test_metadata_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match="plain types"):
        ase_nemp.save(random_model(tiny_config()), tmp_path / "m.pt", thing=object())
    assert not list(tmp_path.glob("*.tmp"))
