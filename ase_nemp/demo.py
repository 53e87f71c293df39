"""``nemp demo``: the built-in example.

Until a trained model ships with the package, the demo evaluates a *random-weight*
model on a small built-in structure: it shows the path Atoms -> graph -> energy,
forces and stress, and its numbers have no physical meaning.
"""

from __future__ import annotations

import argparse
import time


def run_demo(args: argparse.Namespace) -> int:
    import numpy as np
    from ase.build import bulk

    from . import NEMP, NEMPConfig, build_graph, energy_forces_stress

    atoms = bulk("Pd", "fcc", a=3.89, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    model = NEMP(NEMPConfig.preset("emlp", species=["Pd"]), seed=0)
    print("NOTE: random-weight model (no trained model is shipped yet); the numbers below are not physical.")
    start = time.perf_counter()
    graph = build_graph(atoms, model.cutoff, dtype=model.dtype)
    out = energy_forces_stress(model, graph, stress=True)
    elapsed = time.perf_counter() - start
    print(f"structure       {atoms.get_chemical_formula()} ({len(atoms)} atoms, periodic, {graph.num_edges} edges)")
    print(f"energy          {out['energy'].item():.6f} eV")
    print(f"max |force|     {np.abs(out['forces'].numpy()).max():.6f} eV/Å")
    print(f"pressure        {-np.trace(out['stress'][0].numpy()) / 3:.6f} eV/Å^3")
    print(f"time            {1e3 * elapsed:.1f} ms (neighbour list + energy, forces, stress)")
    return 0
