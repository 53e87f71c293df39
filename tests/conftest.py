"""Shared fixtures. Data under ../shared is optional: tests that need it skip with a reason."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write

from ase_nemp.convert import from_reference
from ase_nemp.graph import AtomicGraph
from ase_nemp.testing import random_molecule
from ase_nemp.train import RunConfig
from ase_nemp.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity"
DATA_DIR = SHARED / "data"


def require(path: Path) -> Path:
    """Skip the calling test when a reference file or folder is not available."""
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (the ../shared folder is not present)")
    return path


@pytest.fixture(scope="session")
def dask_cluster():
    """A Dask distributed cluster of 2 worker processes on this machine."""
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed "
                                                            "(pip install 'dask[distributed]')")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def dask_executor(dask_cluster):
    """That cluster as a concurrent.futures Executor."""
    import distributed

    client = distributed.Client(dask_cluster)
    yield client.get_executor(pure=False)
    client.close()


# -- a tiny training run (test_train, test_compiled, test_devices, test_distributed) -------------
TINY_MODEL = dict(cutoff=3.5, num_channels=4, num_layers=2, pair_dim=8, pair_mlp=[1, 8], edge_mlp=[1, 8],
                  coeff_mlp=[1, 8], readout_mlp=[1, 8])


def labelled(n, seed):
    frames = []
    for k in range(n):
        atoms = random_molecule(n=5, seed=seed + k, symbols="CO", min_dist=1.1)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.info["config_type"] = "even" if k % 2 == 0 else "odd"
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.extxyz"
    write(path, labelled(12, seed=100))
    return path


def run_config(data_file, out, epochs=2, **training):
    settings = dict(epochs=epochs, batch_size=3, valid_batch_size=4, dtype="float64", seed=1, lr_warm=2e-3,
                    lr_peak=5e-3, warmup_epochs=2, ema_decay=0.5)
    settings.update(training)
    return RunConfig.from_dict({"data": {"train": str(data_file), "valid_fraction": 0.25},
                                "model": TINY_MODEL, "training": settings, "output": {"dir": str(out)}})


def trained(run, resume=False):
    trainer = Trainer(run, progress=False)
    trainer.setup(resume=resume)
    trainer.fit()
    return trainer


# -- a small reaction: H hopping beside a fixed CO (test_neb, test_batch) ------------------
def end_points():
    """H hopping between two sites beside a fixed CO."""
    base = Atoms("COH", positions=[[0, 0, 0], [1.15, 0, 0], [0.5, 1.6, 0.0]])
    base.set_constraint(FixAtoms([0, 1]))
    final = base.copy()
    final.positions[2] = [0.6, -1.6, 0.2]
    return base, final


# -- the NEMP authors' parity vectors (test_parity, test_kernels) -------------------------
CASES = ["case_a_molecule", "case_b_periodic", "case_c_periodic_nonorm", "case_d_molecule_znum_linear"]
RTOL = 1e-10


def load_case(name):
    data = np.load(require(PARITY_DIR / f"{name}.npz"))
    model = from_reference(data, str(data["hp_json"]))
    graph = AtomicGraph(
        positions=torch.tensor(data["x"]),
        numbers=torch.tensor(data["z"]),
        cell=torch.tensor(data["H"]),
        pbc=torch.tensor(data["pbc"]),
        edge_index=torch.tensor(data["edge_index"]),
        shifts=torch.tensor(data["shift"], dtype=torch.float64),
        batch=torch.tensor(data["graph"]),
    )
    return data, model, graph


def close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    tol = RTOL * max(1.0, np.abs(expected).max())
    err = np.abs(actual - expected).max()
    assert err <= tol, f"max deviation {err:.3e} > {tol:.1e}"
