"""Data-parallel training with torchrun: two CPU processes (gloo) take the same steps as
one process with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from ase_nemp.train.distributed import ProcessGroup

from .conftest import run_config, trained

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no torch.distributed with gloo")


def torchrun(config_path, *extra, processes=2, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "ase_nemp.cli", "train", str(config_path), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def write_config(run, path):
    path.write_text(yaml.safe_dump(run.to_dict(), sort_keys=False))
    return path


def test_a_single_process_shares_everything():
    group = ProcessGroup()
    assert (group.world, group.rank, group.main) == (1, 0, True)
    assert group.share([1, 2, 3]) == [1, 2, 3]


def test_shares_cover_the_batch_once_in_order(monkeypatch):
    items = list(range(7))
    shares = []
    for rank in range(3):
        group = ProcessGroup.__new__(ProcessGroup)
        group.world, group.rank, group.local_rank = 3, rank, rank
        shares.append(group.share(items))
    assert sum(shares, []) == items
    assert sorted(len(s) for s in shares) == [2, 2, 3]


def test_two_processes_train_like_one(data_file, tmp_path):  # noqa: F811
    settings = dict(epochs=3, batch_size=3, threads=1)
    one = trained(run_config(data_file, tmp_path / "one", **settings))
    run = run_config(data_file, tmp_path / "two", **settings)
    result = torchrun(write_config(run, tmp_path / "two.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 3
    for name, p in one.model.state_dict().items():
        torch.testing.assert_close(ckpt["model"][name], p, rtol=0, atol=1e-10, msg=name)
    for name, p in one.ema.state_dict().items():
        torch.testing.assert_close(ckpt["ema"][name], p, rtol=0, atol=1e-10, msg=name)
    val_one = [row["val_loss"] for row in one.state["history"]]
    val_two = [row["val_loss"] for row in ckpt["state"]["history"]]
    assert val_two == pytest.approx(val_one, rel=1e-10)
    assert (tmp_path / "two" / "best.pt").exists() and (tmp_path / "two" / "metrics.csv").exists()


def test_two_processes_in_float32(data_file, tmp_path):  # noqa: F811
    """float32 parameters with float64 labels: the summed gradients keep the parameters' dtype."""
    settings = dict(epochs=2, batch_size=3, threads=1, dtype="float32")
    one = trained(run_config(data_file, tmp_path / "one", **settings))
    run = run_config(data_file, tmp_path / "two", **settings)
    result = torchrun(write_config(run, tmp_path / "two.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    for name, p in one.model.state_dict().items():
        assert ckpt["model"][name].dtype == p.dtype
        torch.testing.assert_close(ckpt["model"][name], p, rtol=1e-4, atol=1e-5, msg=name)


def test_a_refusal_in_one_process_stops_all(data_file, tmp_path):  # noqa: F811
    """The first process refuses an output folder holding another run's files; the other
    process must stop too instead of waiting for it forever."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "best.pt").write_text("someone's model")
    run = run_config(data_file, out, epochs=1)
    result = torchrun(write_config(run, tmp_path / "taken.yaml"), timeout=120)
    assert result.returncode != 0
    assert "already holds best.pt" in result.stderr + result.stdout
    # the other process says so in one line (torchrun's launcher adds its own report)
    assert "nemp train: error: another process of this training run failed" in result.stderr + result.stdout
    assert "ase_nemp/train" not in result.stderr + result.stdout  # no traceback through the package
    assert (out / "best.pt").read_text() == "someone's model"
