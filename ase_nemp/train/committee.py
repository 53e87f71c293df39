"""``nemp train`` as a whole: one model, or a committee of members trained one after another
and saved as one file, then the test set when there is one."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..files import FolderLock
from ..io import load
from ..model import Committee
from .config import RunConfig
from .data import LabelKeys
from .distributed import ProcessGroup, is_main_process
from .setup import check_fresh_folder, data_names
from .trainer import Trainer

__all__ = ["train", "train_committee", "CommitteeRun"]


def train(run: RunConfig, resume: bool = False, progress: bool = True) -> "Trainer | CommitteeRun":
    """Set up and run a training; returns the trainer (``trainer.out`` holds the files).

    With ``training.committee`` > 1 the members are trained one after another and saved
    as one committee file (:func:`train_committee`). With ``data.test`` set, the best
    model is evaluated on it at the end: the table goes to ``test_metrics.md`` and the
    numbers to ``test_metrics.json``.
    """
    if run.training.committee > 1:
        result = train_committee(run, resume=resume, progress=progress)
    else:
        result = Trainer(run, progress=progress)
        result.setup(resume=resume)
        result.fit()
    if run.data.test and is_main_process() and (result.out / "best.pt").exists():
        _write_test_metrics(run, result.out, progress)
    return result


def _write_test_metrics(run: RunConfig, out: Path, progress: bool) -> None:
    import json

    from .evaluate import format_table, predictions
    from .plots import parity_plot

    keys = LabelKeys(run.data.energy_key, run.data.forces_key, run.data.stress_key)
    stats, pred, ref = predictions(out / "best.pt", run.data.test, keys, device=run.training.device)
    summary = stats.summary()
    (out / "test_metrics.json").write_text(json.dumps(summary, indent=1))
    table = format_table(summary)
    (out / "test_metrics.md").write_text(table + "\n")
    parity_plot(pred, ref, out / "test_parity.png", title=os.path.basename(run.data.test))
    if progress:
        print(f"\ntest set {run.data.test}:\n{table}")


class CommitteeRun:
    """The outcome of :func:`train_committee`: member trainers and the committee file.

    Attributes
    ----------
    out : Path
        ``output.dir``; ``out / "best.pt"`` is the committee file.
    members : list of Trainer
    summary : dict
        Validation errors of the committee mean and the calibration of its spread
        (:func:`ase_nemp.train.evaluate.calibration`).
    """

    def __init__(self, out: Path, members: list[Trainer], summary: dict) -> None:
        self.out, self.members, self.summary = out, members, summary

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def train_committee(run: RunConfig, resume: bool = False, progress: bool = True) -> CommitteeRun:
    """Train ``training.committee`` members one after another and save them as one file.

    Member k runs in ``output.dir/member-k`` (its own checkpoint, metrics and best model)
    with seed ``training.seed + k`` for its initial parameters and data order; all share
    one train/validation split and one set of neighbour lists. ``resume`` continues the
    member that was interrupted and skips the finished ones. At the end the members'
    best models form ``output.dir/best.pt``; its metadata and ``committee.md`` hold the
    committee's validation errors and the calibration of its spread (rank correlation of
    uncertainty and error), ``calibration.png`` the plot. The output folder is locked
    against other runs meanwhile.
    """
    lock = FolderLock(run.output_dir) if is_main_process() else None
    try:
        return _train_committee(run, resume, progress)
    finally:
        if lock is not None:
            lock.release()


def _train_committee(run: RunConfig, resume: bool, progress: bool) -> CommitteeRun:
    from tqdm.auto import tqdm

    from .evaluate import calibration, format_calibration, format_table, predictions
    from .plots import calibration_plot

    out = Path(run.output_dir)
    size = run.training.committee
    group = ProcessGroup(run.training.device)
    progress = progress and group.main
    refusal = None
    if not resume and group.main:
        try:
            check_fresh_folder(out)
        except FileExistsError as err:
            refusal = err
    group.agree(refusal)
    data = None
    trainers = []
    for k in range(size):
        trainer = Trainer(run, progress=progress, member=k)
        member_resume = resume and (trainer.out / "checkpoint.pt").exists()
        if progress:
            tqdm.write(f"committee member {k + 1} of {size} ({trainer.out})")
        trainer.setup(resume=member_resume, data=data)
        data = (trainer.train_set, trainer.valid_set, tuple(trainer.model.config.species))
        trainer.fit()  # a finished member resumed with the same budget runs no further epoch
        if not (trainer.out / "best.pt").exists():
            raise RuntimeError(f"committee member {k} finished without a best model (no completed epoch); "
                               "give it more epochs or time")
        trainers.append(trainer)
        trainer.model = trainer.ema = None  # the member's files hold it; free the memory
    if not group.main:  # the first process assembles and evaluates the committee
        return CommitteeRun(out, trainers, {})
    committee = Committee([load(t.out / "best.pt", dtype=torch.float64) for t in trainers])
    valid = trainers[0].valid_set
    stats, pred, ref = predictions(committee, valid)
    summary = {"valid": stats.summary(), "calibration": calibration(pred, ref)}
    metadata = {
        "committee_seeds": [t.seed for t in trainers], "train_data": data_names(run.data.train),
        "num_train": len(trainers[0].train_set), "num_valid": len(valid),
        "valid_e_rmse_per_atom_eV": summary["valid"]["all"]["e_rmse_atom"],
        "valid_f_rmse_eV_per_A": summary["valid"]["all"]["f_rmse"], "calibration": summary["calibration"],
        "member_best_epochs": [t.state["best_epoch"] for t in trainers],
    }
    from ..io import save as save_model

    save_model(committee, out / "best.pt", **metadata)
    calibration_plot(pred, ref, out / "calibration.png", title=f"committee of {size}, validation set")
    text = (f"# Committee of {size}: validation ({len(valid)} structures)\n\nErrors of the committee mean:\n\n"
            f"{format_table(summary['valid'])}\n\nUncertainty against true error:\n\n"
            f"{format_calibration(summary['calibration'])}\n")
    (out / "committee.md").write_text(text)
    if progress:
        print(text)
    return CommitteeRun(out, trainers, summary)
