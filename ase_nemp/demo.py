"""``nemp demo``: CO oxidation on Pd(111) with the shipped committee, through ASE's NEB.

1. relax the initial state (CO + O on Pd(111)) and the final state (CO2 above the slab),
2. run a nudged elastic band (first plain, then with a climbing image; :mod:`ase_nemp.neb`),
3. print the forward barrier with its committee uncertainty, the reaction energy, the
   convergence and every image's uncertainty, and warn when an image lies outside the
   model's confidence; write the energy profile (``neb_profile.png``, with the members'
   spread) and the band (``neb_band.extxyz``, with the uncertainties per image).

An image is **outside the model's confidence** when its largest atomic force uncertainty
exceeds the committee's force threshold, or the spread of its energy relative to the
initial state exceeds the energy threshold. The thresholds are those the shipped model
was trained to (its metadata ``confidence``); a band with such an image may pass through
a configuration the model has not seen, and its barrier is not to be trusted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .neb import NEBProtocol, run_neb

EXAMPLES = Path(__file__).resolve().parent / "examples"
# used when a model file carries no "confidence" metadata
DEFAULT_CONFIDENCE = {"forces_uncertainty": 0.15, "energy_uncertainty": 0.05}
DEMO_PROTOCOL = NEBProtocol()  # batched images (one model call per step): the same band, 1.5x faster than threads


def example_structures():
    """Initial and final states of CO + O -> CO2 on Pd(111) (bottom two Pd layers fixed)."""
    from ase.io import read

    initial = read(EXAMPLES / "pd111_co_o_is.extxyz")
    final = read(EXAMPLES / "pd111_co_o_fs.extxyz")
    for atoms in (initial, final):
        atoms.calc = None
    return initial, final


def outside_confidence(result: dict, confidence: dict) -> list[int]:
    """Indices of the images whose uncertainty exceeds the thresholds (committees only)."""
    if "forces_uncertainty" not in result:
        return []
    f_bad = result["forces_uncertainty"] > confidence["forces_uncertainty"]
    e_bad = result["energy_uncertainty"] > confidence["energy_uncertainty"]
    return [int(k) for k in np.flatnonzero(f_bad | e_bad)]


def write_outputs(result: dict, output: Path, confidence: dict, title: str) -> list[Path]:
    """The band (extxyz, with per-image uncertainties in ``info``) and the energy profile."""
    from ase.io import write
    from ase.utils.forcecurve import fit_images

    from .train.plots import figure

    images = result["images"]
    committee = "energy_uncertainty" in result
    bad = outside_confidence(result, confidence)
    frames = []
    for k, image in enumerate(images):
        frame = image.copy()
        frame.calc = image.calc
        frame.info.update(image=k, relative_energy=float(result["energies"][k] - result["energies"][0]))
        if committee:
            frame.info.update(energy_uncertainty=float(result["energy_uncertainty"][k]),
                              max_forces_uncertainty=float(result["forces_uncertainty"][k]),
                              outside_confidence=k in bad)
        frames.append(frame)
    write(output / "neb_band.extxyz", frames)

    # the profile: ASE's NEB fit (ase.utils.forcecurve, what NEBTools draws): cubic pieces
    # through the image energies with the slopes of the tangential forces, so no overshoot
    # where forces and energies agree
    fit = fit_images(images)
    path, energies = np.asarray(fit.path), np.asarray(fit.energies)
    fig, ax = figure(figsize=(6.5, 4.5))
    ax.plot(fit.fit_path, fit.fit_energies, "-", color="C0", lw=1.5, label="fit (energies + tangential forces)")
    if committee:
        for m, members in enumerate(result["member_energies"].T):
            ax.plot(path, members, "-", color="0.6", lw=0.6, alpha=0.8, label="committee members" if m == 0 else None)
        ax.errorbar(path, energies, yerr=result["energy_uncertainty"], fmt="o", color="C0", capsize=3,
                    label="images: committee mean ± spread")
        if bad:
            ax.plot(path[bad], energies[bad], "o", ms=11, mfc="none", mec="red", mew=2,
                    label="outside the model's confidence")
            ax.text(0.02, 0.97, f"WARNING: {len(bad)} image(s) outside the model's confidence:\n"
                    "the barrier is not to be trusted", transform=ax.transAxes, va="top", color="red", fontsize=9)
    else:
        ax.plot(path, energies, "o", color="C0", label="images")
    ax.set_xlabel("reaction path (Å)")
    ax.set_ylabel("energy relative to the initial state (eV)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(output / "neb_profile.png", dpi=130)
    return [output / "neb_band.extxyz", output / "neb_profile.png"]


def run_demo(args: argparse.Namespace) -> int:
    from . import NEMPCalculator
    from .devices import set_threads
    from .io import check_writable_folder, load

    set_threads(args.threads)
    protocol = DEMO_PROTOCOL.replace(**{k: v for k, v in (("images", args.images), ("fmax", args.fmax),
                                                          ("steps", args.steps)) if v is not None})
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
    confidence = {**DEFAULT_CONFIDENCE, **(getattr(model, "metadata", {}).get("confidence") or {})}
    template = NEMPCalculator(model, dtype=args.dtype)

    def factory():
        return NEMPCalculator(template.model, dtype=args.dtype)

    kind = f"committee of {model.size}" if hasattr(model, "members") else "single model (no uncertainty)"
    print(f"CO oxidation on Pd(111) with NEMP model {name}, {kind}: relax IS and FS, then a "
          f"{protocol.images}-image climbing-image NEB (fmax {protocol.fmax} eV/Å, at most {protocol.steps} steps)")
    initial, final = example_structures()
    res = run_neb(initial, final, factory, protocol, progress=not args.quiet)
    committee = "energy_uncertainty" in res
    bad = outside_confidence(res, confidence)
    rel = res["energies"] - res["energies"][0]
    print(f"initial state   E = {res['E_initial']:.4f} eV  ({res['relax_steps'][0]} BFGS steps)")
    print(f"final state     E = {res['E_final']:.4f} eV  ({res['relax_steps'][1]} BFGS steps)")
    if committee:
        print("image   E - E_IS (eV)   spread (eV)   largest force spread (eV/Å)")
        for k in range(len(rel)):
            flag = "  <- outside the model's confidence" if k in bad else ""
            print(f"{k:5d}   {rel[k]:+12.3f}   {res['energy_uncertainty'][k]:11.3f}   "
                  f"{res['forces_uncertainty'][k]:27.3f}{flag}")
        print(f"forward barrier {res['barrier']:.3f} ± {res['barrier_uncertainty']:.3f} eV (image {res['peak']}; "
              "± the committee spread)")
    else:
        print("band energies   " + " ".join(f"{e:+.3f}" for e in rel) + " eV")
        print(f"forward barrier {res['barrier']:.3f} eV (a single model: no uncertainty)")
    print(f"reaction energy {res['reaction_energy']:+.3f} eV")
    status = "converged" if res["converged"] else "NOT converged"
    print(f"NEB             {status} after {res['neb_steps']} {protocol.optimizer} steps "
          f"(largest NEB force {res['fmax']:.3f} eV/Å)")
    print(f"wall time       {res['seconds']:.1f} s (relaxations {res['seconds_relax']:.1f} s)")
    title = (f"CO + O -> CO2 on Pd(111): barrier {res['barrier']:.3f}"
             + (f" ± {res['barrier_uncertainty']:.3f}" if committee else "") + " eV")
    files = write_outputs(res, args.output, confidence, title)
    print(f"files           {', '.join(str(p) for p in files)}")
    if bad:
        print(f"WARNING: image(s) {', '.join(map(str, bad))} lie outside the model's confidence (force spread above "
              f"{confidence['forces_uncertainty']} eV/Å or energy spread above {confidence['energy_uncertainty']} eV): "
              "the band may pass through configurations the model has not seen, and the barrier is not to be "
              "trusted. Label such frames with a reference method and fine-tune (nemp learn).", file=sys.stderr)
        return 4
    return 0 if res["converged"] else 3
