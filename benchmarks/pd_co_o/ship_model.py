"""Write a trained committee as the shipped model, keeping the active-learning provenance.

    nemp calibrate runs/pd-co-o-polish/best.pt benchmarks/pd_co_o/learn/data/valid.extxyz \
        --output runs/pd-co-o-polish/calibrated.pt --check benchmarks/pd_co_o/learn/monitor.extxyz \
        --plot benchmarks/pd_co_o/reliability.png
    python benchmarks/pd_co_o/ship_model.py runs/pd-co-o-polish/calibrated.pt \
        --provenance runs/pd-co-o-learn/committee.pt [--output ase_nemp/pretrained/pd-co-o.pt]

The calibration of the committee's spread (``nemp calibrate``: fitted on the loop's validation
set, its coverage checked on the monitor set it never saw) travels in the file's metadata.

The committee of ``nemp train`` (here the polishing run, pd-co-o-polish.yaml) carries its own
validation errors and calibration; the confidence level (the force spread above which the
loop labelled frames) and the loop's record (rounds, teacher calls) come from the committee
file of ``nemp learn`` it started from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("committee", type=Path)
    parser.add_argument("--provenance", type=Path, required=True, help="the nemp learn committee it started from")
    parser.add_argument("--output", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    args = parser.parse_args()

    from ase_nemp import load, save

    model, source = load(args.committee), load(args.provenance)
    metadata = dict(model.metadata)
    for key in ("confidence", "active_learning"):
        if key in source.metadata:
            metadata[key] = source.metadata[key]
    metadata["polished_from"] = args.provenance.name
    save(model, args.output, **metadata)
    print(f"{args.output}: committee of {model.size}, metadata {sorted(metadata)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
