"""The neighbour-list engines side by side: the C cell list (``ase_nemp.nl.cells``) against
matscipy's, alone and inside a calculator step.

    taskset -c 0,1 python benchmarks/neighbours.py [--sizes 1536 12288] [--threads 1 2] [--rounds 25]

Water boxes of ``benchmarks/speed.py``, NEMP water-small (random weights), float32,
``NEMPCalculator`` with ``skin`` 0 (the list rebuilt every step, as ``speed.py`` times
it) and with the calculator's default skin (0.5 Å: built with the skin, then filtered to
the cutoff while no atom moved more than half of it). Each round evaluates energy and
forces once with each engine, one after the other in the same process, after moving
every atom by about 1e-3 Å; reported are medians over the rounds (the first two left
out) of the step and of the time in the neighbour list, µs per atom.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(size: int, threads: int, rounds: int, skin: float) -> str:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from speed import build_system

    from ase_nemp import NEMP, NEMPCalculator, NEMPConfig

    torch.set_num_threads(threads)
    atoms = build_system("water", size)
    model = NEMP(NEMPConfig.preset("water-small", species=["H", "O"]), seed=0)
    calcs = {engine: NEMPCalculator(model, dtype="float32", skin=skin) for engine in ("cells", "matscipy")}
    for engine, calc in calcs.items():
        calc.neighbour_list.engine = engine
    rng = np.random.default_rng(0)
    step = {e: [] for e in calcs}
    search = {e: [] for e in calcs}
    for r in range(rounds + 2):
        for engine, calc in calcs.items():
            atoms.positions += rng.normal(0, 1e-3, atoms.positions.shape)
            before = calc.neighbour_list.seconds
            start = time.perf_counter()
            calc.get_forces(atoms)
            if r >= 2:
                step[engine].append(time.perf_counter() - start)
                search[engine].append(calc.neighbour_list.seconds - before)
    n = len(atoms)
    us = {e: (1e6 * np.median(step[e]) / n, 1e6 * np.median(search[e]) / n) for e in calcs}
    return (f"| {n:,} | {threads} | {skin} | {us['matscipy'][0]:.1f} ({us['matscipy'][1]:.2f}) | "
            f"{us['cells'][0]:.1f} ({us['cells'][1]:.2f}) | {us['matscipy'][0] / us['cells'][0]:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1536, 12288])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--skins", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        size, threads, rounds, skin = args.worker
        print(worker(int(size), int(threads), int(rounds), float(skin)))
        return
    print("| atoms | threads | skin (Å) | matscipy: step (of it the list), µs/atom | C cell list: step (list) | "
          "matscipy / C |\n|---|---|---|---|---|---|")
    for skin in args.skins:
        for size in args.sizes:
            for threads in args.threads:
                out = subprocess.run([sys.executable, __file__, "--worker", str(size), str(threads), str(args.rounds),
                                      str(skin)], capture_output=True, text=True, check=True,
                                     env={**__import__("os").environ, "OMP_NUM_THREADS": str(threads)})
                print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
