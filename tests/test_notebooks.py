"""The notebooks run top to bottom (with NEMP_QUICK=1, which shortens every loop)."""

import json
from pathlib import Path

import pytest

from .conftest import DATA_DIR, require

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_four_notebooks_without_outputs():
    assert [nb.name for nb in NOTEBOOKS] == [
        "01-quickstart.ipynb", "02-co-oxidation-neb.ipynb", "03-molecular-dynamics.ipynb", "04-train-your-own.ipynb"]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name} has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the 'test' extra (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need the 'test' extra (nbclient)")
    if "train-your-own" in path.name:
        require(DATA_DIR / "botnet" / "acac" / "train_300K.xyz")
    from ase_nemp.pretrained import available

    if "pd-co-o" not in available() and "train-your-own" not in path.name:
        pytest.fail("the shipped pd-co-o model is missing")
    monkeypatch.setenv("NEMP_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
