"""The CPU allocator setting (ase_nemp.perf): on with a CPU calculator, off on request, only then."""

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

import pytest

glibc = ctypes.util.find_library("c")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or glibc is None or
                                not hasattr(ctypes.CDLL(glibc), "mallinfo2"),
                                reason="glibc's mallopt and mallinfo2 (Linux, glibc >= 2.33) are what is tested")

# Holds a 64 MB tensor and reports how many bytes glibc serves from mmap'ed blocks: with its
# defaults a block that large is always mmap'ed (and unmapped on free, so every step faults it
# in again); with freed memory kept it comes from the heap.
PROBE = """
import ctypes, ctypes.util, json, sys, torch
from ase_nemp import NEMP, NEMPCalculator, NEMPConfig

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "calculator":
    NEMPCalculator(NEMP(NEMPConfig.preset("water-small", species=(1, 8)), seed=0))
elif sys.argv[1] == "trainer":
    from ase_nemp.train import RunConfig
    from ase_nemp.train.trainer import Trainer

    Trainer(RunConfig.from_dict({"data": {"train": "absent.extxyz"}, "output": {"dir": sys.argv[2]}}), progress=False)
block = torch.ones(1 << 24)  # 64 MB of float32
print(json.dumps({"mmapped": libc.mallinfo2().hblkhd, "block": block.numel() * 4}))
"""


def probe(what: str, allocator: str | None, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ASE_NEMP_ALLOCATOR"}
    if allocator is not None:
        env["ASE_NEMP_ALLOCATOR"] = allocator
    done = subprocess.run([sys.executable, "-c", PROBE, what, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cpu_calculator_keeps_freed_memory_unless_told_not_to():
    plain = probe("import only", None)
    assert plain["mmapped"] >= plain["block"]  # glibc's own: the block is mmap'ed
    kept = probe("calculator", None)
    assert kept["mmapped"] < kept["block"]  # from the heap, reused step after step
    default = probe("calculator", "default")
    assert default["mmapped"] >= default["block"]


def test_training_on_the_cpu_keeps_freed_memory(tmp_path):
    kept = probe("trainer", None, str(tmp_path / "run"))
    assert kept["mmapped"] < kept["block"]


def test_a_misspelt_setting_is_a_clear_error(monkeypatch):
    from ase_nemp import perf

    monkeypatch.setattr(perf, "_tuned", None)
    monkeypatch.setenv("ASE_NEMP_ALLOCATOR", "defualt")
    with pytest.raises(ValueError, match="ASE_NEMP_ALLOCATOR"):
        perf.tune_cpu_allocator()
