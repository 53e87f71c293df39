"""Many structures per model call against one call per structure, side by side in one run.

    python benchmarks/batched.py [--part neb|relax|demo|all] [--structures 100] [--steps 100]
                                 [--dtypes float32 float64] [--threads 1 2]

With the shipped pd-co-o committee on the CO + O / Pd(111) slab (39 atoms):

* ``neb``: the demo's band (7 images, IDPP start, climbing image) for a fixed number of
  FIRE steps (FIRE takes exactly that many), its five moving images evaluated one call
  per image (ASE's ``NEB``) and in one call (``BatchedNEB``);
* ``demo``: the demo's whole protocol (``NEBOptimizer`` to fmax 0.05 eV/Å), batched
  against the previous default (images on two threads, one calculator each);
* ``relax``: ``--structures`` adsorption configurations (the slab with CO and O displaced
  at random, seeded) relaxed by BFGS one after another and together (``relax_many``).

Each pair reports wall times, the ratio, and that both paths gave the same result
(steps, barrier, final positions). On a shared machine the ratio is the figure;
absolute times are only indicative.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def configurations(n: int, seed: int = 0):
    """The demo's initial state with the adsorbates displaced at random (0.5 Å) and the
    free Pd atoms rattled (0.05 Å): n structures to relax."""
    from ase_nemp.demo import example_structures

    initial, _ = example_structures()
    rng = np.random.default_rng(seed)
    out = []
    adsorbates = [a.index for a in initial if a.symbol != "Pd"]
    for _ in range(n):
        atoms = initial.copy()
        shift = np.zeros((len(atoms), 3))
        shift[adsorbates] = rng.normal(scale=0.5 / np.sqrt(3), size=(len(adsorbates), 3))
        shift[[a.index for a in atoms if a.symbol == "Pd"]] = rng.normal(scale=0.05, size=(len(atoms) - len(adsorbates), 3))
        atoms.positions += shift
        atoms.set_constraint(initial.constraints)
        out.append(atoms)
    return out


def neb_band(calc, batched: bool, steps: int):
    from ase.mep import NEB
    from ase.optimize import FIRE

    from ase_nemp import BatchedNEB
    from ase_nemp.demo import example_structures

    initial, final = example_structures()
    for end in (initial, final):
        end.calc = calc.sibling()
    images = [initial] + [initial.copy() for _ in range(5)] + [final]
    if batched:
        neb = BatchedNEB(images, calc, climb=True, method="improvedtangent", k=0.1)
    else:
        for image in images[1:-1]:
            image.calc = calc.sibling()
        neb = NEB(images, climb=True, method="improvedtangent", k=0.1)
    neb.interpolate(method="idpp", mic=True)
    start = time.perf_counter()
    FIRE(neb, logfile=None, maxstep=0.2).run(fmax=0.01, steps=steps)
    seconds = time.perf_counter() - start
    energies = np.array([im.get_potential_energy() for im in images])
    return seconds, energies.max() - energies[0], np.array([im.positions for im in images])


def relax_one_by_one(calc, structures, fmax, steps):
    from ase.optimize import BFGS

    start = time.perf_counter()
    nsteps = []
    for atoms in structures:
        atoms.calc = calc.sibling()
        opt = BFGS(atoms, logfile=None)
        opt.run(fmax=fmax, steps=steps)
        nsteps.append(opt.nsteps)
    return time.perf_counter() - start, nsteps


def relax_together(calc, structures, fmax, steps):
    from ase_nemp import relax_many

    start = time.perf_counter()
    results = relax_many(structures, calc, fmax=fmax, steps=steps, progress=False)
    return time.perf_counter() - start, [r.steps for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    parser.add_argument("--part", choices=["neb", "relax", "demo", "all"], default="all")
    parser.add_argument("--structures", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100, help="FIRE steps of the band in part neb")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()

    import torch

    from ase_nemp import NEMPCalculator, load

    model = load(args.model)
    size = getattr(model, "size", 1)
    before = torch.get_num_threads()
    rows = []
    try:
        for dtype in args.dtypes:
            calc = NEMPCalculator(model, dtype=dtype)
            calc.calculate_batch(configurations(2))  # warm-up: kernel build, allocator
            for threads in args.threads:
                torch.set_num_threads(threads)
                if args.part in ("neb", "all"):
                    t0, b0, x0 = neb_band(calc, False, args.steps)
                    t1, b1, x1 = neb_band(calc, True, args.steps)
                    same = f"barrier {b0:.4f} / {b1:.4f} eV, positions within {np.abs(x1 - x0).max():.1e} Å"
                    rows.append((f"demo band, {args.steps} FIRE steps", dtype, threads, t0, t1, same))
                    print(rows[-1])
                if args.part in ("relax", "all"):
                    a, b = configurations(args.structures), configurations(args.structures)
                    t0, n0 = relax_one_by_one(calc, a, 0.05, 300)
                    t1, n1 = relax_together(calc, b, 0.05, 300)
                    dx = max(np.abs(x.positions - y.positions).max() for x, y in zip(a, b))
                    same = f"{sum(n0)} / {sum(n1)} steps, positions within {dx:.1e} Å"
                    rows.append((f"{args.structures} relaxations (BFGS)", dtype, threads, t0, t1, same))
                    print(rows[-1])
        if args.part in ("demo", "all"):
            from ase_nemp.demo import DEMO_PROTOCOL, example_structures
            from ase_nemp.neb import run_neb

            torch.set_num_threads(2)
            calc = NEMPCalculator(model, dtype="float32")
            res = []
            for protocol in (DEMO_PROTOCOL.replace(batched=False, workers=2), DEMO_PROTOCOL.replace(batched=True)):
                initial, final = example_structures()
                res.append(run_neb(initial, final, calc.sibling, protocol, progress=False))
            same = (f"{res[0]['neb_steps']} / {res[1]['neb_steps']} steps, barrier {res[0]['barrier']:.4f} / "
                    f"{res[1]['barrier']:.4f} eV")
            rows.append(("demo protocol, images on 2 threads vs batched", "float32", 2, res[0]["seconds"],
                         res[1]["seconds"], same))
            print(rows[-1])
    finally:
        torch.set_num_threads(before)
    print(f"\ncommittee of {size}; wall seconds, one call per structure against one call for all\n")
    print("| workload | dtype | threads | one per structure (s) | batched (s) | speed-up | same result |")
    print("|---|---|---|---|---|---|---|")
    for name, dtype, threads, t0, t1, same in rows:
        print(f"| {name} | {dtype} | {threads} | {t0:.1f} | {t1:.1f} | {t0 / t1:.2f}x | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
