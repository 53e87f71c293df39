"""Paths of the CO-oxidation network split into verified elementary steps, against the reference.

    python benchmarks/pd_co_o/network_steps.py --teacher /path/to/Ag-Pd-C-H-O_EMLP.pth \
        [--paths "co_bridge+o_fcc@2.9 ->" ...] [--model ase_nemp/pretrained/pd-co-o.pt] \
        [--dtype float32] [--output network_steps.md]

A single climbing-image band from CO and O on a pair of sites straight to CO2 in the gas
(``network_barriers.py``) holds several elementary steps (hops, the C-O bond, the CO2
leaving) and, from some pairs, does not converge at all. Here each chosen path of
``ase_nemp.sites.co_oxidation_network`` runs what ``nemp demo`` runs
(:func:`ase_nemp.reaction.elementary_steps`, the demo's settings): its two ends relaxed and
checked to be minima, the band split at intermediate minima, each saddle refined and
verified. For every elementary step the reference potential then evaluates the step's
initial minimum and its saddle (or, for a step without a saddle, the band's highest image)
at the committee's geometries: the reference's barrier on the committee's own path.

A step counts as met when its barrier is within 0.05 eV of the reference's, or when the
committee flags the step as outside its confidence (an image or the saddle whose force or
energy spread exceeds the model's thresholds: the demo's "in confidence" column); a step that
could not be verified (its flags, in words) is not met unless it is within 0.05 eV. Writes a markdown table (``--output``)
and the steps' bands and saddles with the committee's energies (``network/steps/<path>_<k>.extxyz``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
TOLERANCE = 0.05  # eV
DEFAULT_PATHS = ["co_bridge+o_fcc@2.9 ->", "co_bridge+o_fcc@3.9 ->", "co_bridge+o_hcp@2.9 ->",
                 "co_bridge+o_hcp@4.0 ->"]  # the paths whose single band did not converge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.environ.get("EMLP_MODEL"), help="path of the EMLP model file")
    parser.add_argument("--model", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    parser.add_argument("--paths", nargs="+", default=DEFAULT_PATHS,
                        help="paths whose names contain one of these strings (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the committee and the reference")
    parser.add_argument("--output", type=Path, help="a new markdown file for the table (an existing one is "
                        "refused; default: the script's own network_steps.md, which each run rewrites)")
    args = parser.parse_args()
    if args.output is None:
        args.output = HERE / "network_steps.md"
    elif args.output.exists():
        parser.error(f"{args.output} exists; choose another --output (nothing is overwritten)")
    if not args.teacher or not Path(args.teacher).is_file():
        parser.error("the reference potential's model file is needed: --teacher PATH or EMLP_MODEL")

    import torch
    from ase.io import write
    from teacher import EMLPCalculator

    from ase_nemp import NEMPCalculator, load
    from ase_nemp.demo import DEMO_SETTINGS, example_structures
    from ase_nemp.learn.explore import nudged
    from ase_nemp.reaction import EndPointError, elementary_steps
    from ase_nemp.report import confidence_flags
    from ase_nemp.sites import co_oxidation_network
    from ase_nemp.uncertainty import model_confidence

    torch.set_num_threads(args.threads)
    model = load(args.model, dtype=args.dtype)
    confidence = model_confidence(model)
    calc = NEMPCalculator(model, dtype=args.dtype)
    initial, _ = example_structures()
    slab = initial[:36]
    slab.set_constraint(initial.constraints[0].copy())
    network = co_oxidation_network(slab)
    chosen = {n: ends for n, ends in network.paths.items() if any(text in n for text in args.paths)}
    if not chosen:
        parser.error(f"no path name contains any of {args.paths}; names are like {next(iter(network.paths))!r}")
    teacher = EMLPCalculator(args.teacher, threads=args.threads)
    out_dir = HERE / "network" / "steps"
    out_dir.mkdir(parents=True, exist_ok=True)

    def reference(atoms) -> float:
        copy = atoms.copy()
        copy.calc = teacher
        return float(copy.get_potential_energy())

    rows, met, total, t0 = [], 0, 0, time.perf_counter()
    for name, (first, last) in chosen.items():
        a = nudged(network.structures[first], first, len(slab))
        b = nudged(network.structures[last], last, len(slab))
        started = time.perf_counter()
        try:
            path = elementary_steps(a, b, calc, DEMO_SETTINGS, progress=False, log=print)
        except EndPointError as err:
            rows.append(f"| {name} | – | – | – | – | – | – | – | end points: {err} |")
            print(rows[-1], flush=True)
            continue
        minutes = (time.perf_counter() - started) / 60
        for k, step in enumerate(path.steps, start=1):
            total += 1
            top = step.saddle.atoms if step.saddle is not None else max(step.images,
                                                                        key=lambda im: im.get_potential_energy())
            on_path = reference(top) - reference(step.initial)
            delta = step.barrier - on_path
            outside = bool(confidence_flags(step, confidence)) if confidence is not None else False
            bar, _ = step.error_bar
            verdict = ("yes" if abs(delta) <= TOLERANCE else "flagged" if outside else "NO") + (
                f" ({'; '.join(step.flags)})" if step.flags else "")
            met += verdict.startswith(("yes", "flagged"))
            kind = "saddle" if step.saddle is not None else "band's highest image (no saddle)"
            rows.append(f"| {name} | {k} of {len(path.steps)} | {step.barrier:.3f}"
                        + (f" ± {bar:.3f}" if bar is not None else "")
                        + f" | {on_path:.3f} ({kind}) | {delta:+.3f} | {step.reaction_energy:+.3f} "
                        f"| {'yes' if outside else 'no'} | {minutes:.1f} | {verdict} |")
            print(rows[-1], flush=True)
            frames = []  # the step's band, then its saddle where it has one
            shown = [(im, "band") for im in step.images]
            if step.saddle is not None:
                shown.append((top, "saddle"))
            for im, role in shown:
                frame = im.copy()
                frame.info.update(path=name, step=k, role=role, model_energy=float(
                    im.get_potential_energy() - step.initial.get_potential_energy()))
                frames.append(frame)
            write(out_dir / (re.sub(r"[^A-Za-z0-9_+.@-]+", "_", name) + f"_{k}.extxyz"), frames)
    text = ["# Network paths split into elementary steps: committee against the reference potential\n",
            f"`python benchmarks/pd_co_o/network_steps.py --paths {' '.join(repr(p) for p in args.paths)}`: model "
            f"`{args.model.name}` ({args.dtype}), each path through `ase_nemp.reaction.elementary_steps` with the "
            f"demo's settings, {(time.perf_counter() - t0) / 60:.0f} minutes in all. ± is the calibrated 90 % "
            "interval. The reference evaluates the committee's own geometries: the step's initial minimum and its "
            f"saddle. Met: within {TOLERANCE} eV of the reference, or flagged outside the committee's confidence.\n",
            "| path | step | committee barrier (eV) | reference at the same geometries (eV) | committee - reference "
            "| reaction energy (eV) | outside confidence | committee minutes (path) | met |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            f"{met} of {total} steps met."]
    args.output.write_text("\n".join(text) + "\n")
    print(f"written to {args.output}")
    return 0 if met == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
