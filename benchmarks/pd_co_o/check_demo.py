"""Is the demo's band a real path? The teacher's energies on the very images the demo finds.

    python benchmarks/pd_co_o/check_demo.py --teacher /path/to/Ag-Pd-C-H-O_EMLP.pth [--images 7 11]

For each band size: run ``nemp demo``'s protocol with the shipped committee (same code,
``ase_nemp.neb.run_neb`` with ``ase_nemp.demo.DEMO_PROTOCOL``), then evaluate the reference
(teacher) potential on every image of the final band, single points, nothing relaxed.
Prints and writes (``benchmarks/pd_co_o/demo_check.md``) per image: the model's energy
relative to its initial state with its committee spread, the teacher's relative energy on
the same geometry, their difference, and whether |difference| <= 0.05 eV.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
TOLERANCE = 0.05  # eV


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.environ.get("EMLP_MODEL"), help="path of the EMLP model file")
    parser.add_argument("--model", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    parser.add_argument("--images", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--output", type=Path, default=HERE / "demo_check.md")
    args = parser.parse_args()

    from teacher import EMLPCalculator

    from ase_nemp import NEMPCalculator, load
    from ase_nemp.demo import DEMO_PROTOCOL, example_structures
    from ase_nemp.neb import run_neb
    from ase_nemp.uncertainty import model_confidence, outside_confidence

    teacher = EMLPCalculator(args.teacher)
    model = load(args.model, dtype=args.dtype)
    confidence = model_confidence(model)
    template = NEMPCalculator(model, dtype=args.dtype)
    lines = [f"# The demo's final band against the reference potential\n",
             f"`python benchmarks/pd_co_o/check_demo.py --images {' '.join(map(str, args.images))}`: model "
             f"`{args.model.name}` ({args.dtype}), protocol `ase_nemp.demo.DEMO_PROTOCOL`; teacher single points on "
             f"every image of the final band (relative to the band's initial state). Tolerance {TOLERANCE} eV.\n"]
    worst_all = 0.0
    for n in args.images:
        initial, final = example_structures()
        t0 = time.perf_counter()
        res = run_neb(initial, final, lambda: NEMPCalculator(template.model, dtype=args.dtype),
                      DEMO_PROTOCOL.replace(images=n), progress=False)
        seconds = time.perf_counter() - t0
        model_rel = res["energies"] - res["energies"][0]
        ref = []
        for image in res["images"]:
            probe = image.copy()
            probe.calc = teacher
            ref.append(probe.get_potential_energy())
        ref_rel = np.array(ref) - ref[0]
        diff = model_rel - ref_rel
        bad = outside_confidence(res, confidence)
        worst = float(np.abs(diff).max())
        worst_all = max(worst_all, worst)
        lines += [
            f"## {n} images\n",
            f"NEB {'converged' if res['converged'] else 'NOT converged'} after {res['neb_steps']} steps (largest NEB "
            f"force {res['fmax']:.3f} eV/Å), {seconds:.0f} s. Barrier: model {res['barrier']:.3f} ± "
            f"{res.get('barrier_uncertainty', float('nan')):.3f} eV (image {res['peak']}), teacher on the same "
            f"image {ref_rel[res['peak']]:.3f} eV, teacher's highest image {ref_rel.max():.3f} eV. Images outside "
            f"the model's confidence: {bad or 'none'}.\n",
            "| image | model E - E_IS (eV) | committee spread (eV) | largest force spread (eV/Å) "
            "| teacher E - E_IS (eV) | model - teacher (eV) | within 0.05 eV |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in range(n):
            lines.append(f"| {k} | {model_rel[k]:+.3f} | {res['energy_uncertainty'][k]:.3f} "
                         f"| {res['forces_uncertainty'][k]:.3f} | {ref_rel[k]:+.3f} | {diff[k]:+.3f} "
                         f"| {'yes' if abs(diff[k]) <= TOLERANCE else 'NO'} |")
        lines.append("")
        print("\n".join(lines[-(n + 4):]), flush=True)
    lines.append(f"Largest |model - teacher| over all images: {worst_all:.3f} eV.")
    args.output.write_text("\n".join(lines) + "\n")
    print(f"written to {args.output}")
    return 0 if worst_all <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
