"""Where NEMP's time per MD step goes, phase by phase, and how close the edge MLPs run to the core's peak.

    python benchmarks/phases.py [--presets water-small water] [--sizes 1536 12288]
                                [--dtypes float32 float64] [--threads 1 2] [--repeats 5]
                                [--output benchmarks/results/phases.md]

For each configuration (its own process, ``--threads`` torch threads), NEMP with random
weights (seed 0) on the water box of ``benchmarks/speed.py``, one energy + forces
evaluation as ``NEMPCalculator`` does it (fused kernels):

- the neighbour list and graph, built from scratch (what an MD step costs when the list
  is rebuilt every step);
- the system time of those steps (the kernel's page faults: glibc hands large freed blocks
  back and maps them anew every step when ``--keep-memory 0`` sets
  ``ASE_NEMP_ALLOCATOR=default``; the package keeps them by default, ``ase_nemp.perf``);
- the model's forward and backward (forces by autograd), each split by phase under
  ``torch.profiler``: the edge geometry (harmonics, radial basis, cutoff), the MLPs (the
  edge, coefficient and layer MLPs and the small readout), the edge invariants (Eqs. 7-8),
  the node densities (Eqs. 5, 9, 10: scatters of edge coefficients onto atoms), the
  species-wise channel mixing, the tensor product (Eq. 11), and the rest (index
  operations, concatenations, the readout's sums: plain PyTorch between the kernels).

The MLPs' multiply-adds are counted exactly (rows x the layers' in x out, forward, and the
same again for the input gradient in the backward); divided by the MLP phases' time and
the core clock (``/proc/cpuinfo``, nominal) they give multiply-adds per cycle per thread,
to set against the core's peak (Zen 4: 16 float32 or 8 float64 fused multiply-adds per
cycle with AVX-512 on its two 256-bit FMA pipes). The profiler slows each operation a
little: shares are the figure, the unprofiled milliseconds are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PHASES = ("geometry", "MLPs", "edge invariants", "node densities", "channel mixing", "tensor product", "rest")
KERNELS = {  # the model's names for its edge blocks -> phase
    "edge_geometry": "geometry", "mlp": "MLPs", "edge_invariants": "edge invariants",
    "node_densities": "node densities", "species_matmul": "channel mixing", "tensor_product": "tensor product"}
BACKWARDS = {  # autograd node of each fused kernel -> phase
    "_EdgeGeometryBackward": "geometry", "_FusedMLPBackward": "MLPs", "_EdgeInvariantsBackward": "edge invariants",
    "_NodeDensitiesBackward": "node densities", "_SpeciesMatmulBackward": "channel mixing",
    "_TensorProductBackward": "tensor product"}
PEAK = {"float32": 16, "float64": 8}  # fused multiply-adds per cycle of one Zen 4 core (AVX-512, 2 x 256-bit)


def clock_hz() -> float:
    """The nominal core clock from /proc/cpuinfo (Hz); 3 GHz where it is not listed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6
    except OSError:
        pass
    return 3e9


def worker(spec: dict) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from ase_nemp import NEMP, NEMPCalculator, NEMPConfig
    from ase_nemp.model import nemp as nemp_module
    from ase_nemp.nl import build_graph
    from mlp_kernel import multiply_adds
    from speed import build_system

    torch.set_num_threads(spec["threads"])
    from ase_nemp.perf import ALLOCATOR_VARIABLE

    os.environ[ALLOCATOR_VARIABLE] = "keep" if spec.get("keep_memory") else "default"  # read by the calculator
    atoms = build_system("water", spec["size"])
    species = sorted(set(atoms.get_chemical_symbols()))
    calc = NEMPCalculator(NEMP(NEMPConfig.preset(spec["preset"], species=species), seed=0), dtype=spec["dtype"])
    model = calc.model
    macs = [0]  # the MLPs' multiply-adds of one forward

    def wrapped(name, original):
        phase = KERNELS[name]

        def call(*args, **kwargs):
            if name == "mlp":
                module, x = args[0], args[1]
                fold = kwargs.get("fold", args[3] if len(args) > 3 else 1)
                macs[0] += x.shape[0] * multiply_adds(module, fold)
            with record_function(f"phase: {phase}"):
                return original(*args, **kwargs)
        return call

    for name in KERNELS:
        setattr(nemp_module, name, wrapped(name, getattr(nemp_module, name)))

    def graph_of():
        return build_graph(atoms, model.cutoff, dtype=calc.dtype)

    def step(graph):
        with record_function("evaluation"):  # forward and, inside it, the backward (autograd.grad)
            out = model.predict(graph)
        return float(out["energy"].sum())

    graph = graph_of()
    for _ in range(2):  # warm-up: kernels compiled and loaded, allocator
        step(graph)
    walls, nl_walls = [], []
    cpu0 = os.times()
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        graph = graph_of()
        t1 = time.perf_counter()
        step(graph)
        nl_walls.append(t1 - t0)
        walls.append(time.perf_counter() - t1)
    cpu1 = os.times()
    system_share = (cpu1.system - cpu0.system) / max(1e-9, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system))
    macs[0] = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(spec["repeats"]):
            step(graph)
    macs_forward = macs[0] / spec["repeats"]
    forward = dict.fromkeys(PHASES, 0.0)
    backward = dict.fromkeys(PHASES, 0.0)
    total = backward_total = 0.0
    for event in prof.key_averages():
        seconds = event.cpu_time_total / 1e6 / spec["repeats"]
        if event.key == "evaluation":
            total += seconds
        elif event.key.startswith("phase: "):
            forward[event.key[len("phase: "):]] += seconds
        elif event.key.startswith("autograd::engine::evaluate_function: "):
            node = event.key.split(": ", 1)[1]
            backward[BACKWARDS.get(node, "rest")] += seconds
            backward_total += seconds
    forward_total = total - backward_total
    forward["rest"] = max(0.0, forward_total - sum(forward[p] for p in PHASES[:-1]))
    model_seconds = statistics.median(walls)
    mlp_seconds = (forward["MLPs"] + backward["MLPs"]) * model_seconds / total  # unprofiled estimate
    return {**spec, "atoms": len(atoms), "edges": int(graph.edge_index.shape[1]),
            "nl_ms": 1e3 * statistics.median(nl_walls), "model_ms": 1e3 * model_seconds,
            "forward": {p: s / total for p, s in forward.items()},
            "backward": {p: s / total for p, s in backward.items()},
            "forward_share": forward_total / total, "mlp_macs": 2 * macs_forward, "system_share": system_share,
            "mlp_macs_per_cycle": 2 * macs_forward / mlp_seconds / clock_hz() / spec["threads"]}


def run(spec: dict) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        print(f"failed: {spec}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = ["preset", "atoms", "dtype", "threads", "allocator", "µs/atom/step", "system time",
            "neighbour list + graph", "forward", "backward", *PHASES, "MLP multiply-adds per cycle per thread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        total = r["nl_ms"] + r["model_ms"]
        model_share = r["model_ms"] / total
        phases = [f"{100 * model_share * (r['forward'][p] + r['backward'][p]):.0f} %" for p in PHASES]
        lines.append(
            f"| {r['preset']} | {r['atoms']:,} | {r['dtype']} | {r['threads']} "
            f"| {'kept' if r.get('keep_memory') else 'default'} | {1e3 * total / r['atoms']:.1f} "
            f"| {100 * r['system_share']:.0f} % | {100 * r['nl_ms'] / total:.0f} % "
            f"| {100 * model_share * r['forward_share']:.0f} % "
            f"| {100 * model_share * (1 - r['forward_share']):.0f} % | " + " | ".join(phases)
            + f" | {r['mlp_macs_per_cycle']:.1f} of {PEAK[r['dtype']]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["water-small", "water"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1536, 12288])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-memory", nargs="+", type=int, default=[1], choices=[0, 1],
                        help="1: glibc keeps freed memory mapped (the package's default, ase_nemp.perf); "
                             "0: glibc's own (ASE_NEMP_ALLOCATOR=default); 0 1: both")
    parser.add_argument("--output", type=Path, help="write the table here (markdown)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            for dtype in args.dtypes:
                for threads in args.threads:
                    for keep in args.keep_memory:
                        row = run(dict(preset=preset, size=size, dtype=dtype, threads=threads, repeats=args.repeats,
                                       keep_memory=bool(keep)))
                        if row is not None:
                            rows.append(row)
                            print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.output:
        options = " ".join(f"--{k} {' '.join(map(str, v))}" for k, v in
                           (("presets", args.presets), ("sizes", args.sizes), ("dtypes", args.dtypes),
                            ("threads", args.threads), ("keep-memory", args.keep_memory)))
        args.output.write_text(f"# Where NEMP's time goes\n\n`python benchmarks/phases.py {options}`: one energy + "
                               f"forces evaluation, neighbour list rebuilt every step; phases as shares of the "
                               f"whole step; clock {clock_hz() / 1e9:.2f} GHz (nominal).\n\n{text}\n")
    expected = len(args.presets) * len(args.sizes) * len(args.dtypes) * len(args.threads) * len(args.keep_memory)
    return 0 if len(rows) == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
