"""Reference labels on the committee's own bands of the CO-oxidation network.

    python benchmarks/pd_co_o/label_network.py --teacher /path/to/Ag-Pd-C-H-O_EMLP.pth \
        [--bands benchmarks/pd_co_o/network] [--rattled 2] [--max-energy 3.0]

``network_barriers.py`` leaves every band it ran (``network/<path>.extxyz``, the committee's
converged or last images with the reference's relative energies). The committee's barriers
there are 0.06-0.14 eV below the reference's: the active-learning loop labelled frames by
force spread, and of the 17,000 explored frames above its threshold per round it took 80,
few of them near a saddle of the network. This script labels what the committee's bands
visit: every image (the end states once per band), and ``--rattled`` copies of the three
highest images of each band with every free atom displaced by up to 0.04 Å, so that the
forces around each saddle are fitted too. Images more than ``--max-energy`` above their
band's start (the bands that never converged pass through broken structures at 7-10 eV)
are left out and counted.

The committed files were labelled on the bands of the committee shipped at commit 0b8531f
(``network/`` as that commit left it). Writes ``learn/network_bands.extxyz`` (training) and
``learn/network_bands_valid.extxyz``
(every tenth band's frames, whole bands, so that validation measures paths it never saw),
``config_type`` ``network_band`` or ``network_rattle`` (existing files are refused, not replaced),
and prints the teacher's calls and time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.environ.get("EMLP_MODEL"), help="path of the EMLP model file")
    parser.add_argument("--bands", type=Path, default=HERE / "network")
    parser.add_argument("--rattled", type=int, default=2, help="rattled copies of each band's three highest images")
    parser.add_argument("--amplitude", type=float, default=0.04, help="largest displacement of a rattle (Å)")
    parser.add_argument("--max-energy", type=float, default=3.0, help="leave out images this far above the start (eV)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "learn" / "network_bands.extxyz")
    args = parser.parse_args()
    if not args.teacher:
        parser.error("name the reference model: --teacher or EMLP_MODEL")
    outputs = [args.output, args.output.with_name(args.output.stem + "_valid.extxyz")]
    existing = [str(p) for p in outputs if p.exists()]
    if existing:  # labels cost reference calls (hours of DFT in real use): never replace them
        parser.error(f"{', '.join(existing)} exist(s); choose another --output (nothing is overwritten)")

    from ase.io import read, write

    from ase_nemp.learn.teacher import label
    from teacher import EMLPCalculator

    teacher = EMLPCalculator(args.teacher, threads=args.threads)
    rng = np.random.default_rng(0)
    files = sorted(args.bands.glob("*.extxyz"))
    if not files:
        raise SystemExit(f"no bands in {args.bands}: run network_barriers.py first")
    train, valid, left_out, calls, start = [], [], 0, 0, time.perf_counter()
    for k, path in enumerate(files):
        with open(path) as fh:  # an "@" in a path's name would read as an index
            band = read(fh, ":", format="extxyz")
        relative = np.array([a.info["reference_energy"] for a in band])
        frames = []
        for i, image in enumerate(band):
            if relative[i] - relative[0] > args.max_energy:
                left_out += 1
                continue
            frames.append((image, "network_band", i))
        highest = [i for i in np.argsort(relative)[::-1][:3] if relative[i] - relative[0] <= args.max_energy]
        for i in highest:
            for _ in range(args.rattled):
                copy = band[i].copy()
                free = np.ones(len(copy), bool)
                if "move_mask" in copy.arrays:
                    free = copy.arrays["move_mask"].astype(bool)
                copy.positions[free] += rng.uniform(-args.amplitude, args.amplitude, (free.sum(), 3))
                frames.append((copy, "network_rattle", i))
        for image, kind, i in frames:
            atoms = image.copy()
            atoms.set_constraint()
            atoms.arrays.pop("move_mask", None)
            atoms.info = {"config_type": kind, "path": band[0].info.get("path", path.stem), "image": i}
            labelled = label(atoms, teacher)
            calls += 1
            (valid if k % 10 == 5 else train).append(labelled)
        print(f"{path.stem}: {len(frames)} frames", flush=True)
    seconds = time.perf_counter() - start
    write(outputs[0], train, format="extxyz")
    write(outputs[1], valid, format="extxyz")
    print(f"{calls} reference calls in {seconds:.0f} s: {len(train)} training and {len(valid)} validation frames; "
          f"{left_out} images more than {args.max_energy} eV above their band's start left out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
