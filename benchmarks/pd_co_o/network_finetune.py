"""How much the network's labelled bands teach a committee: models side by side on them.

    python benchmarks/pd_co_o/network_finetune.py ase_nemp/pretrained/pd-co-o.pt \
        runs/pd-co-o-network-w10/best.pt [...] [--output benchmarks/pd_co_o/network_finetune.md]

For every model file: on the bands of ``learn/network_bands.extxyz`` (trained on by the
fine-tunes of ``network_finetune.yaml``) and ``learn/network_bands_valid.extxyz`` (two whole
paths held out), each image's energy relative to its band's first image against the
reference's, and each band's barrier (its highest image above the first) against the
reference's on the same images; the monitor set's errors (MD of the demo's end states
and the demo's reference band, never trained on); float64. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def band_errors(calc, file: Path) -> tuple[np.ndarray, dict[str, float]]:
    """(relative-energy errors of every image but the first, {path: barrier error}), eV."""
    from ase.io import read

    bands: dict[str, list] = {}
    for atoms in read(file, ":"):
        if atoms.info["config_type"] != "network_band":
            continue
        reference = atoms.get_potential_energy()
        copy = atoms.copy()
        copy.calc = calc
        bands.setdefault(atoms.info["path"], []).append((int(atoms.info["image"]), copy.get_potential_energy(), reference))
    relative, barriers = [], {}
    for name, rows in bands.items():
        rows.sort()
        model = np.array([r[1] for r in rows]) - rows[0][1]
        reference = np.array([r[2] for r in rows]) - rows[0][2]
        relative.extend(model[1:] - reference[1:])
        barriers[name] = float(model.max() - reference.max())
    return np.array(relative), barriers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.output is not None and args.output.exists():
        parser.error(f"{args.output} exists; choose another --output (nothing is overwritten)")

    from ase_nemp import NEMPCalculator, load
    from ase_nemp.train.evaluate import predictions

    held_out = None
    lines = ["| model | trained bands: relative E RMSE (meV) | largest barrier error (meV) | held-out bands: barrier "
             "errors (meV) | monitor E RMSE (meV/atom) | monitor F RMSE (meV/Å) |", "|---|---|---|---|---|---|"]
    for path in args.models:
        model = load(path)
        calc = NEMPCalculator(model)
        trained, trained_barriers = band_errors(calc, HERE / "learn" / "network_bands.extxyz")
        _, held_out = band_errors(calc, HERE / "learn" / "network_bands_valid.extxyz")
        _, pred, ref = predictions(model, HERE / "learn" / "monitor.extxyz")
        e = 1000 * np.sqrt(np.mean(((pred["energy"] - ref["energy"]) / pred["num_atoms"]) ** 2))
        f = 1000 * np.sqrt(np.mean((pred["forces"] - ref["forces"]) ** 2))
        worst = max(trained_barriers.values(), key=abs)
        lines.append(f"| `{path}` | {1000 * np.sqrt(np.mean(trained ** 2)):.0f} | {1000 * worst:+.0f} | "
                     + ", ".join(f"{1000 * v:+.0f}" for v in held_out.values()) + f" | {e:.2f} | {f:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + f"\n\nHeld-out paths, in order: {', '.join(held_out)}.\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
