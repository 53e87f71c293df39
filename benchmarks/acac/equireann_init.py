"""Do EquiREANN's zero-weight output layers slow its training? Two runs on acetylacetone
that differ only there (``output_init``), side by side.

    python benchmarks/acac/equireann_init.py [--epochs 150] [--variants zero xavier]

The spec (design/equireann-model.md, section 2.1) starts every MLP's output layer with zero
weights (``output_init: zero``), so an untrained model is a constant: its forces are exactly
zero, and in the first step the readout's zero weights block every gradient upstream of it.
``xavier`` (the package's default) draws those output weights Xavier-normal like the hidden
layers (biases unchanged).
Both runs use the EquiREANN model of ``benchmarks/architectures.py`` and the data, split,
batch size, EMA, force weight and float32 of ``benchmarks/acac/config.yaml``, one process,
one thread, the same seed and a cosine learning rate over ``--epochs`` epochs, one after
the other. Prints the validation force and energy RMSE per epoch of both and writes
``benchmarks/acac/equireann_init.md``. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from architectures import LEARNING_RATE, MODELS  # noqa: E402


def run(variant: str, epochs: int, out: Path) -> list[dict]:
    from ase_nemp.train import RunConfig, train

    config = yaml.safe_load((HERE / "config.yaml").read_text())
    config["model"] = dict(MODELS["equireann"], output_init=variant)
    lr = LEARNING_RATE["equireann"]
    config["training"].update(epochs=epochs, max_time=None, compile=False, valid_every=1, warmup_epochs=1,
                              lr_warm=lr / 10, lr_peak=lr, lr_min=lr / 100, checkpoint_every=100)
    for key in ("train", "isolated_atoms", "test"):
        config["data"][key] = str((HERE / config["data"][key]).resolve())
    config["output"]["dir"] = str(out / variant)
    path = out / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(config))
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train(RunConfig.from_yaml(path), progress=False)
    seconds = time.perf_counter() - t0
    with open(out / variant / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_f_rmse")]
    print(f"{variant}: {seconds:.0f} s", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--variants", nargs="+", default=["zero", "xavier"], choices=["zero", "xavier"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "equireann-init")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose another --out (nothing is overwritten)")
    args.out.mkdir(parents=True)
    curves = {v: run(v, args.epochs, args.out) for v in args.variants}
    lines = ["# EquiREANN: zero-weight output layers against Xavier-normal ones\n",
             f"`python benchmarks/acac/equireann_init.py --epochs {args.epochs}`: acetylacetone, validation set "
             "after each epoch (E in meV/atom, F in meV/Å).\n",
             "| epoch | " + " | ".join(f"{v}: E / F" for v in curves) + " |",
             "|---|" + "---|" * len(curves)]
    for k in range(max(len(c) for c in curves.values())):
        cells = []
        for rows in curves.values():
            r = rows[k] if k < len(rows) else None
            cells.append(f"{1e3 * float(r['val_e_rmse_atom']):.2f} / {1e3 * float(r['val_f_rmse']):.1f}" if r else "")
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (HERE / "equireann_init.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
