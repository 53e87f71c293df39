"""acetylacetone benchmark: train on train_300K.xyz (450 train / 50 validation), test on
test_MD_300K.xyz, print the RMSEs and the wall time.

    python benchmarks/acac/run.py [--config benchmarks/acac/config.yaml] [--minutes 60]

The configuration trains with the compiled step in two processes of one thread each:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 benchmarks/acac/run.py

Writes the run into ``runs/acac`` (model, checkpoint, metrics) and copies the learning
curve and the printed figures to ``benchmarks/acac/`` (``learning_curve.png``,
``results.md``). Needs the data under ``../shared/data/botnet/acac``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "data" / "botnet" / "acac"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml")
    parser.add_argument("--minutes", type=float, help="override the training time budget")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "acac")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if not (DATA / "train_300K.xyz").exists():
        print(f"data not found under {DATA}", file=sys.stderr)
        return 1

    from ase_nemp.perf import keep_freed_memory
    from ase_nemp.train import RunConfig, train

    keep_freed_memory()
    raw = yaml.safe_load(args.config.read_text())
    raw["output"] = {"dir": str(args.out)}
    if args.minutes is not None:
        raw["training"]["max_time"] = 60.0 * args.minutes
    run = RunConfig.from_dict(raw, base_dir=args.config.parent)
    start = time.perf_counter()
    trainer = train(run, resume=args.resume)
    wall = time.perf_counter() - start
    if not trainer.group.main:  # under torchrun the first process reports
        return 0
    test = json.loads((args.out / "test_metrics.json").read_text())["all"]
    history = trainer.state["history"]
    epochs = len(history)
    per_epoch = history[-1]["elapsed_s"] / max(epochs, 1)
    lines = [
        "# acetylacetone (acac) benchmark",
        "",
        f"config: `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}`",
        f"training wall time: {history[-1]['elapsed_s'] / 60:.1f} min for {epochs} epochs "
        f"({per_epoch:.1f} s per epoch), total including data preparation and test: {wall / 60:.1f} min",
        f"best validation epoch: {trainer.state['best_epoch']}",
        "",
        "| test_MD_300K.xyz (650 structures) | value | target |",
        "|---|---|---|",
        f"| energy RMSE | {1e3 * test['e_rmse_atom']:.3f} meV/atom ({1e3 * test['e_rmse']:.2f} meV/molecule) | <= 0.7 meV/atom |",
        f"| force RMSE | {1e3 * test['f_rmse']:.2f} meV/Å | <= 15 meV/Å |",
        f"| energy MAE | {1e3 * test['e_mae_atom']:.3f} meV/atom | |",
        f"| force MAE | {1e3 * test['f_mae']:.2f} meV/Å | |",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out.resolve() == (ROOT / "runs" / "acac").resolve():
        (HERE / "results.md").write_text(text + "\n")
        shutil.copy(args.out / "learning_curve.png", HERE / "learning_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
