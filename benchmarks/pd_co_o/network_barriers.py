"""Barriers of the CO-oxidation network: the shipped committee against the reference potential.

    python benchmarks/pd_co_o/network_barriers.py --teacher /path/to/Ag-Pd-C-H-O_EMLP.pth \
        [--model ase_nemp/pretrained/pd-co-o.pt] [--reference-bands] [--groups co+o co2 "o hop" ...] \
        [--paths "co_fcc+o_fcc@2.7 ->" ...] [--output network_barriers.md]

1. The committee relaxes every structure of ``ase_nemp.sites.co_oxidation_network`` on the
   demo's slab and runs a converged climbing-image band (the demo's protocol) for every
   elementary step whose ends relaxed to two different minima (``run_network``: one band per
   pair of minima).
2. The reference potential evaluates every image of each of those bands (single points):
   the barrier the reference gives on the committee's own path.
3. With ``--reference-bands``, the reference relaxes the two ends itself and optimises its own
   band, starting from the committee's (the reference's barrier on its own path; a thousand
   and more reference calls per band, 40 minutes and more on one core).
4. With ``--reference-saddles`` instead, the reference's own transition state: the committee
   refines its band's climbing image to a saddle (P-RFO on its exact Hessian); the reference
   refines that to its own saddle (P-RFO from the committee's Hessian, updated with the
   reference's forces), takes its Hessian there (finite differences) and follows its
   imaginary mode downhill both ways; the reference relaxes the band's initial state. The
   reference's barrier is its saddle's energy above its own initial minimum (what the
   committee's band barrier measures), counted for a converged saddle with exactly one
   imaginary mode; where its mode leads is said in words (both end states, the initial
   state and an intermediate such as CO2 still bound to the surface, or two other minima:
   the band holds more than one step). A few hundred reference calls per path.

Each path's committee barrier carries its error bar (the calibrated 90 % interval for a
calibrated model file, else the committee spread), whether any image lies outside the
committee's confidence, and the reference calls it cost. A barrier counts as met when it is
within 0.05 eV of the reference's (its own band where computed, else the committee's band),
or when the committee flags the band as outside its confidence. Writes
``benchmarks/pd_co_o/network_barriers.md`` and the bands with the reference's energies
(``benchmarks/pd_co_o/network/<path>.extxyz``, rewritten by each run, or a new folder named by
``--bands``, refused if it already holds bands).
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


class Counting:
    """Counts the calls of a calculator factory's calculators (reference calls per path)."""

    def __init__(self, make):
        self.make, self.calls = make, 0

    def __call__(self):
        calc = self.make()
        original = calc.calculate

        def calculate(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        calc.calculate = calculate
        return calc


def reference_saddle(images, peak: int, template, teacher) -> tuple[float | None, str]:
    """The reference's own barrier at its own transition state near the committee's band
    (module docstring, 4): the barrier (eV, or None) and what was found."""
    from ase_nemp import NEMPCalculator
    from ase_nemp.neb import relax
    from ase_nemp.saddle import displacement, refine_saddle, rmsd, verify_saddle

    guess = images[peak].copy()
    guess.calc = NEMPCalculator(template.model, dtype=template.dtype)
    model_ts = refine_saddle(guess, guess.calc, tangent=displacement(images[peak - 1], images[peak + 1]),
                             method="prfo", progress=False)
    if not model_ts.converged:
        return None, f"committee's saddle not converged ({model_ts.fmax:.3f} eV/Å)"
    ref_ts = refine_saddle(model_ts.atoms, teacher(), tangent=model_ts.mode, method="prfo", progress=False,
                           initial_hessian=model_ts.vibrations.get_hessian_2d())
    if not ref_ts.converged or len(ref_ts.imaginary) != 1:
        return None, (f"own saddle: {ref_ts.steps} P-RFO steps, {ref_ts.fmax:.3f} eV/Å, imaginary "
                      f"{', '.join(f'{x:.0f}i' for x in ref_ts.imaginary) or 'none'} cm^-1: not a verified saddle")
    ends = [images[0].copy(), images[-1].copy()]
    for end in ends:
        relax(end, teacher(), fmax=0.01, steps=300, progress=False)
    link = verify_saddle(ref_ts, teacher(), ends, progress=False)
    what = (f"own saddle ({ref_ts.steps} P-RFO steps, {ref_ts.imaginary[0]:.0f}i cm^-1, "
            f"{rmsd(model_ts.atoms, ref_ts.atoms):.2f} Å from the committee's)")
    barrier = float(ref_ts.energy - ends[0].get_potential_energy())
    if link.connects(0, 1):
        return barrier, what + ", leads down to both end states"
    sides = "; ".join(f"{e - ends[0].get_potential_energy():+.3f} eV, {r.min():.2f} Å from the nearest end state"
                      for e, r in zip(link.energies, link.rmsd))
    # the saddle's energy above the initial state is what the committee's band barrier measures even where
    # the saddle's reactant side is a nearby minimum (a hop before the bond forms): said in words
    if 0 in link.matched:
        return barrier, what + f", leads down to the initial state and an intermediate ({sides})"
    return barrier, what + f", leads down to ({sides}): the band holds more than one step"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.environ.get("EMLP_MODEL"), help="path of the EMLP model file")
    parser.add_argument("--model", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    parser.add_argument("--groups", nargs="+", help="network groups to include (default: all)")
    parser.add_argument("--paths", nargs="+", help="only the paths whose names contain one of these strings "
                        "(and only their end structures are relaxed), e.g. 'co_fcc+o_fcc@2.7 ->'")
    parser.add_argument("--reference-bands", action="store_true", help="also optimise the reference's own bands")
    parser.add_argument("--reference-saddles", action="store_true",
                        help="also refine the reference's own transition states (cheaper than its bands)")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the committee and the reference")
    parser.add_argument("--output", type=Path, help="a new markdown file for the table (an existing one is "
                        "refused; default: the script's own network_barriers.md, which each run rewrites)")
    parser.add_argument("--bands", type=Path, help="a new folder for the bands (extxyz) instead of the script's own "
                        "network/, which each run rewrites")
    args = parser.parse_args()
    if args.output is None:
        args.output = HERE / "network_barriers.md"
    elif args.output.exists():
        parser.error(f"{args.output} exists; choose another --output (nothing is overwritten)")
    if args.bands is not None and args.bands.exists() and any(args.bands.glob("*.extxyz")):
        parser.error(f"{args.bands} already holds bands; choose another --bands (nothing is overwritten)")

    from ase.io import write
    from teacher import EMLPCalculator

    from ase_nemp import NEMPCalculator, load
    from ase_nemp.demo import DEMO_PROTOCOL, example_structures
    from ase_nemp.learn.explore import run_network
    from ase_nemp.neb import optimise_band, relax
    from ase_nemp.reaction import member_energies
    from ase_nemp.sites import Network, co_oxidation_network
    from ase_nemp.uncertainty import Calibration, doubt, model_confidence

    import torch

    torch.set_num_threads(args.threads)
    model = load(args.model, dtype=args.dtype)
    template = NEMPCalculator(model, dtype=args.dtype)
    calibration, confidence = Calibration.of(model), model_confidence(model)
    initial, _ = example_structures()
    slab = initial[:36]
    slab.set_constraint(initial.constraints[0].copy())
    network = co_oxidation_network(slab)
    if args.paths:
        chosen = {n: ends for n, ends in network.paths.items() if any(text in n for text in args.paths)}
        if not chosen:
            parser.error(f"no path name contains any of {args.paths}; names are like {next(iter(network.paths))!r}")
        ends = {e for pair in chosen.values() for e in pair}
        network = Network({n: a for n, a in network.structures.items() if n in ends}, chosen,
                          {g: [n for n in names if n in ends] for g, names in network.groups.items()})
    t0 = time.perf_counter()
    found = run_network(network, slab, lambda: NEMPCalculator(template.model, dtype=args.dtype), DEMO_PROTOCOL,
                        fmax=0.01, steps=300, groups=args.groups, progress=False, log=print)
    committee_seconds = time.perf_counter() - t0
    teacher = Counting(lambda: EMLPCalculator(args.teacher, threads=args.threads))
    out_dir = args.bands or HERE / "network"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, met = [], 0
    for name, path in found["paths"].items():
        if "barrier" not in path:
            continue
        images = path["images"]
        doubts = [doubt(im.calc.results, confidence) for im in images]
        peak = int(np.argmax(path["energies"]))
        members = [member_energies(images[0]), member_energies(images[peak])]
        spread = None if members[0] is None else float(np.std(members[1] - members[0], ddof=1))
        bar = calibration.radius("energy", spread) if calibration is not None and spread is not None else spread
        before = teacher.calls
        ref = []
        for im in images:
            copy = im.copy()
            copy.calc = teacher()
            ref.append(copy.get_potential_energy())
        ref = np.array(ref) - ref[0]
        on_band = float(ref.max())
        own, how = None, ""
        if args.reference_saddles and path["converged"] and 0 < peak < len(images) - 1:
            own, how = reference_saddle(images, peak, template, teacher)
        elif args.reference_bands:
            ends = [images[0].copy(), images[-1].copy()]
            for end in ends:
                relax(end, teacher(), fmax=0.01, steps=300, progress=False)
            band = [ends[0]] + [im.copy() for im in images[1:-1]] + [ends[1]]
            res = optimise_band(band, teacher, DEMO_PROTOCOL.replace(fmax=0.05), progress=False)
            own = float(res["barrier"]) if res["converged"] else None
            how = "own band" if res["converged"] else "own band not converged"
        reference = own if own is not None else on_band
        delta = path["barrier"] - reference
        flagged = any(doubts)
        if not path["converged"]:  # no barrier to compare: the band itself is not done
            verdict = "band not converged"
        else:
            verdict = "yes" if abs(delta) <= TOLERANCE else ("flagged" if flagged else "NO")
        met += verdict in ("yes", "flagged")
        frames = []
        for im, e_ref, why in zip(images, ref, doubts):
            frame = im.copy()
            frame.info.update(path=name, model_energy=float(im.get_potential_energy() - images[0].get_potential_energy()),
                              reference_energy=float(e_ref), outside_confidence=why is not None)
            frames.append(frame)
        write(out_dir / (re.sub(r"[^A-Za-z0-9_+.@-]+", "_", name) + ".extxyz"), frames)
        rows.append(f"| {name} | {path['barrier']:.3f}" + (f" ± {bar:.3f}" if bar is not None else "")
                    + f" | {on_band:.3f} | {'' if own is None else f'{own:.3f}'} | {how} | {delta:+.3f} "
                    f"| {'yes' if flagged else 'no'} | {teacher.calls - before} | {verdict} |")
        print(rows[-1], flush=True)
    options = (" --reference-bands" if args.reference_bands else "") + (
        " --reference-saddles" if args.reference_saddles else "") + "".join(
        f" --{flag} " + " ".join(repr(v) for v in values) for flag, values in (("groups", args.groups),
                                                                              ("paths", args.paths)) if values)
    kind = "calibrated 90 % interval" if calibration is not None else "committee spread (no calibration in the file)"
    text = [f"# The CO-oxidation network: committee barriers against the reference potential\n",
            f"`python benchmarks/pd_co_o/network_barriers.py{options}`: "
            f"model `{args.model.name}` ({args.dtype}), bands with the demo's protocol (fmax "
            f"{DEMO_PROTOCOL.fmax} eV/Å) between the distinct minima of `ase_nemp.sites.co_oxidation_network`; the "
            f"committee's part took {committee_seconds:.0f} s. ± is the {kind}. Met: a converged band within "
            f"{TOLERANCE} eV of the reference, or flagged outside the committee's confidence.\n",
            "| path | committee barrier (eV) | reference on the committee's band | reference's own | how | "
            "committee - reference | outside confidence | reference calls | met |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            f"{met} of {len(rows)} paths met; {teacher.calls} reference calls in all."]
    args.output.write_text("\n".join(text) + "\n")
    print(f"written to {args.output}")
    return 0 if met == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
