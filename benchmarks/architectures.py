"""The three architectures side by side: accuracy on acetylacetone for the same training
time, and the cost of an MD step, in one run.

    python benchmarks/architectures.py [--minutes 30] [--architectures nemp equireann leignn]

For each architecture, one after another (run it on a quiet machine):

1. ``nemp train`` on ``../shared/data/botnet/acac/train_300K.xyz`` with the split, batch
   size, EMA, force weight, float32 and compiled training step of
   ``benchmarks/acac/config.yaml``, in ``--processes`` data-parallel processes of one
   thread each under ``torchrun`` (2 by default, one per core), a cosine
   learning rate over ``--minutes`` of training, and the model below (sizes comparable in
   parameters; the learning rate suits each parametrisation: NEMP's scaled MLPs take the
   paper's 0.02, plain ``nn.Linear`` models the authors' 5e-3 (EquiREANN) and 5e-4 (LEIGNN));
2. the test errors on ``test_MD_300K.xyz`` (650 structures);
3. ``benchmarks/speed.py`` with the trained model on the 1,536-atom water box (velocity
   Verlet, 1 thread, float32, skin 1 Å): µs/atom/step and peak memory per atom. The
   acac models know H, C and O, so the water box (H, O) runs through them.

Prints a table and writes ``benchmarks/results/architectures.md`` and ``.png`` (force
error against cost) unless ``--out`` points elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "botnet" / "acac"

MODELS = {
    "nemp": dict(architecture="nemp", cutoff=5.0, sh_lmax=3, feat_lmax=2, num_channels=16, num_layers=3,
                 num_radial=16, pair_dim=64, pair_mlp=[2, 64], edge_mlp=[2, 64], coeff_mlp=[2, 64],
                 readout_mlp=[2, 64]),
    "equireann": dict(architecture="equireann", cutoff=5.0, sh_lmax=2, num_radial=16, num_orbitals=128,
                      num_iterations=3, iter_mlp=[128, 128], readout_mlp=[128, 128], neigh_scale=10.0),
    "leignn": dict(architecture="leignn", cutoff=5.0, num_channels=80, num_layers=3, num_radial=32,
                   force_mode="direct"),
    "leignn-conservative": dict(architecture="leignn", cutoff=5.0, num_channels=80, num_layers=3, num_radial=32,
                                force_mode="conservative"),
}
LEARNING_RATE = {"nemp": 0.02, "equireann": 5e-3, "leignn": 5e-4, "leignn-conservative": 5e-4}


def train_command(config: Path, processes: int) -> tuple[list[str], dict]:
    """The command (and environment) that trains ``config`` in ``processes`` processes."""
    env = dict(os.environ)
    if processes == 1:
        return [sys.executable, "-m", "ase_nemp.cli", "train", str(config), "--quiet"], env
    env["OMP_NUM_THREADS"] = "1"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "ase_nemp.cli", "train", str(config), "--quiet"], env


def train_one(name: str, minutes: float, out: Path, processes: int) -> dict:
    raw = yaml.safe_load((HERE / "acac" / "config.yaml").read_text())
    lr = LEARNING_RATE[name]
    raw["model"] = MODELS[name]
    threads = 1 if processes > 1 else (os.cpu_count() or 1)
    raw["training"].update(max_time=60.0 * minutes, lr_peak=lr, lr_warm=lr / 10, lr_min=lr / 100, threads=threads)
    raw["output"] = {"dir": str(out / name)}
    config = out / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    for key in ("train", "isolated_atoms", "test"):
        raw["data"][key] = str((HERE / "acac" / raw["data"][key]).resolve())
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.perf_counter()
    command, env = train_command(config, processes)
    subprocess.run(command, check=True, env=env)
    test = json.loads((out / name / "test_metrics.json").read_text())["all"]
    from ase_nemp import load

    model = load(out / name / "best.pt")
    t = raw["training"]
    recipe = f"batch {t['batch_size']}, force weight {t['force_weight']:g}"  # these follow the acac config
    return {"name": name, "recipe": recipe, "parameters": model.num_parameters(),
            "train_minutes": (time.perf_counter() - start) / 60,
            "e_rmse_meV_atom": 1e3 * test["e_rmse_atom"], "f_rmse_meV_A": 1e3 * test["f_rmse"],
            "f_mae_meV_A": 1e3 * test["f_mae"]}


def md_cost(name: str, out: Path) -> dict:
    speed_dir = out / f"speed-{name}"
    subprocess.run([sys.executable, str(HERE / "speed.py"), "--model", str(out / name / "best.pt"), "--sizes", "1536",
                    "--threads", "1", "--dtypes", "float32", "--skins", "1.0", "--out", str(speed_dir),
                    "--name", "speed"], check=True, stdout=subprocess.DEVNULL)
    row = json.loads((speed_dir / "speed.json").read_text())[-1]
    return {"us_atom_step": 1e6 * row["s_per_atom_step"], "peak_kB_atom": row["peak_bytes_per_atom"] / 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training time per architecture")
    parser.add_argument("--architectures", nargs="+", default=["nemp", "equireann", "leignn"], choices=list(MODELS),
                        help="the ones to train now; the table also shows those run earlier into --out")
    parser.add_argument("--processes", type=int, default=2,
                        help="data-parallel training processes of one thread each (1: one process, all cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "architectures")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "architectures",
                        help="file stem of the table and plot")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the configs written there name their output folders absolutely
    if not (DATA / "train_300K.xyz").exists():
        print(f"data not found under {DATA}", file=sys.stderr)
        return 1
    # rows are kept in the output folder, so that one architecture can be run again alone
    # and the table still shows every architecture that has been run there
    stored = args.out / "rows.json"
    done = json.loads(stored.read_text()) if stored.exists() else {}
    for name in args.architectures:
        row = train_one(name, args.minutes, args.out, args.processes)
        row.update(md_cost(name, args.out), minutes=args.minutes, processes=args.processes)
        done[name] = row
        stored.write_text(json.dumps(done, indent=1))
        print(row, flush=True)
    rows = [done[name] for name in MODELS if name in done]
    # each row says how it was trained: rows kept from an earlier run may differ from this one's
    lines = ["# Three architectures on acetylacetone and in MD", "",
             "`python benchmarks/architectures.py --minutes M --processes P`; test set test_MD_300K.xyz "
             "(650 structures); MD: 1,536-atom water box, 1 thread, float32, skin 1 Å.", "",
             "| architecture | training | epochs | parameters | E RMSE (meV/atom) | F RMSE (meV/Å) | F MAE (meV/Å) "
             "| MD µs/atom/step | peak kB/atom |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        epochs = sum(1 for _ in open(args.out / r["name"] / "metrics.csv")) - 1  # header line
        recipe = r.get("recipe", "recipe not recorded")
        lines.append(f"| {r['name']} | {r['minutes']:g} min, {r['processes']} process(es), {recipe} | {epochs} | "
                     f"{r['parameters']:,} | {r['e_rmse_meV_atom']:.2f} | {r['f_rmse_meV_A']:.1f} | "
                     f"{r['f_mae_meV_A']:.1f} | {r['us_atom_step']:.0f} | {r['peak_kB_atom']:.0f} |")
    text = "\n".join(lines)
    print("\n" + text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".md").write_text(text + "\n")
    from ase_nemp.plotting import figure

    fig, ax = figure(figsize=(5.5, 4.0))
    for r in rows:
        ax.scatter(r["us_atom_step"], r["f_rmse_meV_A"], s=40)
        ax.annotate(r["name"], (r["us_atom_step"], r["f_rmse_meV_A"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("MD cost, µs per atom per step (1 thread, float32)")
    ax.set_ylabel("acac test force RMSE (meV/Å)")
    ax.set_title("accuracy against cost, " + ", ".join(sorted({f"{r['minutes']:g} min" for r in rows}))
                 + " of training each")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.results.with_suffix(".png"), dpi=130)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
