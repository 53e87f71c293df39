"""``nemp demo``: CO oxidation on Pd(111) with the shipped committee, from a band to rates.

The demo runs :func:`ase_nemp.reaction.elementary_steps` on the example end points (CO +
O on Pd(111), CO2 above the slab):

1. relax both end points (BFGS to 0.01 eV/Å) and check that they are minima;
2. run a climbing-image band between them; where an interior image relaxes to a deeper
   minimum (the O adatom hopping to the neighbouring hollow before the C-O bond forms),
   split the band there and run each part again, so that every step is elementary;
3. refine each step's climbing image to a saddle (ASE's dimer method), check with the
   model's exact Hessian that it has exactly one imaginary mode and leads downhill to the
   step's minima;
4. report each step's barrier from the minimum it starts from, its imaginary frequency,
   harmonic-TST prefactor and rates, each with its committee spread, and write the
   minima, bands, saddles (with their modes), the table (``steps.md``) and the profile
   of the whole path (``profile.png``).

An image or saddle is **outside the model's confidence** when its largest atomic force
uncertainty exceeds the committee's force threshold, or the spread of its energy exceeds
the energy threshold. The thresholds are those the shipped model was trained to (its
metadata ``confidence``); a step with such a point may pass through a configuration the
model has not seen, and its barrier is not to be trusted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .neb import NEBProtocol
from .reaction import ReactionSettings
from .uncertainty import DEFAULT_CONFIDENCE, model_confidence, outside_confidence  # noqa: F401 (once defined here)

EXAMPLES = Path(__file__).resolve().parent / "examples"
DEMO_PROTOCOL = NEBProtocol()  # batched images (one model call per step): the same band, 1.5x faster than threads
DEMO_SETTINGS = ReactionSettings(protocol=DEMO_PROTOCOL)


def example_structures():
    """Initial and final states of CO + O -> CO2 on Pd(111) (bottom two Pd layers fixed)."""
    from ase.io import read

    initial = read(EXAMPLES / "pd111_co_o_is.extxyz")
    final = read(EXAMPLES / "pd111_co_o_fs.extxyz")
    for atoms in (initial, final):
        atoms.calc = None
    return initial, final


def oxidation_step(path) -> int | None:
    """Index of the step in which the C-O bond of CO2 forms (None if no step does)."""
    from .report import describe_step

    for k, step in enumerate(path.steps):
        words = describe_step(step.initial, step.final)
        if "bond forms" in words and "C" in words and "O" in words:
            return k
    return None


def _rates(step) -> str:
    r = step.rate
    spreads = r.log10_rate_spread if r.log10_rate_spread is not None else [None] * len(r.log10_rate)
    return ", ".join(f"{t:.0f} K: {k:.2e} s^-1" + (f" (x/÷ {10 ** sp:.1f})" if sp is not None else "")
                     for t, k, sp in zip(r.temperatures, r.rate, spreads))


def run_demo(args: argparse.Namespace) -> int:
    from . import NEMPCalculator
    from .devices import set_threads
    from .files import check_writable_folder
    from .io import load
    from .reaction import elementary_steps
    from .report import describe_step, exit_code, refuse_existing, summarise

    set_threads(args.threads)
    protocol = DEMO_SETTINGS.protocol.replace(**{k: v for k, v in (("images", args.images), ("fmax", args.fmax),
                                                                   ("steps", args.steps)) if v is not None})
    settings = DEMO_SETTINGS.replace(protocol=protocol, **{k: v for k, v in (
        ("max_steps", args.max_steps), ("saddle_steps", args.saddle_steps)) if v is not None})
    refuse_existing(args.output)
    check_writable_folder(args.output)
    if args.model:
        path, name = args.model, str(args.model)
    else:
        from .pretrained import available, model_path

        if "pd-co-o" not in available():
            print("the shipped pd-co-o model is missing from this installation", file=sys.stderr)
            return 1
        path, name = model_path("pd-co-o"), "pd-co-o (shipped)"
    model = load(path, dtype=args.dtype)
    confidence = model_confidence(model)
    calc = NEMPCalculator(model, dtype=args.dtype)
    kind = f"committee of {model.size}" if confidence is not None else "single model (no uncertainty)"
    print(f"CO oxidation on Pd(111) with NEMP model {name}, {kind}: relax the end points, run "
          f"{protocol.images}-image climbing-image bands (fmax {protocol.fmax} eV/Å), split them into elementary "
          "steps, refine and verify every saddle, and give each step its harmonic-TST rate")
    initial, final = example_structures()
    reaction = elementary_steps(initial, final, calc, settings, progress=not args.quiet, log=print)
    title = "CO + O -> CO2 on Pd(111): " + ", ".join(
        f"step {k} {st.barrier:.2f}" + (f" ± {st.error_bar[0]:.2f}" if st.error_bar[0] is not None else "") + " eV"
        for k, st in enumerate(reaction.steps, start=1))
    summarise(reaction, args.output, title, confidence)
    e0 = reaction.minima[0].get_potential_energy()
    k = oxidation_step(reaction)
    for j, step in enumerate(reaction.steps):
        start = step.initial.get_potential_energy() - e0
        label = "CO + O -> CO2" if j == k else describe_step(step.initial, step.final)
        bar, kind = step.error_bar
        spread = f" ± {bar:.3f}" if bar is not None else ""
        line = (f"step {j + 1} ({label}): barrier {step.barrier:.3f}{spread} eV" + (f" ({kind})" if kind else "")
                + f" from the minimum it starts from ({start:+.3f} eV relative to the initial state)")
        if step.rate is not None:
            line += (f", saddle {step.saddle.imaginary_frequency:.0f}i cm^-1, prefactor {step.rate.prefactor:.2e} "
                     f"s^-1, rate {_rates(step)}")
        print(line + ("" if step.verified else "  [NOT verified: " + "; ".join(step.flags) + "]"))
    return exit_code(reaction, confidence)
