"""The demo's elementary steps against the reference potential's own saddles and rates.

    python benchmarks/pd_co_o/check_saddles.py --teacher /path/to/Ag-Pd-C-H-O_EMLP.pth

1. Run ``nemp demo``'s analysis with the shipped committee (the same code:
   ``ase_nemp.reaction.elementary_steps`` with the demo's settings).
2. For every step with a saddle, let the reference (teacher) potential find its *own*
   stationary points, starting from the model's: relax the step's initial minimum,
   refine the saddle (P-RFO, Hessians by finite differences of the teacher's forces),
   and take its Hessians over the same free atoms.
3. Compare barrier (from the step's initial minimum), zero-point-corrected barrier,
   imaginary frequency, Vineyard prefactor and rates, each from each potential's own
   stationary points; the targets are 0.05 eV, 15 % and a factor of 3.

Writes ``benchmarks/pd_co_o/saddle_check.md`` and prints it.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.environ.get("EMLP_MODEL"), help="path of the EMLP model file")
    parser.add_argument("--model", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--output", type=Path, default=HERE / "saddle_check.md")
    args = parser.parse_args()

    from teacher import EMLPCalculator

    from ase_nemp import NEMPCalculator
    from ase_nemp.demo import DEMO_SETTINGS, example_structures
    from ase_nemp.report import describe_step
    from ase_nemp.neb import relax
    from ase_nemp.rates import harmonic_rate
    from ase_nemp.reaction import elementary_steps
    from ase_nemp.saddle import refine_saddle, rmsd, verify_saddle
    from ase_nemp.vibrations import hessian

    teacher = EMLPCalculator(args.teacher)
    calc = NEMPCalculator(args.model, dtype=args.dtype)
    initial, final = example_structures()
    t0 = time.perf_counter()
    path = elementary_steps(initial, final, calc, DEMO_SETTINGS, progress=False, log=print)
    seconds_model = time.perf_counter() - t0
    temperatures = DEMO_SETTINGS.temperatures
    e0 = path.minima[0].get_potential_energy()
    lines = ["# The demo's elementary steps against the reference potential\n",
             f"`python benchmarks/pd_co_o/check_saddles.py`: model `{args.model.name}` ({args.dtype}), settings "
             "`ase_nemp.demo.DEMO_SETTINGS`. The model's numbers come from its own minima and saddles "
             f"({seconds_model:.0f} s for the whole analysis); the reference potential's from *its own* minima "
             "and saddles, found from the model's (BFGS to 0.01 eV/Å; P-RFO to 0.01 eV/Å starting from the model's "
             "Hessian, updated with the reference's forces; the reference's own Hessians by finite differences "
             "over the same 21 free atoms for the frequencies). Targets: barrier within 0.05 eV, imaginary "
             "frequency within 15 %, prefactor within a factor of 3.\n"]
    ok = True
    for k, step in enumerate(path.steps, start=1):
        what = describe_step(step.initial, step.final)
        if step.saddle is None or step.rate is None:
            lines.append(f"## Step {k}: {what}\n\nNo verified saddle with the model ({'; '.join(step.flags)}).\n")
            continue
        t1 = time.perf_counter()
        ref_min = step.initial.copy()
        relax(ref_min, teacher, fmax=0.01, steps=500, progress=False)
        # the teacher's Hessians cost 6 force calls per free atom: start from the model's
        ref_ts = refine_saddle(step.saddle.atoms, teacher, tangent=step.saddle.mode, method="prfo", progress=False,
                               initial_hessian=step.saddle.vibrations.get_hessian_2d())
        link = verify_saddle(ref_ts, teacher, [ref_min, step.final], progress=False)
        vib_min = hessian(ref_min, teacher)
        barrier = ref_ts.energy - ref_min.get_potential_energy()
        ref_rate = harmonic_rate(vib_min, ref_ts.vibrations, barrier, temperatures)
        seconds_ref = time.perf_counter() - t1
        m = step.rate
        rows = [
            ("barrier (eV)", f"{m.barrier:.3f} ± {m.barrier_spread:.3f}", f"{ref_rate.barrier:.3f}",
             f"{m.barrier - ref_rate.barrier:+.3f}", abs(m.barrier - ref_rate.barrier) <= 0.05),
            ("ZPE-corrected barrier (eV)", f"{m.zpe_barrier:.3f}", f"{ref_rate.zpe_barrier:.3f}",
             f"{m.zpe_barrier - ref_rate.zpe_barrier:+.3f}", None),
            ("imaginary frequency (cm^-1)", f"{step.saddle.imaginary_frequency:.0f}i",
             f"{ref_ts.imaginary_frequency:.0f}i",
             f"{100 * (step.saddle.imaginary_frequency / ref_ts.imaginary_frequency - 1):+.1f} %",
             abs(step.saddle.imaginary_frequency / ref_ts.imaginary_frequency - 1) <= 0.15),
            ("log10 prefactor (s^-1)", f"{m.log10_prefactor:.2f} ± {m.log10_prefactor_spread:.2f}",
             f"{ref_rate.log10_prefactor:.2f}", f"x{10 ** (m.log10_prefactor - ref_rate.log10_prefactor):.2f}",
             abs(m.log10_prefactor - ref_rate.log10_prefactor) <= np.log10(3.0)),
        ]
        for i, t in enumerate(temperatures):
            rows.append((f"log10 k({t:.0f} K) (s^-1)", f"{m.log10_rate[i]:.2f} ± {m.log10_rate_spread[i]:.2f}",
                         f"{ref_rate.log10_rate[i]:.2f}", f"{m.log10_rate[i] - ref_rate.log10_rate[i]:+.2f}", None))
        checks = [r[4] for r in rows if r[4] is not None]
        ok &= all(checks)
        lines += [
            f"## Step {k}: {what}\n",
            f"From the minimum at {step.initial.get_potential_energy() - e0:+.3f} eV (model, relative to the initial "
            f"state). Reference saddle: {ref_ts.steps} P-RFO steps from the model's, largest force {ref_ts.fmax:.4f} "
            f"eV/Å, imaginary modes {', '.join(f'{x:.0f}i' for x in ref_ts.imaginary)} cm^-1, RMSD to the model's "
            f"saddle {rmsd(step.saddle.atoms, ref_ts.atoms):.3f} Å; downhill it reaches "
            f"{'both of the step' + chr(39) + 's minima' if link.connects(0, 1) else 'other states: ' + str(link.matched)}"
            f". Reference minimum {rmsd(step.initial, ref_min):.3f} Å from the model's. {seconds_ref:.0f} s.\n",
            "| quantity | model (committee mean ± spread) | reference potential | model - reference | within target |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} | {'-' if e is None else 'yes' if e else 'NO'} |" for a, b, c, d, e in rows]
        lines.append("")
        print("\n".join(lines[-(len(rows) + 5):]), flush=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"written to {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
