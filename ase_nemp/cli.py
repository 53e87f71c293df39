"""The ``nemp`` command line: ``nemp demo``, ``nemp info``, ``nemp train``, ``nemp eval``.

Each subcommand imports what it needs when it runs, so ``nemp --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _info(args: argparse.Namespace) -> int:
    from .io import load

    model = load(args.model)
    cfg = model.config
    print(f"model file      {args.model}")
    print(f"elements        {', '.join(cfg.symbols)}")
    print(f"cutoff          {cfg.cutoff} Å")
    print(f"L / l / C / T   {cfg.sh_lmax} / {cfg.feat_lmax} / {cfg.num_channels} / {cfg.num_layers}")
    print(f"parameters      {model.num_parameters():,}")
    print(f"dtype           {str(model.dtype).replace('torch.', '')}")
    print("reference E     " + ", ".join(f"{s} {e:.4f} eV" for s, e in zip(cfg.symbols, model.atomic_energies.tolist())))
    for key, value in sorted(getattr(model, "metadata", {}).items()):
        print(f"{key:<15} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemp", description="NEMP interatomic potentials driven from ASE.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="run the built-in example")
    demo.add_argument("--output", type=Path, default=Path("nemp-demo"), help="folder for the results")
    demo.set_defaults(func=_demo)

    info = sub.add_parser("info", help="describe a model file")
    info.add_argument("model", type=Path)
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"nemp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
