"""What a committee costs against one of its members, side by side in one run.

    python benchmarks/committee_cost.py [--model ase_nemp/pretrained/pd-co-o.pt] [--repeat 30]

Times one energy + forces call through ``NEMPCalculator`` (neighbour list included, a new
geometry every call) on the 39-atom CO + O / Pd(111) slab and on a 2x2 repetition of it
(156 atoms): one member alone, then the whole committee, for float32 / float64 and 1 / 2
threads. The figure is the median call; the ratio committee / member is what matters
(absolute times on a shared machine are only indicative).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_call(calc, atoms, repeat: int) -> float:
    rng = __import__("numpy").random.default_rng(0)
    base = atoms.positions.copy()
    times = []
    for k in range(repeat + 3):
        atoms.positions = base + 1e-3 * rng.standard_normal(base.shape)
        start = time.perf_counter()
        atoms.calc = calc
        atoms.get_forces()
        if k >= 3:  # warm-up: kernel build, allocator
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "ase_nemp" / "pretrained" / "pd-co-o.pt")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    import torch

    from ase_nemp import NEMPCalculator, load
    from ase_nemp.demo import example_structures

    committee = load(args.model)
    if not hasattr(committee, "members"):
        raise SystemExit(f"{args.model} holds a single model, not a committee")
    initial, _ = example_structures()
    systems = {"slab 39 atoms": initial, "slab 2x2, 156 atoms": initial.repeat((2, 2, 1))}
    print(f"committee of {committee.size} ({committee.num_parameters():,} parameters) against member 0 "
          f"({committee.members[0].num_parameters():,}); median of {args.repeat} energy+forces calls\n")
    print("| system | dtype | threads | member (ms) | committee (ms) | committee / member |")
    print("|---|---|---|---|---|---|")
    before = torch.get_num_threads()
    try:
        for name, atoms in systems.items():
            for dtype in ("float32", "float64"):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    one = median_call(NEMPCalculator(committee.members[0], dtype=dtype), atoms.copy(), args.repeat)
                    all_ = median_call(NEMPCalculator(committee, dtype=dtype), atoms.copy(), args.repeat)
                    print(f"| {name} | {dtype} | {threads} | {1e3 * one:.1f} | {1e3 * all_:.1f} | {all_ / one:.2f} |",
                          flush=True)
    finally:
        torch.set_num_threads(before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
