"""How fast the fused edge MLPs run against this core's matrix-multiply rate.

    python benchmarks/mlp_kernel.py [--preset water-small] [--rows 8192 61440]
                                    [--dtypes float32 float64] [--threads 1 2] [--rounds 15]

The edge MLPs of one NEMP evaluation (the preset's edge, coefficient and layer MLPs, random
weights, the last coefficient MLP folded as the model calls it) run through the fused
kernel (``ase_nemp.model.kernels.mlp``) on ``rows`` random rows: the forward, which also
stores the SiLU derivatives (``D``, (nh + 1) x width numbers per row and MLP), and the
backward to the input (what forces need). Each configuration runs ``--rounds`` times,
interleaved with the others; the best round is kept.

- ``rows`` = 8,192 keeps the six MLPs' stored derivatives (about 1.1 kB per row in float32,
  twice that in float64) within the shared L3 cache; 61,440 is the water box of 1,536
  atoms at 4.5 A (about 40 edges per atom), whose derivatives stream from memory in the
  backward. (Far fewer rows would measure the Python call, about 0.1 ms per MLP.)
- The rate is multiply-adds per ns (the exact count of the layers' products, forward and
  input gradient), set against the rate of a large square matrix product (``torch.mm``,
  BLAS) on the same threads: the practical peak of this core, measured, not assumed.

Prints a markdown table; the figures of one run compare with each other.
"""

from __future__ import annotations

import argparse
import time

import torch

from ase_nemp import perf
from ase_nemp.model import kernels
from ase_nemp.model.config import NEMPConfig
from ase_nemp.model.nemp import NEMP


def edge_mlps(preset: str, dtype: torch.dtype) -> list[tuple[torch.nn.Module, int]]:
    """(module, fold) for each edge MLP one evaluation of the preset calls."""
    model = NEMP(NEMPConfig.preset(preset, species=["H", "O"])).to(dtype)
    mlps = [(model.edge_mlp, 1)]
    for t, coeff in enumerate(model.coeff_mlps):
        mlps.append((coeff, 3 if t == len(model.coeff_mlps) - 1 else 1))
    mlps += [(layer, 1) for layer in model.layer_mlps]
    return mlps


def multiply_adds(module, fold: int = 1) -> int:
    """Products per row of one forward of a ScaledMLP: input, hidden and (folded) output
    layers, or the one matrix of a linear one."""
    spec = module.spec
    if spec.linear:
        return module.d_in * module.d_out
    width, hidden = spec.width, spec.blocks * spec.layers
    return module.d_in * width + hidden * width * width + width * (module.d_out // fold)


def gemm_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Multiply-adds per ns of an n x n matrix product (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return n ** 3 / best / 1e9


def run(mlps, rows: int, dtype: torch.dtype, threads: int, inputs) -> tuple[float, float]:
    """Seconds of the six forwards and of the six backwards."""
    torch.set_num_threads(threads)
    kernels._library(dtype).nemp_set_threads(threads)
    outs, t0 = [], time.perf_counter()
    for (module, fold), x in zip(mlps, inputs):
        outs.append(kernels.mlp(module, x, csr=True, fold=fold))  # any non-None csr selects the kernel
    t1 = time.perf_counter()
    for y, x in zip(reversed(outs), reversed(inputs)):
        torch.autograd.grad(y, x, torch.ones_like(y))
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="water-small")
    parser.add_argument("--rows", nargs="+", type=int, default=[8192, 61440])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    perf.tune_cpu_allocator()  # as the calculator does: freed blocks stay mapped
    torch.manual_seed(0)

    configs = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        if not kernels.available(dtype):
            raise SystemExit(f"the fused kernels are not available for {name}")
        mlps = edge_mlps(args.preset, dtype)
        macs = 2 * sum(multiply_adds(m, f) for m, f in mlps)  # forward + input gradient
        for rows in args.rows:
            inputs = [torch.randn(rows, m.d_in, dtype=dtype, requires_grad=True) for m, _ in mlps]
            for threads in args.threads:
                configs.append(dict(dtype=name, rows=rows, threads=threads, mlps=mlps, inputs=inputs, macs=macs,
                                    fwd=float("inf"), bwd=float("inf")))
    for c in configs:  # warm-up: the libraries, the threads, the scratch blocks
        run(c["mlps"], c["rows"], getattr(torch, c["dtype"]), c["threads"], c["inputs"])
    for _ in range(args.rounds):
        for c in configs:
            fwd, bwd = run(c["mlps"], c["rows"], getattr(torch, c["dtype"]), c["threads"], c["inputs"])
            c["fwd"], c["bwd"] = min(c["fwd"], fwd), min(c["bwd"], bwd)
    peaks = {}
    for c in configs:
        key = (c["dtype"], c["threads"])
        if key not in peaks:
            torch.set_num_threads(c["threads"])
            peaks[key] = gemm_rate(getattr(torch, c["dtype"]))

    print(f"Fused edge MLPs of {args.preset} ({len(configs[0]['mlps'])} per evaluation), best of {args.rounds} "
          "interleaved rounds\n")
    print("| dtype | rows | threads | forward (ns/row) | backward (ns/row) | multiply-adds per ns "
          "| matrix product (multiply-adds per ns) | share of it |")
    print("|---|---|---|---|---|---|---|---|")
    for c in configs:
        total = c["fwd"] + c["bwd"]
        rate = c["macs"] * c["rows"] / total / 1e9
        peak = peaks[(c["dtype"], c["threads"])]
        print(f"| {c['dtype']} | {c['rows']:,} | {c['threads']} | {c['fwd'] / c['rows'] * 1e9:.0f} "
              f"| {c['bwd'] / c['rows'] * 1e9:.0f} | {rate:.1f} | {peak:.1f} | {rate / peak:.0%} |")


if __name__ == "__main__":
    main()
