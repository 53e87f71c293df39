"""Speed and memory of NEMP molecular dynamics through the ASE calculator.

Every configuration runs in its own subprocess (clean peak memory, user/system CPU
time). A step is one velocity-Verlet MD step at 300 K: neighbour list (with or without
skin reuse), energy and forces through ``NEMPCalculator``. Reported per configuration:
seconds per step, seconds per atom per step, the neighbour list's share of the step,
user and system CPU time per step, and the peak memory above the state before the first
step, i.e. the model's working memory (bytes per atom). Times are medians over the
steps (the machine may be shared).

Examples
--------
    python benchmarks/speed.py                        # default sweep, writes table + plot
    python benchmarks/speed.py --presets water-small --sizes 1536 --threads 1 --dtypes float32
    python benchmarks/speed.py --quick                # a small sweep for a smoke test

Systems: ``../shared/data/water/water-64.extxyz`` (192 atoms) replicated n x n x n
(192, 1536, 5184, 12288, 41472, 98304, ... atoms) and the Pd/CO/O slab replicated
laterally. Models have random weights unless ``--model`` points at a model file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT.parent / "shared" / "data" / "water" / "water-64.extxyz"
SLAB = ROOT.parent / "shared" / "data" / "pd_co_o" / "is.extxyz"
WATER_REPEATS = {192: 1, 1536: 2, 5184: 3, 12288: 4, 41472: 6, 98304: 8, 192000: 10, 331776: 12}


# ---------------------------------------------------------------------------------------
# worker: one configuration, in a fresh process
# ---------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def build_system(system: str, size: int):
    from ase.io import read

    if system == "water":
        if size not in WATER_REPEATS:
            raise SystemExit(f"water sizes are {sorted(WATER_REPEATS)}")
        return read(WATER).repeat((WATER_REPEATS[size],) * 3)
    if system == "pdcoo":
        slab = read(SLAB)
        n = max(1, round((size / len(slab)) ** 0.5))
        return slab.repeat((n, n, 1))
    raise SystemExit(f"unknown system {system!r}")


def mace_calculator(atoms, dtype: str):
    """A random-weight MACE model of the small kind (hidden 32x0e, max_ell 3, correlation 3,
    2 interactions, r_max 5 Å), for a side-by-side ratio (``pip install ase-nemp[bench]``)."""
    import numpy as np

    # e3nn/MACE load their own bundled tensors with torch.load, which newer torch refuses under
    # its weights-only default; this worker process only ever loads those files
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    torch.set_default_dtype(getattr(torch, dtype))  # MACE reads the global default; this is a worker process
    z = sorted(set(atoms.numbers.tolist()))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.MACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(z), hidden_irreps=o3.Irreps("32x0e"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(z)), avg_num_neighbors=40.0, atomic_numbers=z,
        correlation=3, gate=torch.nn.functional.silu,
    )
    return MACECalculator(models=model, device="cpu", default_dtype=dtype)


def worker(spec: dict) -> dict:
    import numpy as np
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from ase_nemp import NEMP, NEMPCalculator, NEMPConfig
    from ase_nemp.perf import ALLOCATOR_VARIABLE, tune_cpu_allocator

    torch.set_num_threads(spec["threads"])
    os.environ[ALLOCATOR_VARIABLE] = "keep" if spec.get("keep_memory") else "default"
    tune_cpu_allocator()  # also for the other calculators (MACE)
    atoms = build_system(spec["system"], spec["size"])
    if spec["preset"] == "mace-small":
        calc = mace_calculator(atoms, spec["dtype"])
    elif spec.get("model"):
        calc = NEMPCalculator(spec["model"], dtype=spec["dtype"], skin=spec["skin"])
    else:
        species = sorted(set(atoms.get_chemical_symbols()))
        model = NEMP(NEMPConfig.preset(spec["preset"], species=species), seed=0)
        calc = NEMPCalculator(model, dtype=spec["dtype"], skin=spec["skin"])
    if spec.get("nl_engine", "auto") != "auto":
        calc.neighbour_list.engine = spec["nl_engine"]
    if spec.get("compile"):
        calc.compile()
    if spec.get("eager"):
        os.environ["ASE_NEMP_KERNELS"] = "0"
    atoms.calc = calc
    rng = np.random.default_rng(0)
    momenta = np.sqrt(300 * units.kB * atoms.get_masses())[:, None] * rng.standard_normal((len(atoms), 3))
    atoms.set_momenta(momenta - momenta.mean(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    base = _rss_bytes()  # model and structure in memory, no step taken yet
    dyn.run(2)  # warm-up: first neighbour list, allocator, compiled kernels
    nl = getattr(calc, "neighbour_list", None)
    nl_seconds0, builds0 = (nl.seconds, nl.num_builds) if nl else (0.0, 0)
    r0 = os.times()
    times: list[float] = []
    while len(times) < spec["steps"] and (sum(times) < spec["max_seconds"] or len(times) < 3):
        t0 = time.perf_counter()
        dyn.run(1)
        times.append(time.perf_counter() - t0)
    r1 = os.times()
    steps, elapsed = len(times), sum(times)
    per_step = float(np.median(times))  # the machine is shared: the median resists noise
    return {
        **spec,
        "atoms": len(atoms),
        "steps_run": steps,
        "s_per_step": per_step,
        "s_per_step_min": min(times),
        "s_per_atom_step": per_step / len(atoms),
        "nl_share": (nl.seconds - nl_seconds0) / elapsed if nl else float("nan"),
        "nl_builds": nl.num_builds - builds0 if nl else -1,
        "user_s_per_step": (r1.user - r0.user) / steps,
        "sys_s_per_step": (r1.system - r0.system) / steps,
        "peak_bytes_per_atom": max(0, _peak_rss_bytes() - base) / len(atoms),
        "peak_rss_gb": _peak_rss_bytes() / 1e9,
    }


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------


def run_config(spec: dict, timeout: float) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  timeout after {timeout:.0f} s: {spec}", file=sys.stderr)
        return None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        print(f"  failed ({'; '.join(tail)}): {spec}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mode(r: dict) -> str:
    """How the model ran: "compiled" (torch.compile), "eager" (no fused kernels) or ""."""
    return "compiled" if r.get("compile") else "eager" if r.get("eager") else ""


def markdown_table(rows: list[dict]) -> str:
    head = ("| system | model | atoms | dtype | threads | skin (Å) | s/step | µs/atom/step | NL share "
            "| user/sys per step (s) | peak kB/atom |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        model = (r.get("model_name") or r["preset"]) + (f" ({_mode(r)})" if _mode(r) else "")
        model += f", {r['nl_engine']} NL" if r.get("nl_engine", "auto") != "auto" else ""
        nl = "–" if r["nl_share"] != r["nl_share"] else f"{100 * r['nl_share']:.0f} %"
        lines.append(
            f"| {r['system']} | {model} | {r['atoms']:,} | {r['dtype']} "
            f"| {r['threads']} | {r['skin']} | {r['s_per_step']:.3f} | {1e6 * r['s_per_atom_step']:.1f} "
            f"| {nl} | {r['user_s_per_step']:.3f} / {r['sys_s_per_step']:.3f} "
            f"| {r['peak_bytes_per_atom'] / 1e3:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["system"], r.get("model_name") or r["preset"], _mode(r), r["dtype"], r["threads"], r["skin"])
        groups.setdefault(key, []).append(r)
    for (system, name, mode, dtype, threads, skin), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["atoms"])
        n = [r["atoms"] for r in rs]
        label = f"{system}: {name}{' ' + mode if mode else ''}, {dtype}, {threads} thr, skin {skin}"
        ax_t.loglog(n, [r["s_per_step"] for r in rs], "o-", label=label)
        ax_m.loglog(n, [max(r["peak_bytes_per_atom"], 1) * r["atoms"] / 1e9 for r in rs], "o-", label=label)
    ax_t.set_xlabel("atoms")
    ax_t.set_ylabel("seconds per MD step")
    ax_t.set_title("time per step (neighbour list included)")
    ax_m.set_xlabel("atoms")
    ax_m.set_ylabel("peak memory above baseline (GB)")
    ax_m.set_title("memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=["water", "pdcoo"], default="water")
    parser.add_argument("--presets", nargs="*", default=["water-small", "water"])
    parser.add_argument("--model", type=Path, help="a model file instead of random-weight presets")
    parser.add_argument("--sizes", nargs="+", type=int, default=[192, 1536, 5184, 12288, 41472])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--skins", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--compile", action="store_true", help="time the torch.compile'd model instead")
    parser.add_argument("--eager", action="store_true", help="time the plain PyTorch path (no fused kernels)")
    parser.add_argument("--compare", nargs="*", default=[], choices=["mace"],
                        help="time other calculators too (mace: pip install ase-nemp[bench])")
    parser.add_argument("--keep-memory", choices=["on", "off", "both"], default="on",
                        help="glibc keeps freed memory mapped (ase_nemp.perf, on unless ASE_NEMP_ALLOCATOR=default)")
    parser.add_argument("--nl-engines", nargs="+", default=["auto"], choices=["auto", "cells", "matscipy"],
                        help="neighbour-list engines, each size timed with each one after the other")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop timing a configuration after this")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--quick", action="store_true", help="192 and 1536 atoms, water-small, 1 thread, float32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", help="file stem of the table, JSON and plot (default speed-<system>)")
    parser.add_argument("--append", action="store_true", help="add the rows to those already in the JSON file")
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not WATER.exists():
        raise SystemExit(f"benchmark structures not found under {WATER.parent.parent} (the ../shared folder)")
    if args.quick:
        args.presets, args.sizes, args.threads, args.dtypes = ["water-small"], [192, 1536], [1], ["float32"]
    keep = {"on": [True], "off": [False], "both": [False, True]}[args.keep_memory]
    if args.compile and args.eager:
        parser.error("--compile and --eager time different paths; pick one")
    models = [(None, p) for p in args.presets] if not args.model else [(str(args.model), args.model.stem)]
    models += [(None, "mace-small")] if "mace" in args.compare else []
    rows = []
    for model_file, name in models:
        for dtype in args.dtypes:
            for threads in args.threads:
                for skin in args.skins:
                    for km in keep:
                        if name == "mace-small" and (args.compile or args.eager or skin != args.skins[0]):
                            continue
                        for size, engine in ((z, e) for z in args.sizes for e in args.nl_engines):
                            spec = dict(system=args.system, preset=name, model=model_file, model_name=name, size=size,
                                        dtype=dtype, threads=threads, skin=skin, keep_memory=km, compile=args.compile,
                                        eager=args.eager, steps=args.steps, max_seconds=args.max_seconds,
                                        nl_engine=engine)
                            print(f"running {name} {size} atoms {dtype} {threads} thr skin {skin}"
                                  f"{' keep-memory' if km else ''} {_mode(spec)} ...", file=sys.stderr, flush=True)
                            row = run_config(spec, args.timeout)
                            if row is None:
                                break  # larger sizes will not fit either
                            rows.append(row)
                            print("  " + markdown_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"speed-{args.system}"
    if args.append and (args.out / f"{stem}.json").exists():
        rows = json.loads((args.out / f"{stem}.json").read_text()) + rows
    table = markdown_table(rows)
    print(table)
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / f"{stem}.png")


if __name__ == "__main__":
    main()
