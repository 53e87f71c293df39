"""GPU figures in one run: inference speed and memory from 1,536 to about a million atoms,
eager against torch.compile, and training throughput, eager against the compiled step.

    python benchmarks/gpu.py [--out benchmarks/results/gpu] [--device cuda]
    python benchmarks/gpu.py --device cpu --quick      # a smoke test of the script itself

Inference: the water box (``../shared/data/water/water-64.extxyz``, 192 atoms) repeated
n x n x n, random-weight ``water-small`` and ``water`` presets, float32. A step is one
energy-and-forces evaluation of the model on a fixed graph (the CPU neighbour list is
timed once per size and reported apart, as MD with a skin rebuilds it rarely). Reported:
µs/atom/step (median of the steps, device synchronised) and the peak device memory of a
step per atom. A size that runs out of memory ends that preset's sweep.

Training: the acetylacetone benchmark's model and batches (``benchmarks/acac``), float32,
steps per second of the plain PyTorch step and of the compiled step
(:mod:`ase_nemp.train.compiled`), and the compilation's one-off cost.

Writes ``gpu.json`` and ``gpu.md`` (the tables) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT.parent / "shared" / "data" / "water" / "water-64.extxyz"
ACAC = ROOT / "benchmarks" / "acac" / "config.yaml"
REPEATS = [2, 4, 8, 12, 18]  # 1,536 ... 1,119,744 atoms


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the memory in use now (bytes)."""
    if device.type != "cuda":
        return 0
    synchronise(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def time_steps(fn, device: torch.device, steps: int, max_seconds: float) -> list[float]:
    times: list[float] = []
    while len(times) < steps and (sum(times) < max_seconds or len(times) < 3):
        synchronise(device)
        t0 = time.perf_counter()
        fn()
        synchronise(device)
        times.append(time.perf_counter() - t0)
    return times


def inference(args, device: torch.device) -> list[dict]:
    from ase.io import read

    from ase_nemp import NEMP, NEMPConfig
    from ase_nemp.model import energy_forces_stress
    from ase_nemp.nl import build_graph

    rows = []
    water = read(WATER)
    species = sorted(set(water.get_chemical_symbols()))
    for preset in args.presets:
        for mode in ("eager", "compiled"):
            model = NEMP(NEMPConfig.preset(preset, species=species), seed=0).to(device, torch.float32)
            if mode == "compiled":
                model.network_energies = torch.compile(model.network_energies, dynamic=True)
            for n in args.repeats:
                atoms = water.repeat((n, n, n))
                t0 = time.perf_counter()
                graph = build_graph(atoms, model.cutoff, device=device, dtype=torch.float32)
                nl_seconds = time.perf_counter() - t0
                row = {"preset": preset, "mode": mode, "atoms": len(atoms), "edges": graph.num_edges,
                       "nl_s": nl_seconds}

                def step():
                    energy_forces_stress(model, graph, forces=True)

                try:
                    t0 = time.perf_counter()
                    step()  # the first call compiles (compiled mode) and warms the allocator
                    synchronise(device)
                    row["first_call_s"] = time.perf_counter() - t0
                    base = reset_peak(device)
                    times = time_steps(step, device, args.steps, args.max_seconds)
                except torch.cuda.OutOfMemoryError:
                    row["oom"] = True
                    rows.append(row)
                    print(f"  {preset} {mode} {len(atoms):,} atoms: out of memory", flush=True)
                    del graph
                    torch.cuda.empty_cache()
                    break
                row.update(s_per_step=statistics.median(times), steps_run=len(times),
                           us_per_atom_step=1e6 * statistics.median(times) / len(atoms),
                           peak_bytes_per_atom=(peak(device) - base) / len(atoms),
                           peak_gb=peak(device) / 1e9)
                rows.append(row)
                print(f"  {preset} {mode} {len(atoms):>9,} atoms: {row['us_per_atom_step']:.3f} µs/atom/step, "
                      f"{row['peak_bytes_per_atom'] / 1e3:.1f} kB/atom, NL {nl_seconds:.1f} s", flush=True)
                del graph
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def training(args, device: torch.device) -> list[dict]:
    import tempfile

    import yaml

    from ase_nemp.train import RunConfig
    from ase_nemp.train.trainer import Trainer

    raw = yaml.safe_load(ACAC.read_text())
    rows = []
    for mode in ("eager", "compiled"):
        if mode == "compiled" and args.no_compile:
            continue
        raw["output"] = {"dir": str(Path(tempfile.mkdtemp()) / "run")}
        raw["training"].update(device=str(device), compile=mode == "compiled", workers=1, threads=None)
        run = RunConfig.from_dict(raw, base_dir=ACAC.parent)
        trainer = Trainer(run, progress=False)
        trainer.setup()
        params, weights, size = list(trainer.model.parameters()), trainer.weights(), run.training.batch_size
        data = trainer.train_set
        batches = [data[k : k + size] for k in range(0, len(data) - size + 1, size)]
        t0 = time.perf_counter()
        trainer._step_gradients(batches[0], weights, params)
        synchronise(device)
        first = time.perf_counter() - t0
        k = iter(range(10**9))

        def step():
            trainer._step_gradients(batches[next(k) % len(batches)], weights, params)

        times = time_steps(step, device, args.train_steps, args.max_seconds)
        rows.append({"mode": mode, "batch_size": size, "first_step_s": first, "s_per_step": statistics.median(times),
                     "steps_per_s": 1.0 / statistics.median(times), "epoch_s": len(batches) * statistics.median(times)})
        print(f"  training {mode}: {1e3 * rows[-1]['s_per_step']:.1f} ms/step (batch {size}), "
              f"first step {first:.1f} s", flush=True)
    return rows


def markdown(device_name: str, inf: list[dict], train: list[dict]) -> str:
    lines = [f"# GPU figures: {device_name}", "", f"torch {torch.__version__}", "",
             "## Inference (float32, energy and forces on a fixed graph)", "",
             "| preset | mode | atoms | edges | µs/atom/step | peak kB/atom | peak GB | first call (s) | NL (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in inf:
        if r.get("oom"):
            lines.append(f"| {r['preset']} | {r['mode']} | {r['atoms']:,} | {r['edges']:,} | out of memory | | | | |")
            continue
        lines.append(f"| {r['preset']} | {r['mode']} | {r['atoms']:,} | {r['edges']:,} | {r['us_per_atom_step']:.3f} "
                     f"| {r['peak_bytes_per_atom'] / 1e3:.1f} | {r['peak_gb']:.2f} | {r['first_call_s']:.1f} "
                     f"| {r['nl_s']:.1f} |")
    lines += ["", "## Training (acetylacetone benchmark model, float32)", "",
              "| step | batch | ms/step | steps/s | epoch (s) | first step (s) |", "|---|---|---|---|---|---|"]
    for r in train:
        lines.append(f"| {r['mode']} | {r['batch_size']} | {1e3 * r['s_per_step']:.1f} | {r['steps_per_s']:.1f} "
                     f"| {r['epoch_s']:.1f} | {r['first_step_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    parser.add_argument("--presets", nargs="+", default=["water-small", "water"])
    parser.add_argument("--repeats", nargs="+", type=int, default=REPEATS, help="water box repeats n (192 n^3 atoms)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="stop timing one case after this")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled training step")
    parser.add_argument("--quick", action="store_true", help="water-small, 192 and 1,536 atoms, a few steps")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.repeats, args.steps, args.train_steps, args.no_compile = ["water-small"], [1, 2], 3, 3, True
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or --device cpu for a smoke test", file=sys.stderr)
        return 1
    if not WATER.exists():
        print(f"water data not found at {WATER}", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}", flush=True)
    inf = inference(args, device)
    train = training(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"device": name, "torch": torch.__version__, "inference": inf,
                                                   "training": train}, indent=1))
    text = markdown(name, inf, train)
    (args.out / "gpu.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
