"""Teacher labelling on Dask workers against one process: the job nemp learn waits for.

    python benchmarks/labelling.py [--frames 16] [--sleep 2] [--workers 2]

A stand-in teacher (EMT that sleeps ``--sleep`` seconds per call, as a DFT single point
waits on its program) labels ``--frames`` Cu13 frames the way ``nemp learn`` does
(``ase_nemp.learn.teacher.label_on_worker`` through ``ase_nemp.jobs.run_jobs``): in this
process one after another, then on a Dask ``LocalCluster`` of ``--workers`` processes.
Prints the wall times, the ratio, and whether the labels are identical.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
from ase.calculators.emt import EMT


class SleepingEMT(EMT):
    """EMT that takes ``sleep`` seconds per calculation."""

    def __init__(self, sleep: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.sleep = sleep

    def calculate(self, *args, **kwargs):
        time.sleep(self.sleep)
        super().calculate(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds per teacher call")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from ase.cluster import Icosahedron
    from distributed import Client, LocalCluster

    from ase_nemp.jobs import run_jobs
    from ase_nemp.learn.teacher import label_on_worker

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(args.frames + args.workers):  # the last ones only warm the workers up
        atoms = Icosahedron("Cu", 2)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        frames.append((atoms, None))
    frames, warm_up = frames[:args.frames], frames[args.frames:]
    spec = f"{Path(__file__).resolve()}:SleepingEMT"
    fn = partial(label_on_worker, spec, {"sleep": args.sleep}, False)

    t0 = time.perf_counter()
    serial = run_jobs(fn, frames)
    t_serial = time.perf_counter() - t0
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        executor = client.get_executor(pure=False)
        run_jobs(fn, warm_up, executor)  # each worker loads the teacher once, as in a real run
        t0 = time.perf_counter()
        parallel = run_jobs(fn, frames, executor)
        t_dask = time.perf_counter() - t0
    same = all(np.array_equal(a.value.get_forces(), b.value.get_forces())
               and a.value.get_potential_energy() == b.value.get_potential_energy() for a, b in zip(serial, parallel))
    ideal = args.frames * args.sleep / args.workers
    print(f"| labelling {args.frames} frames, teacher {args.sleep:.1f} s per call | wall time (s) | speed-up |")
    print("|---|---|---|")
    print(f"| this process, one after another | {t_serial:.1f} | 1.00 |")
    print(f"| Dask LocalCluster, {args.workers} worker processes | {t_dask:.1f} | {t_serial / t_dask:.2f} "
          f"(ideal {t_serial / ideal:.2f}) |")
    print(f"labels identical: {same}")


if __name__ == "__main__":
    main()
