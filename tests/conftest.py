"""Shared fixtures. Data under ../shared is optional: tests that need it skip with a reason."""

from pathlib import Path

import pytest

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
def dask_executor():
    """A Dask distributed cluster of 2 worker processes on this machine, as an Executor."""
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed "
                                                            "(pip install 'dask[distributed]')")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    client = distributed.Client(cluster)
    yield client.get_executor(pure=False)
    client.close()
    cluster.close()
