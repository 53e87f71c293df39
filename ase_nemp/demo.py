"""``nemp demo``: CO oxidation on Pd(111) with the shipped model, through ASE's NEB.

1. relax the initial state (CO + O on Pd(111)) and the final state (CO2 above the slab),
2. run a nudged elastic band (first plain, then with a climbing image),
3. print the forward barrier, the reaction energy and the convergence, and write the
   energy profile (``neb_profile.png``) and the band (``neb_band.extxyz``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "examples"


def example_structures():
    """Initial and final states of CO + O -> CO2 on Pd(111) (bottom two Pd layers fixed)."""
    from ase.io import read

    initial = read(EXAMPLES / "pd111_co_o_is.extxyz")
    final = read(EXAMPLES / "pd111_co_o_fs.extxyz")
    for atoms in (initial, final):
        atoms.calc = None
    return initial, final


def _relax(atoms, calc, fmax: float, steps: int, label: str, progress: bool = True) -> tuple[float, int]:
    from ase.optimize import BFGS
    from tqdm.auto import tqdm

    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    bar = tqdm(total=steps + 1, desc=f"relax {label}", leave=False, file=sys.stdout, mininterval=0.2,
               disable=not progress)

    def update():
        f = atoms.get_forces(apply_constraint=True)
        bar.update(1)
        bar.set_postfix(E=f"{atoms.get_potential_energy():.4f} eV", fmax=f"{(f ** 2).sum(1).max() ** 0.5:.3f}")

    opt.attach(update)
    opt.run(fmax=fmax, steps=steps)
    bar.close()
    return atoms.get_potential_energy(), opt.nsteps


def run_neb(calculator_factory, n_images: int = 7, fmax: float = 0.05, steps: int = 500,
            output: Path | None = None, progress: bool = True) -> dict:
    """Relax end points and run a climbing-image NEB; returns the results as a dict.

    ``calculator_factory()`` returns a fresh calculator (one per image keeps each image's
    neighbour-list skin useful).
    """
    import numpy as np
    from ase.mep import NEB
    from ase.optimize import FIRE
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    initial, final = example_structures()
    e_is, n_is = _relax(initial, calculator_factory(), fmax, steps, "initial state", progress)
    e_fs, n_fs = _relax(final, calculator_factory(), fmax, steps, "final state", progress)
    t_relax = time.perf_counter() - t0

    images = [initial] + [initial.copy() for _ in range(n_images - 2)] + [final]
    for image in images[1:-1]:
        image.calc = calculator_factory()
    neb = NEB(images, climb=False, method="improvedtangent")
    neb.interpolate(method="idpp", mic=True)
    opt = FIRE(neb, logfile=None)
    bar = tqdm(total=steps + 2, desc="NEB", leave=False, file=sys.stdout, mininterval=0.2, disable=not progress)
    state = {"fmax": np.inf}

    def update():
        energies = [im.get_potential_energy() for im in images]
        state["fmax"] = float(np.sqrt((neb.get_forces() ** 2).sum(axis=1).max()))
        bar.update(1)
        bar.set_postfix(barrier=f"{max(energies) - energies[0]:.3f} eV", fmax=f"{state['fmax']:.3f}",
                        climb="on" if neb.climb else "off")

    opt.attach(update)
    # plain NEB to a loose tolerance, then switch the highest image to climbing
    opt.run(fmax=max(0.5, 4 * fmax), steps=steps // 3)
    neb.climb = True
    converged = opt.run(fmax=fmax, steps=steps - opt.nsteps)
    bar.close()
    energies = np.array([im.get_potential_energy() for im in images])
    t_total = time.perf_counter() - t0

    result = {
        "E_initial": e_is, "E_final": e_fs, "barrier": float(energies.max() - energies[0]),
        "reaction_energy": float(energies[-1] - energies[0]), "energies": energies, "converged": bool(converged),
        "neb_steps": opt.nsteps, "fmax": state["fmax"], "relax_steps": (n_is, n_fs), "seconds": t_total,
        "seconds_relax": t_relax, "images": images,
    }
    if output is not None:
        _write_outputs(result, neb, Path(output))
    return result


def _write_outputs(result: dict, neb, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.io import write
    from ase.mep import NEBTools

    output.mkdir(parents=True, exist_ok=True)
    images = result["images"]
    write(output / "neb_band.extxyz", images)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    NEBTools(images).plot_band(ax)
    ax.set_title(f"CO + O -> CO2 on Pd(111): barrier {result['barrier']:.3f} eV")
    fig.tight_layout()
    fig.savefig(output / "neb_profile.png", dpi=130)
    plt.close(fig)
    result["files"] = [output / "neb_band.extxyz", output / "neb_profile.png"]


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from . import NEMPCalculator
    from .pretrained import available

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        def factory():
            return NEMPCalculator(args.model, dtype=args.dtype)
        name = str(args.model)
    else:
        if "pd-co-o" not in available():
            print("the shipped pd-co-o model is missing from this installation", file=sys.stderr)
            return 1
        from .pretrained import load

        model = load("pd-co-o")

        def factory():
            return NEMPCalculator(model, dtype=args.dtype)
        name = "pd-co-o (shipped)"
    print(f"CO oxidation on Pd(111) with NEMP model {name}: relax IS and FS, then a {args.images}-image "
          f"climbing-image NEB (fmax {args.fmax} eV/Å, at most {args.steps} steps)")
    res = run_neb(factory, n_images=args.images, fmax=args.fmax, steps=args.steps, output=args.output)
    print(f"initial state   E = {res['E_initial']:.4f} eV  ({res['relax_steps'][0]} BFGS steps)")
    print(f"final state     E = {res['E_final']:.4f} eV  ({res['relax_steps'][1]} BFGS steps)")
    print("band energies   " + " ".join(f"{e - res['energies'][0]:+.3f}" for e in res["energies"]) + " eV")
    print(f"forward barrier {res['barrier']:.3f} eV")
    print(f"reaction energy {res['reaction_energy']:+.3f} eV")
    status = "converged" if res["converged"] else "NOT converged"
    print(f"NEB             {status} after {res['neb_steps']} FIRE steps (max force {res['fmax']:.3f} eV/Å)")
    print(f"wall time       {res['seconds']:.1f} s (relaxations {res['seconds_relax']:.1f} s)")
    print(f"files           {', '.join(str(p) for p in res.get('files', []))}")
    return 0 if res["converged"] else 3
