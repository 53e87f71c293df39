"""Evaluate the shipped pd-co-o model: held-out errors per config_type and the NEB barrier.

    python benchmarks/pd_co_o/evaluate.py [--model ase_nemp/pretrained/pd-co-o.pt]

The held-out set is the 10 % validation split of ``../shared/data/pd_co_o/train.extxyz``
made by the training config (same fraction and seed). Writes the table next to the model
(``ase_nemp/pretrained/pd-co-o.metrics.md``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = ROOT / "ase_nemp" / "pretrained"
# relaxed end points of path 1 with the reference (EMLP) potential, from the data README
REFERENCE_IS, REFERENCE_FS = -218.9251, -218.8210


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=PRETRAINED / "pd-co-o.pt")
    parser.add_argument("--config", type=Path, default=PRETRAINED / "pd-co-o.yaml")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch

    from ase_nemp import NEMPCalculator, load
    from ase_nemp.demo import run_neb
    from ase_nemp.train import RunConfig, format_table, predictions, read_structures
    from ase_nemp.train.data import split_indices

    run = RunConfig.from_yaml(args.config)
    frames = read_structures(run.data.train)
    _, valid_idx = split_indices(len(frames), run.data.valid_fraction, run.training.seed)
    held_out = [frames[k] for k in valid_idx]
    stats, _, _ = predictions(args.model, held_out)
    table = format_table(stats.summary())
    model = load(args.model)
    size_kb = os.path.getsize(args.model) / 1024

    res = run_neb(lambda: NEMPCalculator(model, dtype="float64"), n_images=7, fmax=0.05, steps=500)
    lines = [
        "# pd-co-o: validation metrics",
        "",
        f"model file: {args.model.name}, {size_kb:.0f} kB, {model.num_parameters():,} parameters, "
        f"elements {', '.join(model.config.symbols)}, cutoff {model.config.cutoff} Å",
        f"trained on {len(frames) - len(held_out)} structures of `train.extxyz`; held out: {len(held_out)} "
        f"(valid_fraction {run.data.valid_fraction}, seed {run.training.seed})",
        "",
        "Held-out errors per config_type (labels from the EMLP NequIP potential):",
        "",
        table,
        "",
        "CO + O -> CO2 on Pd(111), climbing-image NEB with 7 images (`nemp demo`):",
        "",
        "| quantity | NEMP | reference potential |",
        "|---|---|---|",
        f"| relaxed initial state energy (eV) | {res['E_initial']:.4f} | {REFERENCE_IS:.4f} |",
        f"| relaxed final state energy (eV) | {res['E_final']:.4f} | {REFERENCE_FS:.4f} |",
        f"| reaction energy (eV) | {res['reaction_energy']:+.3f} | {REFERENCE_FS - REFERENCE_IS:+.3f} |",
        f"| forward barrier (eV) | {res['barrier']:.3f} | not distributed |",
        f"| NEB | {'converged' if res['converged'] else 'not converged'} in {res['neb_steps']} steps, "
        f"{res['seconds']:.0f} s | |",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (PRETRAINED / "pd-co-o.metrics.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
