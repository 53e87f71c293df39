"""The ``nemp`` command line: ``nemp demo``, ``nemp info``, ``nemp train``, ``nemp learn``, ``nemp eval``,
``nemp relax``, ``nemp neb``.

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
    print(f"architecture    {model.architecture}" + ("" if model.conservative else " (direct forces)"))
    if model.is_committee:
        print(f"committee       {model.size} members")
    print(f"elements        {', '.join(cfg.symbols)}")
    print(f"cutoff          {cfg.cutoff} Å")
    common = {"species", "cutoff", "eps", "isolated_atom_switch", "zbl", "zbl_radius_scale"}
    settings = {k: v for k, v in cfg.to_dict().items() if k not in common}
    print("settings        " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    print(f"parameters      {model.num_parameters():,}")
    print(f"dtype           {str(model.dtype).replace('torch.', '')}")
    print("reference E     " + ", ".join(f"{s} {e:.4f} eV" for s, e in zip(cfg.symbols, model.atomic_energies.tolist())))
    print(f"isolated atoms  {'exactly E0 (switch width ' + str(cfg.isolated_atom_switch) + ')' if cfg.isolated_atom_switch else 'no switch'}")
    print(f"ZBL repulsion   {'on' if cfg.zbl else 'off'}")
    for key, value in sorted(getattr(model, "metadata", {}).items()):
        print(f"{key:<15} {value}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import RunConfig, TrainingInterrupted, train
    from .train.distributed import is_main_process

    run = RunConfig.from_yaml(args.config)
    try:
        trainer = train(run, resume=args.resume, progress=not args.quiet)
    except TrainingInterrupted as err:
        print(f"nemp train: {err}; continue with: nemp train {args.config} --resume", file=sys.stderr)
        return 130
    if not is_main_process():  # under torchrun the first process reports
        return 0
    best = trainer.out / "best.pt"
    if not best.exists():
        print(f"nemp train: no epoch was completed, so no model was written (see {trainer.out})", file=sys.stderr)
        return 1
    if hasattr(trainer, "members"):
        print(f"committee of {len(trainer.members)}: {best}  (member best epochs "
              f"{[t.state['best_epoch'] for t in trainer.members]}; validation in {trainer.out / 'committee.md'})")
    else:
        print(f"best model: {best}  (epoch {trainer.state['best_epoch']}, validation loss {trainer.state['best_val']:.4g})")
    return 0


def _learn(args: argparse.Namespace) -> int:
    from .learn import LearningInterrupted, learn
    from .learn.loop import format_log

    try:
        rows = learn(args.config, resume=args.resume, progress=not args.quiet, scheduler=args.scheduler)
    except LearningInterrupted as err:
        print(f"nemp learn: {err}; continue with: nemp learn {args.config} --resume", file=sys.stderr)
        return 130
    print(format_log(rows))
    return 0


def _relax(args: argparse.Namespace) -> int:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from . import NEMPCalculator
    from .devices import set_threads
    from .files import check_new_file, check_output_format, check_writable_folder
    from .jobs import InProcess, check_spec, open_executor
    from .relax import RelaxInterrupted, relax_many
    from .files import read_structures

    check_spec(args.scheduler)
    output = args.output or args.structures.with_name(args.structures.stem + "-relaxed.extxyz")
    check_new_file(output)
    check_writable_folder(output.parent)
    set_threads(args.threads)
    frames = read_structures(args.structures)
    check_output_format(output, len(frames))  # before the work, not after it
    if args.model:
        model = args.model
    else:
        from .pretrained import model_path

        model = model_path("pd-co-o")
    calc = NEMPCalculator(model, dtype=args.dtype)
    interrupted = None
    with open_executor(args.scheduler) as executor:
        try:
            results = relax_many(frames, calc, fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
                                 max_atoms=args.max_atoms, progress=not args.quiet, warn=False,  # said one by one
                                 executor=None if isinstance(executor, InProcess) else executor, per_job=args.per_job)
        except RelaxInterrupted as err:
            interrupted, results = err, err.results
        except RuntimeError as err:  # jobs that failed on their workers (the others are relaxed, not written)
            print(f"nemp relax: error: {err}", file=sys.stderr)
            return 1
    out = []
    for k, (atoms, result) in enumerate(zip(frames, results)):
        done = atoms.copy()
        r = atoms.calc.results if atoms.calc is not None else {}
        if "energy" in r:  # not for a structure an interruption kept from its worker
            done.calc = SinglePointCalculator(done, energy=r["energy"], forces=r["forces"])
        done.info.update(converged=result.converged, relax_steps=result.steps, fmax=result.fmax)
        if interrupted is not None:
            done.info["interrupted"] = not result.converged
        if result.energy_uncertainty is not None:
            done.info.update(energy_uncertainty=result.energy_uncertainty,
                             forces_uncertainty_max=result.forces_uncertainty,
                             outside_confidence=result.doubt is not None)
        if result.doubt:
            done.info["doubt"] = result.doubt
            print(f"structure {k}: outside the model's confidence ({result.doubt}); its minimum may be an artefact "
                  "of the model", file=sys.stderr)
        out.append(done)
    write(output, out)
    converged = sum(r.converged for r in results)
    if interrupted is not None:
        print(f"nemp relax: {interrupted}; every structure is written to {output} where it stopped (info "
              "'converged' says which finished)", file=sys.stderr)
        return 130
    print(f"{converged} of {len(results)} structures converged to fmax {args.fmax} eV/Å; written to {output}")
    doubtful = sum(r.doubt is not None for r in results)
    if doubtful:
        print(f"WARNING: {doubtful} of {len(results)} structures end outside the model's confidence (info "
              "'outside_confidence' in the output): label such structures with a reference method and fine-tune "
              "(nemp learn) before trusting them", file=sys.stderr)
        return 4
    return 0 if converged == len(results) else 3


def _neb(args: argparse.Namespace) -> int:
    from . import NEMPCalculator
    from .devices import set_threads
    from .files import check_writable_folder
    from .jobs import check_spec
    from .neb import NEBProtocol
    from .reaction import ReactionSettings, check_end_points, elementary_steps
    from .uncertainty import model_confidence
    from .report import exit_code, refuse_existing, summarise
    from .files import read_structures

    check_spec(args.scheduler)
    initials, finals = read_structures(args.initial), read_structures(args.final)
    if len(initials) != len(finals) and 1 not in (len(initials), len(finals)):
        raise ValueError(f"{args.initial} holds {len(initials)} structures and {args.final} {len(finals)}: give "
                         "as many initial as final states (the k-th with the k-th), or one of either")
    pairs = list(zip(initials * (len(finals) if len(initials) == 1 else 1),
                     finals * (len(initials) if len(finals) == 1 else 1)))
    for k, (a, b) in enumerate(pairs, start=1):
        try:
            check_end_points(a, b)
        except ValueError as err:
            raise ValueError(f"reaction {k}: {err}" if len(pairs) > 1 else str(err)) from None
    folders = [args.output] if len(pairs) == 1 else [args.output / f"reaction-{k}" for k in range(1, len(pairs) + 1)]
    for folder in folders:
        refuse_existing(folder)
    if len(pairs) > 1 and (args.output / "reactions.md").exists():
        raise FileExistsError(f"{args.output} already holds reactions.md; choose another --output (nothing is "
                              "overwritten)")
    check_writable_folder(args.output)
    set_threads(args.threads)
    if args.model:
        model = args.model
    else:
        from .pretrained import model_path

        model = model_path("pd-co-o")
    calc = NEMPCalculator(model, dtype=args.dtype)
    known = set(calc.model.config.symbols)
    for k, pair in enumerate(pairs, start=1):
        for name, atoms in zip(("initial", "final"), pair):
            unknown = sorted(set(atoms.get_chemical_symbols()) - known)
            if unknown:
                which = f"the {name} structure" + (f" of reaction {k}" if len(pairs) > 1 else "")
                raise ValueError(f"{which} has element(s) {', '.join(unknown)} that the model does not know (it "
                                 f"knows {', '.join(sorted(known))})")
    protocol = NEBProtocol(**{k: v for k, v in (("images", args.images), ("fmax", args.fmax)) if v is not None})
    settings = ReactionSettings(protocol=protocol, temperatures=tuple(args.temperature))
    confidence = model_confidence(calc.model)
    if len(pairs) > 1:
        return _many_reactions(args, pairs, calc, settings)
    path = elementary_steps(pairs[0][0], pairs[0][1], calc, settings, progress=not args.quiet, log=print)
    title = f"{args.initial.name} -> {args.final.name}: {len(path.steps)} elementary step(s)"
    summarise(path, args.output, title, confidence)
    return exit_code(path, confidence)


def _many_reactions(args: argparse.Namespace, pairs: list, calc, settings) -> int:
    """``nemp neb`` over many pairs: one job per reaction on ``--scheduler``, a table of all."""
    from .jobs import open_executor
    from .report import run_reactions

    with open_executor(args.scheduler) as executor:
        outcomes = run_reactions(pairs, calc, settings, args.output, executor, progress=not args.quiet)
    lines = ["| reaction | steps | barriers (eV) | reaction energy (eV) | verified | files |", "|---|---|---|---|---|---|"]
    codes = []
    for outcome in outcomes:
        k = outcome.index + 1
        if not outcome.ok:
            codes.append(2)
            lines.append(f"| {k} | failed: {type(outcome.error).__name__}: {outcome.error} | | | | |")
            continue
        v = outcome.value
        print(f"{v['title']}\n{v['table']}\n")
        codes.append(v["code"])
        barriers = ", ".join(f"{st['barrier']:.3f}" + (f" ± {st['error_bar']:.3f}" if st["error_bar"] else "")
                             for st in v["steps"])
        lines.append(f"| {k} | {len(v['steps'])} | {barriers} | {sum(st['reaction_energy'] for st in v['steps']):+.3f} "
                     f"| {'yes' if all(st['verified'] for st in v['steps']) else 'no'} | reaction-{k}/ |")
    table = "\n".join(lines)
    (args.output / "reactions.md").write_text(f"# {len(pairs)} reactions\n\n{table}\n")
    print(table)
    print(f"files: {args.output}/reaction-K/ (one folder per reaction), {args.output / 'reactions.md'}")
    if 4 in codes:
        print("WARNING: some reactions pass outside the model's confidence (see their tables): label such frames "
              "with a reference method and fine-tune (nemp learn) before trusting their barriers.", file=sys.stderr)
    if 2 in codes:
        print(f"nemp neb: {codes.count(2)} of {len(pairs)} reactions could not be analysed (see the table)",
              file=sys.stderr)
    return max(codes, key=lambda c: (c == 2, c))


def _lammps(args: argparse.Namespace) -> int:
    from .files import check_new_file
    from .lammps import LammpsPotential, lammps_input, resolve_model, write_pointer

    check_new_file(args.output)
    model = resolve_model(args.model)
    potential = LammpsPotential(model, dtype=args.dtype, exchange=False if args.recompute_halo else None)
    lines = lammps_input(potential, str(args.output.resolve()), skin=args.skin, types=args.types)
    write_pointer(potential, args.output)
    how = ("ghosts one cutoff deep, their features sent by the ranks that own them" if potential.exchanges_features
           else "each rank recomputes that halo")
    print(f"# {potential.model.describe()}; reach {potential.hops} x {potential.model.cutoff} Å: {how}")
    print("\n".join(lines))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .files import check_new_file, check_writable_folder
    from .train import LabelKeys, format_table, predictions

    resolve_device(args.device)
    cal_path = args.calibration or (args.plot.with_name(args.plot.stem + "-calibration.png") if args.plot else None)
    for path in (args.plot, cal_path):  # before the evaluation, not after it
        if path is not None:
            check_new_file(path, "name")
            check_writable_folder(path.parent)
    keys = LabelKeys(args.energy_key, args.forces_key, args.stress_key)
    stats, pred, ref = predictions(args.model, args.data, keys, batch_size=args.batch_size, device=args.device,
                                   dtype=args.dtype)
    print(format_table(stats.summary()))
    title = f"{Path(args.model).name} on {Path(args.data).name}"
    if args.plot:
        from .train.plots import parity_plot

        parity_plot(pred, ref, args.plot, title=title)
        print(f"parity plot written to {args.plot}")
    if "energy_uncertainty" in pred:
        from .train.evaluate import calibration, format_calibration
        from .train.plots import calibration_plot

        print(f"\ncommittee uncertainty against true error ({len(pred['energy'])} structures):")
        print(format_calibration(calibration(pred, ref)))
        if cal_path:
            calibration_plot(pred, ref, cal_path, title=title)
            print(f"calibration plot written to {cal_path}")
        from .io import load
        from .uncertainty import Calibration, coverage

        fitted = Calibration.of(load(args.model))
        if fitted is not None:
            print(f"\ncalibrated intervals (fitted on {fitted.source or 'held-out data'}): fraction of the true "
                  "errors inside")
            print(format_coverage(coverage(fitted, pred, ref, (0.5, 0.68, 0.9, 0.95))))
    elif args.calibration:
        print("--calibration needs a committee model file; this file holds a single model", file=sys.stderr)
        return 2
    return 0


def format_coverage(table: dict) -> str:
    """Markdown table of :func:`ase_nemp.uncertainty.coverage`."""
    levels = sorted(next(iter(table.values())))
    lines = ["| property | " + " | ".join(f"{100 * x:.0f} % interval" for x in levels) + " |",
             "|---" * (len(levels) + 1) + "|"]
    for prop, row in table.items():
        lines.append(f"| {prop} | " + " | ".join(f"{100 * row[x]:.1f} %" for x in levels) + " |")
    return "\n".join(lines)


def _calibrate(args: argparse.Namespace) -> int:
    from .files import check_new_file, check_writable_folder
    from .io import load, save
    from .train import predictions
    from .uncertainty import METADATA_KEY, coverage, fit_calibration

    check_new_file(args.output)
    check_writable_folder(args.output.parent)
    if args.plot is not None:
        check_new_file(args.plot, "--plot")
        check_writable_folder(args.plot.parent)
    model = load(args.model)
    if not model.is_committee:
        raise ValueError(f"{args.model} holds a single model; calibration needs a committee (its spread)")
    _, pred, ref = predictions(model, args.heldout, dtype=args.dtype)
    fitted = fit_calibration(pred, ref, floor=args.floor, source=args.heldout.name)
    print(f"fitted on {args.heldout} ({fitted.samples['energy']} structures, {fitted.samples['forces']} atoms): "
          f"90 % radius = {fitted.factors['energy'][0.9]:.2f} x (energy spread + {fitted.floors['energy']:.4f} eV), "
          f"{fitted.factors['forces'][0.9]:.2f} x (force spread + {fitted.floors['forces']:.4f} eV/Å)")
    observed = {f"{p}, {args.heldout.name} (fitted)": v for p, v in coverage(fitted, pred, ref).items()}
    samples = {f"energy, {args.heldout.name} (fitted)": len(ref["energy"]),
               f"forces, {args.heldout.name} (fitted)": len(ref["forces"])}
    for extra in args.check or []:
        _, p2, r2 = predictions(model, extra, dtype=args.dtype)
        table = coverage(fitted, p2, r2)
        print(f"\non {extra} (not used in the fit): fraction of the true errors inside")
        print(format_coverage({k: {x: v[x] for x in (0.5, 0.68, 0.9, 0.95)} for k, v in table.items()}))
        observed.update({f"{p}, {extra.name}": v for p, v in table.items()})
        samples.update({f"energy, {extra.name}": len(r2["energy"]), f"forces, {extra.name}": len(r2["forces"])})
    save(model, args.output, **{**model.metadata, METADATA_KEY: fitted.to_dict()})
    print(f"calibrated model written to {args.output}")
    if args.plot is not None:
        from .train.plots import reliability_plot

        reliability_plot(observed, args.plot, title=f"{args.model.name}: calibrated intervals", samples=samples)
        print(f"reliability plot written to {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemp", description="NEMP interatomic potentials driven from ASE.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="CO oxidation on Pd(111) with the shipped model: elementary steps, saddles, rates")
    demo.add_argument("--output", type=Path, default=Path("nemp-demo"),
                      help="folder for the bands, saddles, table and plot (files already there are not overwritten)")
    demo.add_argument("--images", type=int, help="images in the band, end points included (default: the protocol's)")
    demo.add_argument("--fmax", type=float, help="force tolerance of the band in eV/Å")
    demo.add_argument("--steps", type=int, help="at most this many optimiser steps per band")
    demo.add_argument("--max-steps", type=int, help="at most this many elementary steps (default 4)")
    demo.add_argument("--saddle-steps", type=int, help="at most this many saddle-search steps per saddle (default 100)")
    demo.add_argument("--model", type=Path, help="a model file instead of the shipped pd-co-o model")
    demo.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                      help="float32 (default) halves the cost of the committee; float64 for checks")
    demo.add_argument("--threads", type=int, help="torch CPU threads")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    tr = sub.add_parser("train", help="train a model from a YAML config (see ase_nemp.train.config)")
    tr.add_argument("config", type=Path)
    tr.add_argument("--resume", action="store_true", help="continue the run in the config's output.dir")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_train)

    le = sub.add_parser("learn", help="active learning: explore with a committee, label with a teacher, fine-tune "
                                      "(see ase_nemp.learn.config)")
    le.add_argument("config", type=Path)
    le.add_argument("--resume", action="store_true", help="continue the run in the config's output.dir")
    le.add_argument("--quiet", action="store_true", help="no progress bars")
    le.add_argument("--scheduler", help="where the teacher labels a round's frames, all at once: serial, "
                                        "processes:N (local) or a Dask scheduler tcp://HOST:PORT "
                                        "(default: teacher.scheduler of the config, else serial)")
    le.set_defaults(func=_learn)

    rx = sub.add_parser("relax", help="relax every structure of a file, all in one model call per step")
    rx.add_argument("structures", type=Path, help="any file ase.io.read understands (all frames)")
    rx.add_argument("--model", type=Path, help="a model file (default: the shipped pd-co-o model)")
    rx.add_argument("--output", type=Path, help="extxyz file for the relaxed structures (default: NAME-relaxed.extxyz)")
    rx.add_argument("--fmax", type=float, default=0.05, help="largest atomic force at convergence, eV/Å")
    rx.add_argument("--steps", type=int, default=500, help="optimizer steps per structure at most")
    rx.add_argument("--optimizer", default="BFGS", help="an ASE optimizer class: BFGS, LBFGS, FIRE...")
    rx.epilog = ("exit codes: 0 all converged, 3 some not converged, 4 some end outside the committee's "
                 "confidence, 130 interrupted (finished structures are written), 2 bad input")
    rx.add_argument("--max-atoms", type=int, default=4096, help="atoms per model call at most")
    rx.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    rx.add_argument("--threads", type=int, help="torch CPU threads")
    rx.add_argument("--quiet", action="store_true", help="no progress bar")
    rx.add_argument("--scheduler", default="serial",
                    help="where to relax: serial (this process, all in lockstep), processes:N (N local processes) "
                         "or a Dask scheduler tcp://HOST:PORT; jobs of --per-job structures")
    rx.add_argument("--per-job", type=int, default=8, help="structures per job on a --scheduler (default 8)")
    rx.set_defaults(func=_relax)

    nb = sub.add_parser("neb", help="a reaction between two structures: elementary steps, verified saddles, rates")
    nb.add_argument("initial", type=Path, help="initial state (any format ase.io.read understands); a file of "
                                               "several structures: one reaction each, with the final state of the "
                                               "same position")
    nb.add_argument("final", type=Path, help="final state(s): the same atoms in the same order")
    nb.add_argument("--model", type=Path, help="a model file (default: the shipped pd-co-o model)")
    nb.add_argument("--images", type=int, help="images per band, end points included (default 7)")
    nb.add_argument("--fmax", type=float, help="force tolerance of the bands in eV/Å (default 0.05)")
    nb.add_argument("--temperature", type=float, nargs="+", default=[300.0, 500.0, 700.0],
                    help="temperatures of the rates in K")
    nb.add_argument("--output", type=Path, default=Path("nemp-neb"), help="folder for the bands, saddles and plot")
    nb.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    nb.add_argument("--threads", type=int, help="torch CPU threads")
    nb.add_argument("--quiet", action="store_true", help="no progress bars")
    nb.add_argument("--scheduler", default="serial",
                    help="for several reactions, where to run them (one job each): serial, processes:N (local) or "
                         "a Dask scheduler tcp://HOST:PORT; each writes OUTPUT/reaction-K/")
    nb.set_defaults(func=_neb)

    lm = sub.add_parser("lammps", help="the file LAMMPS's pair_style mliap unified reads, and the lines for the input")
    lm.add_argument("model", help="a model or committee file, or a shipped model's name (pd-co-o)")
    lm.add_argument("--output", type=Path, default=Path("model.mliap"),
                    help="the pointer file to write (it names the model file; the weights stay there)")
    lm.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    lm.add_argument("--skin", type=float, default=2.0,
                    help="the input's neighbour skin in Å (sets comm_modify cutoff where a halo is recomputed)")
    lm.add_argument("--recompute-halo", action="store_true",
                    help="NEMP: every rank recomputes a halo as deep as the receptive field instead of receiving "
                         "its ghosts' features from their owners (no mpi4py needed; slower on several ranks)")
    lm.add_argument("--types", nargs="+", help="the element of each LAMMPS atom type, in type order "
                                               "(default: the model's species)")
    lm.set_defaults(func=_lammps)

    ev = sub.add_parser("eval", help="errors of a model on labelled structures")
    ev.add_argument("model", type=Path)
    ev.add_argument("data", type=Path, help="any file ase.io.read understands")
    ev.add_argument("--plot", type=Path, help="write energy and force parity plots to this PNG")
    ev.add_argument("--calibration", type=Path,
                    help="committee files: write the uncertainty-against-error plot to this PNG "
                         "(default: beside --plot as NAME-calibration.png)")
    ev.add_argument("--energy-key", default="energy")
    ev.add_argument("--forces-key", default="forces")
    ev.add_argument("--stress-key", default="stress")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ev.set_defaults(func=_eval)

    ca = sub.add_parser("calibrate", help="turn a committee's spread into calibrated error bars (held-out data)")
    ca.add_argument("model", type=Path, help="a committee model file")
    ca.add_argument("heldout", type=Path, help="labelled structures the committee was not trained on")
    ca.add_argument("--output", type=Path, required=True, help="the calibrated model file to write")
    ca.add_argument("--check", type=Path, nargs="+",
                    help="labelled structures to measure the intervals' coverage on (not used in the fit)")
    ca.add_argument("--plot", type=Path, help="write the reliability plot (coverage against level) to this PNG")
    ca.add_argument("--floor", action="store_true", help="fit a floor added to the spread as well as a scale")
    ca.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ca.set_defaults(func=_calibrate)

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
    from .perf import tune_cpu_allocator
    from .train.distributed import OtherProcessFailed

    try:
        tune_cpu_allocator()
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, OtherProcessFailed) as err:
        print(f"nemp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
