"""Parameter count and cost of one energy+forces evaluation for every preset of every
architecture (NEMP, EquiREANN, LEIGNN in both force modes).

System: the 192-atom periodic water box ``../shared/data/water/water-64.extxyz``
(elements of each preset's typical data set are added so the species tables have their
real size; the box itself only holds H and O). The neighbour list is built once,
outside the timing; the time is the median of several energy+forces calls on random
weights.

    python benchmarks/model_cost.py [--threads 1] [--dtype float32] [--repeat 5] [--architecture all]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from ase.data import chemical_symbols
from ase.io import read

from ase_nemp import build_graph, create_model, energy_forces_stress
from ase_nemp.model import ARCHITECTURES, config_class

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT.parent / "shared" / "data" / "water" / "water-64.extxyz"
SPECIES = {
    "water": ["H", "O"],
    "water-small": ["H", "O"],
    "3bpa": ["H", "C", "N", "O"],
    "ani1x": ["H", "C", "N", "O"],
    "hme21": chemical_symbols[1:38],
    "emlp": ["H", "C", "O", "Pd", "Ag"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--structure", type=Path, default=WATER)
    parser.add_argument("--architecture", choices=[*ARCHITECTURES, "all"], default="all")
    args = parser.parse_args()
    if not args.structure.exists():
        raise SystemExit(f"structure file not found: {args.structure}")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    atoms = read(args.structure)

    print(f"{len(atoms)}-atom water box, {args.dtype}, {args.threads} thread(s), median of {args.repeat}\n")
    print("| architecture | preset | species | parameters | cutoff (Å) | edges | energy+forces (ms) | µs/atom |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for arch in ARCHITECTURES if args.architecture == "all" else [args.architecture]:
        for name in config_class(arch).PRESETS:
            for mode in ("direct", "conservative") if arch == "leignn" else (None,):
                rows.append((arch, name, {} if mode is None else {"force_mode": mode}))
    for arch, name, extra in rows:
        species = SPECIES.get(name, ["H", "O"]) if arch == "nemp" else ["H", "O"]
        model = create_model(arch, species=species, preset=name, dtype=dtype, seed=0, **extra)
        graph = build_graph(atoms, model.cutoff, dtype=dtype)
        energy_forces_stress(model, graph)  # warm-up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            energy_forces_stress(model, graph)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        label = arch + (f" ({extra['force_mode']} forces)" if extra else "")
        print(f"| {label} | {name} | {len(species)} | {model.num_parameters():,} | {model.cutoff} | {graph.num_edges:,} "
              f"| {1e3 * t:.1f} | {1e6 * t / len(atoms):.0f} |")


if __name__ == "__main__":
    main()
