"""Evaluate the shipped pd-co-o committee: held-out errors per config_type, calibration of
its uncertainty, and its errors on labelled frames it never trained on.

    python benchmarks/pd_co_o/evaluate.py [--model ase_nemp/pretrained/pd-co-o.pt] [--valid FILE]

The held-out set is the validation set of the active-learning run that built the shipped
model (``benchmarks/pd_co_o/learn/data/valid.extxyz``, a copy of ``runs/pd-co-o-learn/data/``:
the 10 % split of ``../shared/data/pd_co_o/train.extxyz`` plus every tenth frame the loop
labelled), so it holds every kind of structure the model was trained on, the loop's own
(``al_*``) included. ``--monitor`` (default ``benchmarks/pd_co_o/learn/monitor.extxyz``, MD with
the reference potential and its own NEB band) is data no model saw. Writes
``ase_nemp/pretrained/pd-co-o.metrics.md`` unless ``--no-write``, and the calibration plot
``ase_nemp/pretrained/pd-co-o.calibration.png``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = ROOT / "ase_nemp" / "pretrained"
HERE = Path(__file__).resolve().parent
# relaxed end points of path 1 with the reference (EMLP) potential, from the data README
REFERENCE_IS, REFERENCE_FS = -218.9251, -218.8210


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=PRETRAINED / "pd-co-o.pt")
    parser.add_argument("--valid", type=Path, default=HERE / "learn" / "data" / "valid.extxyz")
    parser.add_argument("--monitor", type=Path, default=HERE / "learn" / "monitor.extxyz")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from ase_nemp import load
    from ase_nemp.train import format_table, predictions, read_structures
    from ase_nemp.train.evaluate import calibration, format_calibration
    from ase_nemp.train.plots import calibration_plot

    model = load(args.model)
    held_out = read_structures(args.valid)
    shown = args.valid.resolve().relative_to(ROOT) if args.valid.resolve().is_relative_to(ROOT) else args.valid
    stats, pred, ref = predictions(model, held_out)
    cal = calibration(pred, ref)
    size_kb = os.path.getsize(args.model) / 1024
    members = f"committee of {model.size}, " if model.is_committee else ""
    lines = [
        "# pd-co-o: held-out metrics",
        "",
        f"model file: {args.model.name}, {size_kb:.0f} kB, {members}{model.num_parameters():,} parameters, elements "
        f"{', '.join(model.config.symbols)}, cutoff {model.config.cutoff} Å",
        f"held out: {len(held_out)} structures (`{shown}`; never trained on)",
        "",
        "Errors of the committee mean per config_type (labels from the EMLP NequIP potential; `al_*`: frames the "
        "active-learning loop selected and labelled):",
        "",
        format_table(stats.summary()),
        "",
        "Uncertainty against true error on the same structures:",
        "",
        format_calibration(cal),
        "",
    ]
    if not args.no_write:
        calibration_plot(pred, ref, PRETRAINED / "pd-co-o.calibration.png", title="pd-co-o committee, held-out set")
    if args.monitor.exists():
        stats_m, pred_m, ref_m = predictions(model, read_structures(args.monitor))
        lines += [
            f"On `{args.monitor.name}` ({len(pred_m['energy'])} frames of MD with the reference potential at 600 K "
            "and its own NEB band, never used in training or selection):",
            "",
            format_table(stats_m.summary()),
            "",
            format_calibration(calibration(pred_m, ref_m)),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (PRETRAINED / "pd-co-o.metrics.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
