"""Package-level contract: public names, and an import with no side effects."""

import json
import subprocess
import sys

import pytest
import torch


def test_public_api():
    import ase_nemp

    for name in ("NEMP", "NEMPConfig", "save", "load", "energy_forces_stress", "build_graph", "__version__"):
        assert hasattr(ase_nemp, name), name
    assert callable(ase_nemp.convert.from_reference)


def test_import_has_no_side_effects():
    code = """
import json, os, sys, torch
env = dict(os.environ); dtype = torch.get_default_dtype(); threads = torch.get_num_threads()
import ase_nemp
print(json.dumps({
    "env_same": env == dict(os.environ),
    "dtype_same": dtype == torch.get_default_dtype(),
    "threads_same": threads == torch.get_num_threads(),
    "heavy": [m for m in ("matplotlib", "yaml", "ase_nemp.train", "ase_nemp.cli") if m in sys.modules],
}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"env_same": True, "dtype_same": True, "threads_same": True, "heavy": []}


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README keeps exactly two set-up commands"
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (root / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_cli_info_and_demo(tmp_path, capsys):
    from ase_nemp import save
    from ase_nemp.cli import main
    from ase_nemp.testing import random_model

    path = save(random_model(), tmp_path / "m.pt", dataset="unit test")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "H, C, O" in out and "unit test" in out
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_layer_imports_only_torch_numpy_and_element_tables():
    """ase_nemp.model must not grow a dependency on ASE's atoms, calculators, neighbour
    lists or the training code: the layers above build on it, not the reverse."""
    import ast
    from pathlib import Path

    import ase_nemp.model

    allowed_third_party = {"torch", "numpy", "ase.data"}
    stdlib = set(sys.stdlib_module_names)
    found = {}
    for path in sorted(Path(ase_nemp.model.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 1 and node.module != "graph":  # above the model package (AtomicGraph is shared)
                    found.setdefault(path.name, []).append("." * node.level + (node.module or ""))
                names = [] if node.level else [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "__future__" or name in allowed_third_party or top in ("torch", "numpy"):
                    continue
                found.setdefault(path.name, []).append(name)
    assert not found, f"ase_nemp.model imports beyond torch, numpy and ase.data: {found}"


def test_the_torch_floor_is_the_tested_version():
    """pyproject's torch floor names a version that has every torch API the code calls
    (torch.compiler.is_compiling, fused CPU Adam), and the installed torch meets it."""
    import re
    from pathlib import Path

    import torch

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = tuple(int(x) for x in re.search(r'"torch>=([0-9.]+)"', text).group(1).split("."))
    assert floor >= (2, 4)  # is_compiling came in 2.3, fused CPU Adam in 2.4
    installed = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= floor[:2]
    assert callable(torch.compiler.is_compiling)
    torch.optim.Adam([torch.zeros(2, requires_grad=True)], fused=True, amsgrad=True)


@pytest.mark.parametrize("name", ["nemp", "equireann", "equireann-atomic-number", "leignn-direct",
                                  "leignn-conservative", "committee"])
def test_info_and_todict_name_every_architecture(name, tmp_path, capsys):
    """nemp info on any model file (it used to know NEMP's settings only) and the calculator's
    todict (it said "nemp (module)" for everything) name the architecture."""
    from ase_nemp import NEMPCalculator, save
    from ase_nemp.cli import main
    from ase_nemp.model import Committee
    from ase_nemp.testing import random_model, tiny_configs

    if name == "committee":
        model = Committee([random_model(tiny_configs()["equireann"], seed=s) for s in (1, 2)])
        architecture = "equireann"
    else:
        model, architecture = random_model(tiny_configs()[name], seed=1), name.split("-")[0]
    path = save(model, tmp_path / "m.pt")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"architecture    {architecture}" in out and "settings" in out
    assert ("committee       2 members" in out) == (name == "committee")
    assert ("direct forces" in out) == (name == "leignn-direct")
    assert NEMPCalculator(path).todict()["architecture"] == architecture
    assert NEMPCalculator(model).todict()["model"] == f"{architecture} (in memory)"
    assert NEMPCalculator(model).todict()["committee_size"] == (2 if name == "committee" else 1)
    # one protocol: the same questions and the same prediction call for a model and a committee
    from ase_nemp import load
    from ase_nemp.nl import build_graph
    from ase_nemp.testing import random_molecule

    again = load(path)
    assert (again.architecture, again.is_committee, again.size) == (architecture, name == "committee",
                                                                    2 if name == "committee" else 1)
    assert again.conservative == (name != "leignn-direct") and architecture in again.describe()
    graph = build_graph(random_molecule(seed=4), again.cutoff)
    before, after = model.predict(graph), again.predict(graph)
    assert set(before) == set(after) and ("forces_uncertainty" in after) == (name == "committee")
    for key in before:
        assert torch.equal(before[key], after[key]), key  # save and load keep every number
