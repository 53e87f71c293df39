"""Validation force error against wall time for several training runs, on one plot.

    python benchmarks/acac/compare.py RUN_DIR[=LABEL] ... [--out benchmarks/acac/wall_time.png]

Each RUN_DIR is an output folder of ``nemp train`` (its ``metrics.csv``); the curves show
the validation force RMSE of the EMA model (validated epochs only) against the training
time in minutes, so runs of different speeds compare at equal cost.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def curve(run: Path) -> tuple[list[float], list[float]]:
    """(minutes, validation force RMSE in meV/Å) of a run's validated epochs."""
    minutes, force = [], []
    with open(run / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            value = float(row["val_f_rmse"])
            if math.isfinite(value):
                minutes.append(float(row["elapsed_s"]) / 60.0)
                force.append(1e3 * value)
    return minutes, force


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, each optionally =LABEL")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "wall_time.png")
    args = parser.parse_args()
    from ase_nemp.plotting import figure

    fig, ax = figure(figsize=(6.5, 4.2))
    for spec in args.runs:
        folder, _, label = spec.partition("=")
        minutes, force = curve(Path(folder))
        ax.semilogy(minutes, force, label=f"{label or folder} (last {force[-1]:.2f})")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("validation force RMSE (meV/Å)")
    ax.set_title("acetylacetone, 2 processes on a 2-core CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
