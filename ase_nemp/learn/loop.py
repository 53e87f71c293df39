"""The active-learning loop of ``nemp learn``.

Round k (1..rounds): **explore** with the current committee (every exploration of the
config), **select** the most uncertain frames above the threshold (a cap per round, no
near-duplicates), **label** them with the teacher and append them to the data set, then
**fine-tune** the committee on the enlarged set (each member from its own parameters).
A final exploration with the last committee reports where it stands, without labelling.

Files in ``output.dir``::

    state.json            where the run is (round, phase, teacher calls); resume reads it
    config.yaml           the resolved configuration
    data/train.extxyz     the training set: the start data's training split + labelled frames
    data/valid.extxyz     the validation set: the start data's split + every n-th labelled frame
    round-k/explore.json  what each exploration met (frames, largest uncertainty, NEB results)
    round-k/candidates.extxyz   the frames selected for the teacher, with the committee's prediction
    round-k/labelled.extxyz     the teacher's frames of round k, in the order they were labelled
    round-k/train/        the fine-tuning of the committee (nemp train output, one folder per member)
    committee.pt          the current committee
    learn_log.csv, learn_log.md, learning.png   the log, one row per round

Labelled frames carry ``info`` keys ``al_round``, ``al_source`` (the exploration and the
step it came from), ``al_teacher``, ``al_uncertainty`` (eV/Å, at selection) and
``config_type`` ``al_<kind>``. A round's frames go to the teacher all at once on its
scheduler (``teacher.scheduler``: in this process, local processes or a Dask cluster; a
frame whose call fails is tried once more, then listed under ``failures`` in state.json).
Every frame is written to disk as soon as the teacher has labelled it
(``round-k/labelled.extxyz``) and joins the data set in the order of the candidates, so
the data set does not depend on the scheduler and an interruption (Ctrl-C, SIGTERM) loses
no teacher call; ``--resume`` continues from the phase it was in (a half-finished
fine-tuning resumes from its checkpoint, a half-finished labelling labels only the rest).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from ..files import FolderLock, atomic_write
from ..io import load, save
from ..signals import deferred_stop
from ..train.config import RunConfig, TrainConfig
from .config import LearnConfig
from .explore import Interrupted, explore
from .select import select
from .teacher import check_teacher, label

__all__ = ["ActiveLearning", "LearningInterrupted", "learn"]


class LearningInterrupted(RuntimeError):
    """Raised after Ctrl-C / SIGTERM once everything labelled so far is on disk."""


class TeacherFailed(ValueError):
    """Every teacher call of a round failed: nothing new to learn from. The run stops in its
    labelling phase, so that ``--resume`` (with a corrected teacher section) labels the
    round's frames again."""


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=float)))


def _append_frame(path: Path, atoms) -> None:
    """Append one extxyz frame in a single write, flushed to disk before returning."""
    from ase.io import write

    buffer = io.StringIO()
    write(buffer, atoms, format="extxyz")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, buffer.getvalue().encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> list:
    from ase.io import read

    if not path.exists() or path.stat().st_size == 0:
        return []
    return read(path, index=":", format="extxyz")


def _label_here(teacher, stress: bool, job) -> Any:
    """The in-process labelling job: the teacher already loaded (and checked) here."""
    return label(job[0], teacher, stress=stress)


class ActiveLearning:
    """Run an active-learning loop from a :class:`LearnConfig` (see the module docstring)."""

    def __init__(self, config: LearnConfig, progress: bool = True, executor: Executor | None = None) -> None:
        self.cfg = config
        self.executor = executor  # for the teacher's labels, instead of teacher.scheduler
        self.progress = progress
        self.out = Path(config.output_dir)
        self.data_dir = self.out / "data"
        self._stop: int | None = None
        self._teacher = None
        self._frames: list | None = None  # data.train, once read

    # -- state ----------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.out / "state.json"

    def _save_state(self) -> None:
        _write_json(self._state_path(), self.state)

    def _setup(self, resume: bool) -> None:
        if resume:
            if not self._state_path().exists():
                raise FileNotFoundError(f"cannot resume: no active-learning run in {self.out} (no state.json)")
            self.state = json.loads(self._state_path().read_text())
            if self.state.get("config") != self.cfg.to_dict():
                changed = [k for k, v in self.cfg.to_dict().items() if self.state.get("config", {}).get(k) != v]
                allowed = {"rounds", "teacher"}  # a corrected teacher labels the frames still to label
                if set(changed) - allowed:
                    raise ValueError(f"cannot resume: section(s) {sorted(set(changed) - allowed)} of the config changed "
                                     f"since the run started (only {sorted(allowed)} may change)")
                self.state["config"] = self.cfg.to_dict()
            return
        if self._state_path().exists():
            raise FileExistsError(f"{self.out} already holds an active-learning run; use --resume to continue it "
                                  "or pick another output.dir")
        self._refuse_foreign_files()
        start = load(self.cfg.start)
        if not start.is_committee:
            raise ValueError(f"start {self.cfg.start} holds a single model; active learning needs a committee "
                             "(train one with training.committee: N)")
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        train, valid = self._initial_split()
        from ase.io import write

        write(self.data_dir / "train.extxyz", train, format="extxyz")
        write(self.data_dir / "valid.extxyz", valid, format="extxyz")
        shutil.copyfile(self.cfg.start, self.out / "committee.pt")
        import yaml

        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self.state = {"round": 1, "phase": "explore", "teacher_calls": 0, "teacher_failures": 0,
                      "committee_size": start.size, "log": [], "config": self.cfg.to_dict()}
        self.state["log"].append(self._row(0, {"train_size": len(train), "valid_size": len(valid)}))
        self._save_state()
        self._write_log()

    def _refuse_foreign_files(self) -> None:
        """A fresh run writes config.yaml, data/, committee.pt, the logs and round folders into
        output.dir: refuse a folder where any of them already exists (the user's own files,
        or the start committee or data themselves), before anything is written."""
        if not self.out.exists():
            return
        ours = ["config.yaml", "committee.pt", "learn_log.csv", "learn_log.md", "learning.png", "data"]
        clash = sorted(name for name in ours if (self.out / name).exists())
        clash += sorted(p.name for p in self.out.glob("round-*"))
        inputs = [self.cfg.start, self.cfg.monitor, self.cfg.data.isolated_atoms]
        for files in (self.cfg.data.train, self.cfg.data.valid):
            inputs += list(files) if isinstance(files, (list, tuple)) else [files]
        inside = sorted(str(p) for p in inputs if p and Path(p).resolve().parent == self.out.resolve())
        if clash or inside:
            what = (f"it already holds {', '.join(clash)}" if clash else "") + \
                   ("; " if clash and inside else "") + (f"the run's own inputs live there ({', '.join(inside)})"
                                                         if inside else "")
            raise FileExistsError(f"output.dir {self.out} is not free for a new run: {what}. Pick an empty or new "
                                  "folder (nothing is overwritten)")

    def _probe_teacher(self) -> None:
        """Check the teacher on the smallest structure of the data before any exploration."""
        if self._teacher is not None:
            return
        probe = min(self._start_frames(), key=len).copy()
        probe.calc = None
        self._teacher = check_teacher(self.cfg.teacher.calculator, self.cfg.teacher.kwargs, probe,
                                      stress=self.cfg.teacher.stress)

    def _start_frames(self) -> list:
        """The structures of ``data.train``, read once."""
        if self._frames is None:
            from ..files import read_structures

            self._frames = read_structures(self.cfg.data.train)
        return self._frames

    def _initial_split(self):
        from ..files import read_structures
        from ..train.data import split_indices

        d = self.cfg.data
        frames = self._start_frames()
        if d.valid:
            return frames, read_structures(d.valid)
        seed = int(self.cfg.finetune.get("seed", TrainConfig.seed))
        train_idx, valid_idx = split_indices(len(frames), d.valid_fraction, seed)
        if len(train_idx) == 0 or len(valid_idx) == 0:
            raise ValueError(f"data.valid_fraction {d.valid_fraction} leaves {len(train_idx)} training and "
                             f"{len(valid_idx)} validation structures; both must be non-empty")
        return [frames[k] for k in train_idx], [frames[k] for k in valid_idx]

    # -- the loop -----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> list[dict]:
        """Run (or continue) the loop; returns the log rows."""
        if not resume or self._state_path().exists() and json.loads(self._state_path().read_text()).get(
                "phase") in ("explore", "label"):
            self._probe_teacher()  # before the exploration: a broken teacher costs seconds, not a round
        self._setup(resume)
        with deferred_stop(self._set_stop):
            while self.state["phase"] != "done":
                k, phase = self.state["round"], self.state["phase"]
                final = k > self.cfg.rounds
                if phase == "explore":
                    self._explore(k, final)
                elif phase == "label":
                    self._label(k)
                elif phase == "train":
                    self._train(k)
                self._write_log()
        return self.state["log"]

    def _committee_factory(self):
        from ..calculator import NEMPCalculator

        committee = load(self.out / "committee.pt")
        template = NEMPCalculator(committee, dtype=self.cfg.dtype)
        return lambda: NEMPCalculator(template.model, dtype=self.cfg.dtype)

    def _round_dir(self, k: int) -> Path:
        path = self.out / f"round-{k}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _explore(self, k: int, final: bool) -> None:
        from tqdm.auto import tqdm

        sel = self.cfg.select
        factory = self._committee_factory()
        reports = []
        bar = tqdm(self.cfg.explore, desc=f"round {k}: explore" if not final else "final check", leave=False,
                   disable=not self.progress)
        t0 = time.perf_counter()
        for exploration in bar:
            bar.set_postfix(now=exploration.name)
            try:
                reports.append(explore(exploration, factory, sel.threshold, sel.stop_above,
                                       should_stop=lambda: self._stop is not None, progress=self.progress,
                                       round=k))
            except Interrupted:
                raise LearningInterrupted(self._interrupt_message("exploring (it restarts from the beginning of "
                                                                  f"round {k}'s exploration)")) from None
        bar.close()
        candidates = [c for r in reports for c in r.candidates]
        existing = [a for a in _read(self.data_dir / "train.extxyz") + _read(self.data_dir / "valid.extxyz")
                    if "al_round" in a.info]
        chosen = [] if final else select(candidates, sel.max_per_round, sel.min_distance, existing)
        rd = self._round_dir(k)
        summary = {"explorations": [r.summary() for r in reports], "candidates": len(candidates),
                   "selected": len(chosen), "seconds": time.perf_counter() - t0}
        _write_json(rd / "explore.json", summary)
        self._write_candidates(rd / "candidates.extxyz", chosen)
        self.state["explore"] = {"round": k, "frames": sum(r.frames for r in reports), "candidates": len(candidates),
                                 "selected": len(chosen), "seconds": summary["seconds"],
                                 "max_uncertainty": {r.name: r.max_uncertainty for r in reports},
                                 "neb": {name: v for r in reports for name, v in r.details.items()}}
        if self.progress:
            top = max((r.max_uncertainty for r in reports), default=0.0)
            tqdm.write(f"round {k}: {summary['candidates']} frames above {sel.threshold} eV/Å among "
                       f"{self.state['explore']['frames']} explored (largest {top:.3f} eV/Å); {len(chosen)} selected")
        if final or not chosen:
            self.state["log"].append(self._row(k, {"labelled": 0, "note": "final check" if final else
                                                   "nothing above the threshold: converged"}))
            self.state["phase"] = "done"
        else:
            self.state["phase"] = "label"
        self._save_state()

    def _write_candidates(self, path: Path, chosen: list) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        frames = []
        for n, cand in enumerate(chosen):
            atoms = cand.atoms.copy()
            atoms.info.update(al_candidate=n, al_source=cand.source, al_uncertainty=cand.uncertainty,
                              al_energy_uncertainty=cand.energy_uncertainty)
            atoms.calc = SinglePointCalculator(atoms, energy=cand.energy, forces=cand.forces)  # the committee's
            frames.append(atoms)
        atomic_write(path, lambda tmp: write(tmp, frames, format="extxyz") if frames else Path(tmp).write_text(""))

    def _valid_every(self) -> int:
        fraction = self.cfg.data.valid_fraction
        return max(int(round(1.0 / fraction)), 2) if fraction > 0 else 0

    def _label(self, k: int) -> None:
        """Label round k's candidates, all at once on the teacher's scheduler. Each frame is
        saved as soon as it is labelled (round-k/labelled.extxyz, in the order they finish)
        and joins the data set in the candidates' order, whatever the scheduler, as soon as
        every candidate before it is labelled or has failed: the data set is the serial
        run's. A resume labels only what is in neither file."""
        from functools import partial

        from ..jobs import InProcess, open_executor, run_jobs
        from .teacher import label_on_worker

        rd = self._round_dir(k)
        candidates = _read(rd / "candidates.extxyz")
        numbers = [int(c.info["al_candidate"]) for c in candidates]
        in_data = {int(a.info["al_candidate"]) for a in _read(self.data_dir / "train.extxyz")
                   + _read(self.data_dir / "valid.extxyz") if a.info.get("al_round") == k}
        staged = {int(a.info["al_candidate"]): a for a in _read(rd / "labelled.extxyz")}
        todo = [c for c, n in zip(candidates, numbers) if n not in in_data and n not in staged]
        self._probe_teacher()
        every = self._valid_every()
        teacher = self.cfg.teacher
        failed: set[int] = set()

        def flush() -> None:
            """Move the labelled frames whose predecessors are all settled into the data set."""
            for n in numbers:
                if n in staged and n not in in_data:
                    target = "valid" if every and n % every == every - 1 else "train"
                    _append_frame(self.data_dir / f"{target}.extxyz", staged[n])
                    in_data.add(n)
                elif n not in in_data and n not in failed:
                    return

        def done(outcome) -> None:
            cand = todo[outcome.index]
            n = int(cand.info["al_candidate"])
            self.state["teacher_calls"] += outcome.attempts
            self.state["teacher_seconds"] = self.state.get("teacher_seconds", 0.0) + outcome.seconds
            if not outcome.ok:  # a teacher may fail on a configuration: record it and go on
                failed.add(n)
                self.state["teacher_failures"] += 1
                self.state.setdefault("failures", []).append(
                    {"round": k, "candidate": n, "attempts": outcome.attempts, "error": str(outcome.error)[:300]})
            else:
                frame = outcome.value
                kind = str(cand.info["al_source"]).split(":")[0].rstrip("0123456789")
                frame.info = {"al_round": k, "al_candidate": n, "al_source": cand.info["al_source"],
                              "al_teacher": teacher.calculator.rpartition(":")[2],
                              "al_uncertainty": float(cand.info["al_uncertainty"]),
                              "al_teacher_seconds": round(outcome.seconds, 3), "config_type": f"al_{kind}"}
                _append_frame(rd / "labelled.extxyz", frame)
                staged[n] = frame
            flush()
            self._save_state()

        t0 = time.perf_counter()
        with open_executor(self.executor or teacher.scheduler) as executor:
            if isinstance(executor, InProcess):  # the teacher loaded and checked in this process
                fn = partial(_label_here, self._teacher, teacher.stress)
            else:
                fn = partial(label_on_worker, teacher.calculator, teacher.kwargs, teacher.stress)
            jobs = [(c.copy(), str((rd / "teacher" / f"frame-{c.info['al_candidate']}").resolve())) for c in todo]
            outcomes = run_jobs(fn, jobs, executor, retries=1, on_done=done, progress=self.progress,
                                desc=f"round {k}: teacher", stop=lambda: self._stop is not None)
        self.state["label_seconds"] = self.state.get("label_seconds", 0.0) + time.perf_counter() - t0
        flush()
        self._save_state()
        if len(outcomes) < len(todo):
            raise LearningInterrupted(self._interrupt_message(
                f"labelling ({len(in_data | set(staged))} of {len(candidates)} frames of round {k} are on disk)"))
        failed_now = len(failed)
        if failed_now and not (in_data or staged):
            errors = sorted({f["error"] for f in self.state["failures"] if f["round"] == k})
            raise TeacherFailed(f"the teacher failed on all {failed_now} frames of round {k} (e.g. {errors[0]}); "
                                "nothing was fine-tuned. Fix the teacher section and continue with --resume")
        if failed_now:
            import sys

            print(f"nemp learn: the teacher failed on {failed_now} of {len(candidates)} frames of round {k}, "
                  "each tried twice (listed under 'failures' in state.json); going on with the others",
                  file=sys.stderr)
        self.state["phase"] = "train"
        self._save_state()

    def _train(self, k: int) -> None:
        from ..train.committee import train_committee
        from ..train.trainer import TrainingInterrupted

        rd = self._round_dir(k)
        d = self.cfg.data
        raw = {
            "data": {"train": str(self.data_dir / "train.extxyz"), "valid": str(self.data_dir / "valid.extxyz"),
                     "isolated_atoms": d.isolated_atoms, "energy_key": d.energy_key, "forces_key": d.forces_key,
                     "stress_key": d.stress_key},
            "training": {**self.cfg.finetune, "committee": self.state["committee_size"]},
            "output": {"dir": str(rd / "train")},
        }
        if raw["data"]["isolated_atoms"] is None:
            del raw["data"]["isolated_atoms"]
        start = rd / "start.pt"  # the committee this round starts from, fixed before its training begins
        if not start.exists():
            atomic_write(start, lambda tmp: shutil.copyfile(self.out / "committee.pt", tmp))
        raw["training"]["init_from"] = str(start)
        run = RunConfig.from_dict(raw)
        t0 = time.perf_counter()
        try:
            result = train_committee(run, resume=(rd / "train").exists(), progress=self.progress)
        except TrainingInterrupted as err:
            raise LearningInterrupted(self._interrupt_message(f"fine-tuning round {k} ({err})")) from None
        finally:
            self.state["train_seconds"] = self.state.get("train_seconds", 0.0) + time.perf_counter() - t0
        committee = load(result.best_path)
        # the force spread the loop labelled above is the committee's confidence level
        save(committee, self.out / "committee.pt", **committee.metadata,
             confidence={"forces_uncertainty": self.cfg.select.threshold},
             active_learning={"round": k, "teacher_calls": self.state["teacher_calls"],
                              "teacher": self.cfg.teacher.calculator.rpartition(":")[2],
                              "teacher_seconds": round(self.state.get("teacher_seconds", 0.0), 1)})
        self.state["log"].append(self._row(k, {"valid": result.summary["valid"]["all"],
                                               "calibration": result.summary["calibration"]}))
        self.state["round"] = k + 1
        self.state["phase"] = "explore"
        self._save_state()

    # -- the log ------------------------------------------------------------------------------
    def _row(self, k: int, extra: dict) -> dict:
        """One log row: exploration figures of round k, the teacher's verdict on its frames,
        the data sizes and the monitor's errors for the committee now in committee.pt."""
        row: dict[str, Any] = {"round": k, "teacher_calls": self.state["teacher_calls"],
                               "teacher_seconds": round(self.state.get("teacher_seconds", 0.0), 1),
                               "teacher_failures": self.state.get("teacher_failures", 0),
                               "train_seconds": round(self.state.get("train_seconds", 0.0), 1)}
        ex = self.state.get("explore") if k > 0 else None
        if ex and ex.get("round") == k:
            row.update(explored_frames=ex["frames"], above_threshold=ex["candidates"], selected=ex["selected"],
                       max_uncertainty=max(ex["max_uncertainty"].values(), default=0.0),
                       max_uncertainty_by_exploration=ex["max_uncertainty"], neb=ex["neb"],
                       explore_seconds=round(ex["seconds"], 1))
        if k > 0:
            new = self._new_frame_errors(k)
            row.update(new)
        train, valid = _read(self.data_dir / "train.extxyz"), _read(self.data_dir / "valid.extxyz")
        row.update(train_size=len(train), valid_size=len(valid))
        if self.cfg.monitor:
            from ..train.evaluate import evaluate

            summary = evaluate(self.out / "committee.pt", self.cfg.monitor)["all"]
            row.update(monitor_e_rmse_atom=summary["e_rmse_atom"], monitor_f_rmse=summary["f_rmse"])
        row.update(extra)
        return row

    def _new_frame_errors(self, k: int) -> dict:
        """The committee's error against the teacher on round k's labelled frames, as
        predicted when they were selected (eV/atom and eV/Å)."""
        candidates = {int(a.info["al_candidate"]): a for a in _read(self._round_dir(k) / "candidates.extxyz")}
        labelled = [a for a in _read(self.data_dir / "train.extxyz") + _read(self.data_dir / "valid.extxyz")
                    if a.info.get("al_round") == k]
        if not labelled:
            return {"labelled": 0}
        de, df = [], []
        for a in labelled:
            c = candidates[int(a.info["al_candidate"])]
            de.append((c.get_potential_energy() - a.get_potential_energy()) / len(a))
            df.append((c.get_forces(apply_constraint=False) - a.get_forces(apply_constraint=False)).ravel())
        return {"labelled": len(labelled), "new_e_rmse_atom": float(np.sqrt(np.mean(np.square(de)))),
                "new_f_rmse": float(np.sqrt(np.mean(np.square(np.concatenate(df)))))}

    def _write_log(self) -> None:
        rows = self.state["log"]
        if not rows:
            return
        columns = ["round", "teacher_calls", "teacher_seconds", "teacher_failures", "labelled", "explored_frames",
                   "above_threshold", "max_uncertainty", "new_e_rmse_atom", "new_f_rmse", "monitor_e_rmse_atom",
                   "monitor_f_rmse", "train_size", "valid_size", "explore_seconds", "train_seconds"]

        def fmt(v):
            return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: fmt(row.get(c)) for c in columns})
        atomic_write(self.out / "learn_log.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
        atomic_write(self.out / "learn_log.md", lambda tmp: Path(tmp).write_text(format_log(rows)))
        from .plots import learning_plot

        learning_plot(rows, self.out / "learning.png", threshold=self.cfg.select.threshold)

    # -- signals ------------------------------------------------------------------------------
    def _interrupt_message(self, where: str) -> str:
        return (f"stopped by signal {self._stop} while {where}; {self.state['teacher_calls']} teacher calls so far, "
                f"all labelled frames are in {self.data_dir}")

    def _set_stop(self, signum: int) -> None:
        self._stop = signum


def format_log(rows: list[dict]) -> str:
    """Markdown table of the log (meV units)."""

    def mev(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{1e3 * v:.1f}"

    lines = ["| round | teacher calls (s) | labelled | explored frames | above threshold | largest force uncertainty "
             "(eV/Å) | committee error on the new frames: E (meV/atom) / F (meV/Å) | monitor after the round: "
             "E (meV/atom) / F (meV/Å) | training / validation frames |", "|---" * 9 + "|"]
    for r in rows:
        unc = r.get("max_uncertainty")
        new = f"{mev(r.get('new_e_rmse_atom'))} / {mev(r.get('new_f_rmse'))}" if r.get("new_f_rmse") is not None else ""
        mon = (f"{mev(r.get('monitor_e_rmse_atom'))} / {mev(r.get('monitor_f_rmse'))}"
               if r.get("monitor_f_rmse") is not None else "")
        note = f" ({r['note']})" if r.get("note") else ""
        cost = f" ({r['teacher_seconds']:.0f})" if r.get("teacher_seconds") is not None else ""
        lines.append(f"| {r['round']}{note} | {r.get('teacher_calls', '')}{cost} | {r.get('labelled', '')} "
                     f"| {r.get('explored_frames', '')} | {r.get('above_threshold', '')} "
                     f"| {'' if unc is None else f'{unc:.3f}'} | {new} | {mon} "
                     f"| {r.get('train_size', '')} / {r.get('valid_size', '')} |")
    return "\n".join(lines) + "\n"


def learn(config: LearnConfig | str | os.PathLike, resume: bool = False, progress: bool = True,
          scheduler: Any = None) -> list[dict]:
    """Run ``nemp learn`` from Python: a :class:`LearnConfig` or the path of its YAML file.
    ``scheduler`` (if given) replaces ``teacher.scheduler``: where the teacher's labels are
    computed (:func:`ase_nemp.jobs.open_executor`; an Executor object is used as it is).
    The output folder is locked against a second run meanwhile."""
    cfg = config if isinstance(config, LearnConfig) else LearnConfig.from_yaml(config)
    executor = None
    if isinstance(scheduler, Executor):
        executor = scheduler
    elif scheduler is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, scheduler=str(scheduler)))
    lock = FolderLock(cfg.output_dir)
    try:
        return ActiveLearning(cfg, progress=progress, executor=executor).run(resume=resume)
    finally:
        lock.release()
