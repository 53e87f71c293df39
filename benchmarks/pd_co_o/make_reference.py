"""Reference paths computed with the teacher itself (the EMLP potential), for checking models.

    python benchmarks/pd_co_o/make_reference.py --teacher /path/to/Ag-Pd-C-H-O_EMLP.pth neb --images 7
    python benchmarks/pd_co_o/make_reference.py --teacher ... md

``neb``: the demo's protocol (``ase_nemp.demo.DEMO_PROTOCOL``) with the teacher as the
calculator: the reference band and barrier (``learn/reference_band_<n>.extxyz``, labelled).
``md``: Langevin MD with the teacher of the initial and final states at 600 K (1 fs, 300
steps, a frame every 15 steps): labelled frames the models never train on
(``learn/monitor.extxyz``, with the reference band's images if present), the held-out set
of ``nemp learn``'s log.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "learn"
sys.path.insert(0, str(HERE))


def labelled(atoms, teacher, **info):
    """The teacher's single point on a copy of ``atoms`` (as nemp learn labels), with ``info``."""
    from ase_nemp.learn import label

    frame = label(atoms, teacher)
    frame.info.update(info)
    return frame


def reference_neb(teacher_path: str, n: int) -> None:
    from teacher import EMLPCalculator

    from ase.io import write
    from ase_nemp.demo import DEMO_PROTOCOL, example_structures
    from ase_nemp.neb import run_neb

    initial, final = example_structures()
    t0 = time.perf_counter()
    res = run_neb(initial, final, lambda: EMLPCalculator(teacher_path), DEMO_PROTOCOL.replace(images=n),
                  progress=False)
    teacher = EMLPCalculator(teacher_path)
    frames = [labelled(im, teacher, config_type="reference_band", image=k) for k, im in enumerate(res["images"])]
    write(OUT / f"reference_band_{n}.extxyz", frames)
    rel = res["energies"] - res["energies"][0]
    print(f"teacher NEB, {n} images: {'converged' if res['converged'] else 'NOT converged'} after "
          f"{res['neb_steps']} steps, largest NEB force {res['fmax']:.3f} eV/Å, {time.perf_counter() - t0:.0f} s")
    print("relative energies " + " ".join(f"{e:+.3f}" for e in rel) + f" eV; barrier {rel.max():.3f} eV")


def reference_md(teacher_path: str) -> None:
    from teacher import EMLPCalculator

    from ase import units
    from ase.io import read, write
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd
    from ase_nemp.demo import example_structures

    teacher = EMLPCalculator(teacher_path)
    frames = []
    for name, start in zip(("IS", "FS"), example_structures()):
        atoms = start.copy()
        atoms.calc = EMLPCalculator(teacher_path)
        rng = np.random.default_rng(7)
        vd.thermalize_momenta(atoms, 600.0, rng=rng) if hasattr(vd, "thermalize_momenta") else \
            vd.MaxwellBoltzmannDistribution(atoms, temperature_K=600.0, rng=rng)
        dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=600.0, friction=0.02 / units.fs, fixcm=False, rng=rng)
        dyn.attach(lambda: frames.append(labelled(atoms, teacher, config_type=f"monitor_md_{name}_600K",
                                                  md_step=dyn.nsteps)), interval=15)
        dyn.run(300)
    for path in sorted(OUT.glob("reference_band_*.extxyz")):
        for frame in read(path, ":"):
            frame.info["config_type"] = "monitor_band"
            frames.append(frame)
    write(OUT / "monitor.extxyz", frames)
    print(f"wrote {len(frames)} labelled frames to {OUT / 'monitor.extxyz'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.environ.get("EMLP_MODEL"))
    parser.add_argument("what", choices=["neb", "md"])
    parser.add_argument("--images", type=int, default=7)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.what == "neb":
        reference_neb(args.teacher, args.images)
    else:
        reference_md(args.teacher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
