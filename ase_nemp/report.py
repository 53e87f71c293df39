"""What ``nemp neb`` and ``nemp demo`` print and write for a :class:`~ase_nemp.reaction.ReactionPath`.

* :func:`step_table`: one row per elementary step (barrier from its own initial minimum,
  reaction energy, imaginary frequency, prefactor, rates, committee spreads, flags);
* :func:`write_reaction`: the minima, each step's band and its saddle (extxyz; the
  saddle carries its imaginary mode as the per-atom array ``mode``), the table as
  Markdown, and one profile plot of the whole path with the steps marked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase.io import write

from .reaction import member_energies
from .saddle import displacement
from .uncertainty import doubt, interval

__all__ = ["step_table", "write_reaction", "plot_profile", "path_coordinates", "confidence_flags", "refuse_existing",
           "summarise", "describe_step", "exit_code", "run_reactions"]


def confidence_flags(step, confidence: dict) -> list[str]:
    """Where a committee doubts a step: images or the saddle whose largest atomic force
    spread (eV/Å) or energy spread (eV) exceeds ``confidence``'s thresholds
    (``forces_uncertainty``, ``energy_uncertainty``). Empty for a single model."""
    out = []
    frames = [(f"image {i}", im) for i, im in enumerate(step.images)]
    if step.saddle is not None:
        frames.append(("saddle", step.saddle.atoms))
    for name, atoms in frames:
        results = getattr(atoms.calc, "results", {}) or {}
        if doubt(results, confidence) is not None:
            f, e = float(np.max(results["forces_uncertainty"])), float(results["energy_uncertainty"])
            out.append(f"{name} (force spread {f:.2f} eV/Å, energy spread {e:.3f} eV)")
    return out


def _pm(value: float, spread: float | None, fmt: str) -> str:
    return format(value, fmt) + (f" ± {format(spread, fmt)}" if spread is not None else "")


def step_table(path, markdown: bool = False, confidence: dict | None = None) -> str:
    """The steps as a table (plain text, or Markdown with ``markdown``); with
    ``confidence`` thresholds, a column says whether the committee trusts each step."""
    temperatures = next((st.rate.temperatures for st in path.steps if st.rate is not None), None)
    header = ["step", "from (eV)", "Ea (eV)", "Ea+ZPE", "dE (eV)", "imag (cm^-1)", "log10 A"]
    if temperatures is not None:
        header += [f"log10 k {t:.0f} K" for t in temperatures]
    header.append("verified")
    if confidence is not None:
        header.append("in confidence")
    rows = []
    e0 = path.minima[0].get_potential_energy()
    doubts = [confidence_flags(st, confidence) if confidence is not None else [] for st in path.steps]
    for k, st in enumerate(path.steps, start=1):
        start = st.initial.get_potential_energy() - e0
        row = [str(k), f"{start:+.3f}", _pm(st.barrier, st.error_bar[0], ".3f")]
        if st.rate is not None:
            r = st.rate
            row += [f"{r.zpe_barrier:.3f}", f"{st.reaction_energy:+.3f}", f"{st.saddle.imaginary_frequency:.0f}i",
                    _pm(r.log10_prefactor, r.log10_prefactor_spread, ".2f")]
            spreads = r.log10_rate_spread if r.log10_rate_spread is not None else [None] * len(r.log10_rate)
            row += [_pm(v, sp, ".2f") for v, sp in zip(r.log10_rate, spreads)]
        else:
            imag = (f"{st.saddle.imaginary_frequency:.0f}i" if st.saddle is not None and len(st.saddle.imaginary)
                    else "barrierless" if st.notes else "-")
            row += ["-", f"{st.reaction_energy:+.3f}", imag, "-"]
            row += ["-"] * (0 if temperatures is None else len(temperatures))
        row.append("yes" if st.verified else "NO")
        if confidence is not None:
            row.append("NO" if doubts[k - 1] else "yes")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    notes = [f"step {k}: {describe_step(st.initial, st.final)}" for k, st in enumerate(path.steps, start=1)]
    kinds = sorted({st.error_bar[1] for st in path.steps if st.error_bar[0] is not None})
    bar = f"; ± on Ea: the {' / '.join(kinds)}" if kinds else ""
    notes += ["(Ea: barrier from the step's own initial minimum; dE: reaction energy; A: harmonic-TST prefactor "
              f"and k: rate, both in s^-1, ± their committee spread{bar})"]
    notes += [f"step {k}: {flag}" for k, st in enumerate(path.steps, start=1) for flag in st.flags + st.notes]
    notes += [f"step {k}: outside the model's confidence at " + "; ".join(found)
              for k, found in enumerate(doubts, start=1) if found]
    return "\n".join(lines + [("- " if markdown else "") + note for note in notes])


def path_coordinates(images) -> np.ndarray:
    """Å, the cumulative distance along a sequence of structures (minimum image)."""
    x = [0.0]
    for a, b in zip(images[:-1], images[1:]):
        x.append(x[-1] + float(np.sqrt((displacement(a, b) ** 2).sum())))
    return np.array(x)


def _image_spreads(images, reference) -> tuple[np.ndarray | None, str]:
    """The error bar of each image's energy relative to ``reference`` (eV) and its name: the
    calibrated interval for a calibrated committee, else the committee spread."""
    ref = member_energies(reference)
    rows = [member_energies(im) for im in images]
    if ref is None or any(r is None for r in rows):
        return None, ""
    spread = np.array([np.std(np.asarray(r) - ref, ddof=1) for r in rows])
    radius = interval(images[-1].calc, spread)
    if radius is not None:
        return radius, f"calibrated {100 * images[-1].calc.interval_level:.0f} % interval"
    return spread, "committee spread"


def plot_profile(path, file: Path, title: str) -> Path:
    """Energy along the whole path: every step's band, its refined saddle (a star), its
    minima, and the barrier of each step from the minimum it starts from."""
    from .plotting import figure

    fig, ax = figure(figsize=(7.5, 4.5))
    e0 = path.minima[0].get_potential_energy()
    offset = 0.0
    for k, st in enumerate(path.steps, start=1):
        images = st.images
        x = path_coordinates(images) + offset
        e = np.array([im.get_potential_energy() for im in images]) - e0
        spread, kind = _image_spreads(images, path.minima[0])
        color = f"C{(k - 1) % 10}"
        ax.plot(x, e, "-", color=color, lw=1.2)
        what = describe_step(st.initial, st.final).split(",")[0].split(" (")[0]
        if spread is not None:
            ax.errorbar(x, e, yerr=spread, fmt="o", ms=4, color=color, capsize=2,
                        label=f"step {k}: {what} (images ± {kind})")
        else:
            ax.plot(x, e, "o", ms=4, color=color, label=f"step {k}: {what}")
        if st.saddle is not None:
            peak = int(np.argmax(e))
            e_ts = st.saddle.energy - e0
            ax.plot([x[peak]], [e_ts], "*", ms=14, color=color, mec="k",
                    label=f"step {k} saddle ({st.saddle.imaginary_frequency:.0f}i cm$^{{-1}}$)"
                    + ("" if st.verified else ": NOT verified"))
            e_start = st.initial.get_potential_energy() - e0
            ax.annotate("", xy=(x[peak], e_ts), xytext=(x[peak], e_start),
                        arrowprops=dict(arrowstyle="<->", color=color, lw=1))
            ax.annotate(f"{st.barrier:.2f} eV", (x[peak], 0.5 * (e_ts + e_start)), xytext=(7, 0), ha="left",
                        textcoords="offset points", color=color, fontsize=8, va="center")
            ax.plot([x[0], x[peak]], [e_start, e_start], ":", color=color, lw=0.8)
        if k > 1:
            ax.axvline(offset, color="0.7", lw=0.8, ls="--")
        offset = x[-1]
    ax.set_xlabel("reaction path (Å, cumulative over the steps)")
    ax.set_ylabel("energy relative to the initial state (eV)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(file, dpi=130)
    return file


def _plain(atoms, **info):
    """A copy with a single-point calculator of its results, for writing."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    results = getattr(atoms.calc, "results", {}) or {}
    keep = {k: v for k, v in results.items() if k in ("energy", "forces", "free_energy")}
    if keep:
        frame.calc = SinglePointCalculator(frame, **keep)
    frame.info.update(info)
    for key in ("energy_uncertainty", "committee_energy", "energy_interval"):
        if key in results:
            value = results[key]
            frame.info[key] = float(value) if np.ndim(value) == 0 else np.asarray(value).tolist()
    for key in ("forces_uncertainty", "forces_interval"):
        if key in results:
            frame.info[f"max_{key}"] = float(np.max(results[key]))
    return frame


def refuse_existing(output: Path) -> None:
    """Refuse, before any work, an output folder that already holds files this command
    would write (nothing is overwritten)."""
    import re

    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder; choose another --output")
    pattern = re.compile(r"(minima\.extxyz|steps\.md|profile\.png|step\d+_(band|saddle)\.extxyz)$")
    clash = sorted(p.name for p in output.iterdir() if pattern.match(p.name))
    if clash:
        raise FileExistsError(f"{output} already holds {', '.join(clash)}; choose another --output (nothing is "
                              "overwritten)")


def write_reaction(path, output: Path, title: str, confidence: dict | None = None) -> list[Path]:
    """Write the path into ``output`` (the names of :func:`output_files`; the caller
    checks beforehand that none exists). Returns the files written."""
    output.mkdir(parents=True, exist_ok=True)
    e0 = path.minima[0].get_potential_energy()
    files = []
    minima = [_plain(m, minimum=k, relative_energy=float(m.get_potential_energy() - e0))
              for k, m in enumerate(path.minima)]
    write(output / "minima.extxyz", minima)
    files.append(output / "minima.extxyz")
    for k, st in enumerate(path.steps, start=1):
        band = [_plain(im, step=k, image=i, relative_energy=float(im.get_potential_energy() - e0))
                for i, im in enumerate(st.images)]
        if confidence is not None:  # every image says whether the committee trusts it
            for frame, im in zip(band, st.images):
                why = doubt(getattr(im.calc, "results", {}) or {}, confidence)
                frame.info["outside_confidence"] = why is not None
                if why:
                    frame.info["doubt"] = why
        write(output / f"step{k}_band.extxyz", band)
        files.append(output / f"step{k}_band.extxyz")
        if st.saddle is not None:
            frame = _plain(st.saddle.atoms, step=k, barrier=st.barrier, converged=st.saddle.converged,
                           imaginary_cm1=st.saddle.imaginary.tolist(), verified=st.verified)
            frame.arrays["mode"] = st.saddle.mode.copy()
            write(output / f"step{k}_saddle.extxyz", frame)
            files.append(output / f"step{k}_saddle.extxyz")
    (output / "steps.md").write_text(f"# {title}\n\n" + step_table(path, markdown=True, confidence=confidence) + "\n")
    files.append(output / "steps.md")
    files.append(plot_profile(path, output / "profile.png", title))
    return files


def summarise(path, output: Path, title: str, confidence: dict | None = None) -> list[Path]:
    """Print the minima, the steps' table, the wall time of each part, write the files
    and name them."""
    e0 = path.minima[0].get_potential_energy()
    print("minima (eV, relative to the initial state): "
          + ", ".join(f"{m.get_potential_energy() - e0:+.3f}" for m in path.minima))
    print(step_table(path, confidence=confidence))
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in path.seconds.items() if k != "total")
    print(f"wall time {path.seconds['total']:.0f} s ({parts})")
    files = write_reaction(path, output, title, confidence)
    print(f"files: {', '.join(str(f) for f in files)}")
    return files


def exit_code(path, confidence: dict | None, warn: bool = True) -> int:
    """The exit code of a command that analysed ``path``: 4 (with a warning on standard
    error unless not ``warn``) where a step passes outside the committee's ``confidence``,
    else 3 where a step is not verified, else 0."""
    doubtful = [k for k, st in enumerate(path.steps, start=1) if confidence and confidence_flags(st, confidence)]
    if doubtful and not warn:
        return 4
    if doubtful:
        print(f"WARNING: step(s) {', '.join(map(str, doubtful))} pass outside the model's confidence (force spread "
              f"above {confidence['forces_uncertainty']} eV/Å or energy spread above "
              f"{confidence['energy_uncertainty']} eV): the band may pass through configurations the model has not "
              "seen, and the barrier is not to be trusted. Label such frames with a reference method and fine-tune "
              "(nemp learn).", file=sys.stderr)
        return 4
    return 0 if all(st.verified for st in path.steps) else 3


def describe_step(initial, final) -> str:
    """A few words on what happens in a step: the bonds formed and broken between atoms
    that are not of the structure's most common element (the adsorbates on a slab), or,
    when none changes, which of those atoms moves most and how far."""
    from ase.data import covalent_radii

    symbols = np.array(initial.get_chemical_symbols())
    names, counts = np.unique(symbols, return_counts=True)
    majority = names[np.argmax(counts)] if len(names) > 1 else None
    mobile = [i for i in range(len(initial)) if symbols[i] != majority]

    def bonds(atoms):
        found = set()
        for n, i in enumerate(mobile):
            for j in mobile[n + 1:]:
                d = atoms.get_distance(i, j, mic=atoms.pbc.any())
                if d < 1.2 * (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]]):
                    found.add((i, j))
        return found

    def name(pair):
        return "-".join(f"{symbols[i]}{i}" for i in pair)

    before, after = bonds(initial), bonds(final)
    words = [f"{name(p)} bond forms" for p in sorted(after - before)]
    words += [f"{name(p)} bond breaks" for p in sorted(before - after)]
    if words:
        return ", ".join(words)
    if not mobile:
        return "the structure rearranges"
    d = displacement(initial, final)[mobile]
    far = mobile[int(np.argmax((d**2).sum(1)))]
    # the molecule (bonded fragment) the most mobile atom belongs to
    fragment, grow = {far}, True
    while grow:
        grow = False
        for i, j in before:
            if (i in fragment) != (j in fragment):
                fragment |= {i, j}
                grow = True
    shift = d[[mobile.index(i) for i in sorted(fragment)]].mean(0)
    formula = initial[sorted(fragment)].get_chemical_formula(mode="hill")
    return f"{formula} moves {np.linalg.norm(shift):.2f} Å (Δz {shift[2]:+.2f} Å), no bond between adsorbates changes"


def _reaction_job(job) -> dict:
    """One reaction of :func:`run_reactions` on a worker: its analysis, the table, and the
    bytes of the files :func:`write_reaction` writes (so that they reach the caller's disk
    from any machine)."""
    import tempfile

    from .calculator import CalculatorRecipe
    from .reaction import elementary_steps
    from .uncertainty import model_confidence

    maker, initial, final, settings, title = job
    if isinstance(maker, CalculatorRecipe):
        calc, factory = maker.build(), None
    else:
        factory, calc = maker, maker()
    path = elementary_steps(initial, final, calc, settings, calculator_factory=factory, progress=False)
    confidence = model_confidence(calc.model) if hasattr(calc, "model") else None
    with tempfile.TemporaryDirectory() as folder:
        files = write_reaction(path, Path(folder), title, confidence)
        data = {f.name: f.read_bytes() for f in files}
    steps = [{"barrier": st.barrier, "error_bar": st.error_bar[0], "reaction_energy": st.reaction_energy,
              "verified": st.verified, "flags": list(st.flags)} for st in path.steps]
    return {"title": title, "table": step_table(path, confidence=confidence), "steps": steps, "files": data,
            "code": exit_code(path, confidence, warn=False), "seconds": path.seconds["total"]}


def run_reactions(pairs, calculator, settings, output: Path, executor=None, progress: bool = True,
                  calculator_factory=None) -> list:
    """Analyse many reactions (:func:`ase_nemp.reaction.elementary_steps`), one job each on
    ``executor`` (:mod:`ase_nemp.jobs`; default: one after another in this process), and
    write each one's files into ``output/reaction-K`` (K from 1) as it finishes.

    ``pairs`` are (initial, final) structures; ``calculator`` an NEMPCalculator (its model
    travels to the workers), or pass ``calculator_factory``, a picklable callable that
    makes any other ASE calculator (a class, say). Returns one :class:`~ase_nemp.jobs.Outcome`
    per reaction, in order: ``value`` is a dict with the ``title``, the ``table``, each
    step's ``barrier``, ``error_bar``, ``reaction_energy``, ``verified`` and ``flags``, the
    exit ``code`` (:func:`exit_code`) and the wall ``seconds``; ``error`` where the
    reaction could not be analysed (e.g. both ends relax to the same minimum)."""
    from .jobs import run_jobs

    maker = calculator_factory if calculator_factory is not None else calculator.recipe()
    jobs = [(maker, a, b, settings, f"reaction {k}: {a.get_chemical_formula()}")
            for k, (a, b) in enumerate(pairs, start=1)]

    def save(outcome) -> None:
        if outcome.ok:
            folder = Path(output) / f"reaction-{outcome.index + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in outcome.value.pop("files").items():
                (folder / name).write_bytes(data)

    return run_jobs(_reaction_job, jobs, executor, retries=0, on_done=save, progress=progress,
                    desc=f"{len(jobs)} reactions")
