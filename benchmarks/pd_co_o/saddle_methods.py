"""P-RFO on the model's Hessian against ASE's dimer method, on the demo's saddle.

    python benchmarks/pd_co_o/saddle_methods.py [--dtype float64]

Every method starts from the same guesses of the C-O bond-forming saddle (shipped
committee): the climbing image of the demo's converged band
(``tests/data/pd_co_o_climbing_image.extxyz``), that image displaced by a random 0.05 Å
per coordinate, and the highest image of a band stopped after 100 steps without a
climbing image; each aims at a largest force of 0.01 eV/Å within 300 steps. Counted:
structures evaluated for energy and forces (the dimer's rotations and translations;
P-RFO's steps), exact Hessians during the search, wall time (with the exact Hessian at the
end that every method takes for the verification), and what each reached. Prints a
Markdown table; the README quotes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class CountCalls:
    """Counts the structures the calculator evaluates for energy and forces (Hessians do
    not go through this path) while it is active."""

    def __init__(self):
        from ase_nemp import NEMPCalculator

        self.cls, self.calls = NEMPCalculator, 0

    def __enter__(self):
        original = self.original = self.cls._evaluate

        def counted(calc, structures, lists, properties):
            self.calls += len(structures)
            return original(calc, structures, lists, properties)

        self.cls._evaluate = counted
        return self

    def __exit__(self, *exc):
        self.cls._evaluate = self.original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    from ase.io import read

    from ase_nemp import NEMPCalculator
    from ase_nemp.saddle import refine_saddle

    calc = NEMPCalculator.from_pretrained("pd-co-o", dtype=args.dtype)
    climbing = read(ROOT / "tests" / "data" / "pd_co_o_climbing_image.extxyz")
    rough = climbing.copy()
    rng = np.random.default_rng(0)
    rough.positions[18:] += rng.normal(scale=0.05, size=(len(rough) - 18, 3))
    # the reaction coordinate: C towards the adsorbed O
    tangent = np.zeros((len(climbing), 3))
    tangent[37] = climbing.positions[36] - climbing.positions[37]
    # a poor guess: the highest image of the demo's band after 100 steps without a climbing image
    from ase_nemp.demo import example_structures
    from ase_nemp.neb import NEBProtocol, run_neb

    initial, final = example_structures()
    early = run_neb(initial, final, calc.sibling, NEBProtocol(steps=100, climb=False, relax_steps=0), progress=False)
    poor = early["images"][early["peak"]].copy()
    poor_tangent = early["images"][early["peak"] + 1].positions - early["images"][early["peak"] - 1].positions
    guesses = (("climbing image", climbing, tangent), ("climbing image + 0.05 Å noise", rough, tangent),
               (f"peak of a band after 100 steps, no climbing ({early['fmax']:.2f} eV/Å)", poor, poor_tangent))
    methods = (("ASE dimer", dict(method="dimer")), ("P-RFO, exact Hessian at the start", dict(method="prfo")),
               ("P-RFO, exact Hessian renewed when lost", dict(method="prfo", refresh=True)))
    rows = ["| guess | method | steps | energy+force calls | exact Hessians (+1 at the end) | wall time (s) "
            "| largest force (eV/Å) | imaginary modes (cm^-1) | C-O(ads) (Å) |", "|---|---|---|---|---|---|---|---|---|"]
    for label, guess, direction in guesses:
        for name, options in methods:
            with CountCalls() as count:
                res = refine_saddle(guess, calc, tangent=direction, fmax=args.fmax, steps=args.steps, progress=False,
                                    **options)
            rows.append(f"| {label} | {name} | {res.steps} | {count.calls} | {res.hessians} | {res.seconds:.1f} | "
                        f"{res.fmax:.4f} | {', '.join(f'{x:.0f}i' for x in res.imaginary) or 'none'} | "
                        f"{res.atoms.get_distance(36, 37, mic=True):.2f} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
