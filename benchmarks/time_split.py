"""Where the time of one energy + forces evaluation goes, by kind of operation.

    python benchmarks/time_split.py --model runs/architectures/nemp/best.pt [--size 1536]

Evaluates the model file on the water box of ``benchmarks/speed.py`` (1,536 atoms by
default; 1 thread, float32, neighbour list built once beforehand) under
``torch.profiler`` and sums each PyTorch operation's own time into a few kinds:

- matrix products (``mm``, ``addmm``, ``bmm``, ...);
- gather and scatter (``index_select``, ``index_add_``, ``index``, ``scatter_add``, ...:
  moving edge and node rows into place);
- element-wise and reductions (every other ``aten`` operation: activations, products,
  sums, copies, allocations);
- the rest of the wall time: fused C kernels (NEMP's, called outside PyTorch's operators),
  the Python between operations and the profiler's own cost.

Prints one table and each model's five largest operations; ``--json`` also writes them. The profiler slows every operation a
little, so the shares, not the profiled milliseconds, are the figure; the unprofiled time
per evaluation is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KINDS = ("matrix products", "gather and scatter", "element-wise and reductions", "other: fused C kernels, Python")
MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mv", "dot", "einsum", "_mkl_linear", "mkldnn_linear"}
GATHER_SCATTER = {"index_select", "index_add", "index_add_", "index", "index_put", "index_put_", "_index_put_impl_",
                  "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce", "gather",
                  "embedding", "embedding_dense_backward", "index_select_backward", "take"}


def kind_of(name: str) -> str | None:
    """The kind of a profiled ``aten::`` operation, or None for events that are not one."""
    if not name.startswith("aten::"):
        return None
    op = name[len("aten::"):]
    if op in MATMUL:
        return KINDS[0]
    if op in GATHER_SCATTER:
        return KINDS[1]
    return KINDS[2]


def split(model_file: str, size: int, repeats: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ase_nemp import load
    from ase_nemp.model import energy_forces_stress
    from ase_nemp.nl import build_graph
    from speed import build_system

    torch.set_num_threads(1)
    model = load(model_file, dtype="float32")
    atoms = build_system("water", size)
    graph = build_graph(atoms, model.cutoff, dtype=torch.float32)

    def evaluate():
        out = energy_forces_stress(model, graph)
        return float(out["energy"].sum())

    for _ in range(2):
        evaluate()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate()
        walls.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            evaluate()
    profiled = (time.perf_counter() - t0) / repeats
    seconds = dict.fromkeys(KINDS, 0.0)
    ops = {}
    for event in prof.key_averages():
        kind = kind_of(event.key)
        if kind is not None:
            seconds[kind] += event.self_cpu_time_total / 1e6 / repeats
            ops[event.key[len("aten::"):]] = event.self_cpu_time_total / 1e6 / repeats
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:5]
    seconds[KINDS[3]] = max(0.0, profiled - sum(seconds[k] for k in KINDS[:3]))
    return {"model": model_file, "architecture": model.architecture, "atoms": len(atoms),
            "edges": int(graph.edge_index.shape[1]), "ms_per_evaluation": 1e3 * statistics.median(walls),
            "ms_profiled": 1e3 * profiled, "share": {k: seconds[k] / profiled for k in KINDS},
            "top_ops": {name: t / profiled for name, t in top}}


def table(rows: list[dict]) -> str:
    head = "| model | ms per energy+forces | " + " | ".join(KINDS) + " |"
    lines = [head, "|" + "---|" * (2 + len(KINDS))]
    for r in rows:
        shares = " | ".join(f"{100 * r['share'][k]:.0f} %" for k in KINDS)
        lines.append(f"| {r['name']} | {r['ms_per_evaluation']:.0f} | {shares} |")
    lines.append("")
    for r in rows:
        top = ", ".join(f"{name} {100 * share:.0f} %" for name, share in r["top_ops"].items())
        lines.append(f"- {r['name']} ({r['atoms']:,} atoms, {r['edges']:,} edges), largest operations: {top}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="model file(s)")
    parser.add_argument("--size", type=int, default=1536, help="water box size (atoms)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for path in args.model:
        row = split(path, args.size, args.repeats)
        row["name"] = Path(path).parent.name or Path(path).stem
        rows.append(row)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
