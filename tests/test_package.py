"""Package-level contract: public names, and an import with no side effects."""

import json
import subprocess
import sys


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
