"""Model files: round trip, metadata, and clear errors for bad files."""

import zipfile

import numpy as np
import pytest
import torch

import ase_nemp
from ase_nemp.io import FORMAT_VERSION, ModelFileError, _checksum, read_model_file
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
    with pytest.raises(ModelFileError, match=rf"format version {FORMAT_VERSION + 1}.*9\.9\.9.*Upgrade"):
        ase_nemp.load(newer)


def _rewrite(payload, path):
    """Save an edited payload with a recomputed checksum: a consistent-looking but wrong file."""
    payload["checksum"] = _checksum(payload)
    torch.save(payload, path)
    return path


def test_state_dict_must_match_config(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["num_channels"] = 6
    bad = _rewrite(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="shapes disagree"):
        ase_nemp.load(bad)
    payload = torch.load(path, weights_only=True)
    payload["config"]["colour"] = "blue"
    _rewrite(payload, bad)
    with pytest.raises(ModelFileError, match="colour"):
        ase_nemp.load(bad)


@pytest.mark.parametrize("edit", ["cutoff", "species", "weight"])
def test_a_file_edited_after_saving_is_refused(saved, tmp_path, edit):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    if edit == "cutoff":
        payload["config"]["cutoff"] = 4.0
    elif edit == "species":
        payload["config"]["species"] = [1, 7, 8]  # same count, another element
        payload["species"] = [1, 7, 8]
    else:
        payload["state_dict"]["w_sp"][0, 0, 0] += 1.0
    bad = tmp_path / "edited.pt"
    torch.save(payload, bad)
    with pytest.raises(ModelFileError, match="modified after it was written"):
        ase_nemp.load(bad)


def test_inconsistent_contents_are_refused(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.pt"
    cases = {
        "NaN": lambda p: p["state_dict"]["w_sp"].view(-1).__setitem__(0, float("nan")),
        "dtype torch.int64": lambda p: p["state_dict"].__setitem__("scale", p["state_dict"]["scale"].long()),
        "float16": lambda p: p.__setitem__("dtype", "float16"),
        "species list": lambda p: p.__setitem__("species", [1, 6, 7]),
        "reference energies": lambda p: p["atomic_energies"].__setitem__(0, p["atomic_energies"][0] + 1.0),
        "architecture 'mace'": lambda p: p.__setitem__("architecture", "mace"),
    }
    for message, edit in cases.items():
        payload = torch.load(path, weights_only=True)
        edit(payload)
        _rewrite(payload, bad)
        with pytest.raises(ModelFileError, match=message):
            ase_nemp.load(bad)


def test_absurd_sizes_are_refused_before_allocating(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["num_channels"] = 100_000  # a real model of this size needs hundreds of GB
    bad = _rewrite(payload, tmp_path / "huge.pt")
    with pytest.raises(ModelFileError, match="shapes disagree"):
        ase_nemp.load(bad)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        ase_nemp.load(empty)


def test_version_1_files_load_without_the_isolated_atom_switch(saved, tmp_path):
    model, path = saved
    payload = torch.load(path, weights_only=True)
    for key in ("architecture", "committee_size", "checksum"):
        del payload[key]
    for key in ("isolated_atom_switch", "zbl"):
        del payload["config"][key]
    payload["format_version"] = 1
    old = tmp_path / "v1.pt"
    torch.save(payload, old)
    loaded = ase_nemp.load(old)
    assert loaded.config.isolated_atom_switch is None and not loaded.config.zbl
    assert model.config.isolated_atom_switch == 0.5  # the file's own model had it on: results differ for
    assert loaded.config == model.config.replace(isolated_atom_switch=None)  # sparse atoms only


def test_committee_round_trip(tmp_path):
    from ase_nemp.model import Committee

    committee = Committee([random_model(seed=s) for s in (1, 2, 3)])
    path = ase_nemp.save(committee, tmp_path / "committee.pt", note="three")
    loaded = ase_nemp.load(path)
    assert isinstance(loaded, Committee) and loaded.size == 3
    atoms = random_crystal(seed=2)
    for a, b in zip(committee.members, loaded.members):
        assert np.array_equal(evaluate(a, atoms)["forces"], evaluate(b, atoms)["forces"])
    assert read_model_file(path)["committee_size"] == 3
    assert loaded.metadata == {"note": "three"}


def test_metadata_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match="plain types"):
        ase_nemp.save(random_model(tiny_config()), tmp_path / "m.pt", thing=object())
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("claimed", [10**9, 1000, 2, None])
def test_a_committee_size_edited_in_the_file_is_refused_at_once(tmp_path, claimed):
    """A committee of 3 whose committee_size was edited (checksum recomputed): refused from
    the stored tensors before any member is built (1e9 used to keep load() busy for ever)."""
    import time

    from ase_nemp.model import Committee

    path = ase_nemp.save(Committee([random_model(seed=s) for s in (1, 2, 3)]), tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)
    payload["committee_size"] = claimed
    bad = _rewrite(payload, tmp_path / "edited.pt")
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match=f"committee_size {claimed!r} disagrees with the stored tensors "
                                             r"\(tensors of 3 members\)"):
        ase_nemp.load(bad)
    assert time.perf_counter() - t0 < 5


def test_files_are_written_with_the_umask_s_permissions(tmp_path):
    """Model files (and every atomically written file) are as readable as any new file
    under the umask, not private (0600) as their temporary file was."""
    import os

    old = os.umask(0o022)
    try:
        path = ase_nemp.save(random_model(seed=1), tmp_path / "m.pt")
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.umask(0o077)
        private = ase_nemp.save(random_model(seed=1), tmp_path / "private.pt")
        assert os.stat(private).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
