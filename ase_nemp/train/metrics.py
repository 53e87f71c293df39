"""The record of a training run: one row per epoch in the history (kept in the checkpoint's
state), ``metrics.csv`` and the learning curve."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..files import atomic_write

__all__ = ["MetricsLog"]


class MetricsLog:
    """Rows of a run's ``history`` (a list kept in the trainer's state) and their files in
    ``out``; ``write`` is false in the processes of a multi-process run that do not write."""

    def __init__(self, out: Path, history: list[dict], write: bool = True) -> None:
        self.out, self.history, self.write = out, history, write
        self._rows_written = 0  # rows of metrics.csv written by this process since set-up

    def record(self, epoch: int, lr: float, force_weight: float, train_loss: float, val_loss: float, metrics: dict,
               elapsed: float) -> dict:
        """Append an epoch's row to the history and metrics.csv; the validation columns are
        NaN for an epoch without validation (``valid_every``)."""
        def val(key):
            return metrics.get(key, math.nan)

        row = {"epoch": epoch, "lr": lr, "force_weight": force_weight, "train_loss": train_loss,
               "val_loss": val_loss, "val_e_rmse_atom": val("e_rmse_atom"), "val_e_rmse": val("e_rmse"),
               "val_f_rmse": val("f_rmse"), "val_f_mae": val("f_mae"), "elapsed_s": elapsed}
        self.history.append(row)
        if self.write:
            self._write_csv()
        return row

    @staticmethod
    def line(row: dict, improved: bool) -> str:
        """One validated epoch in words, for the progress display (``*``: a new best)."""
        return (f"epoch {row['epoch']:4d}  lr {row['lr']:.2e}  w_F {row['force_weight']:.3g}  "
                f"train {row['train_loss']:.4g}  val {row['val_loss']:.4g}  E {1e3 * row['val_e_rmse_atom']:.3f} "
                f"meV/atom  F {1e3 * row['val_f_rmse']:.2f} meV/Å{'  *' if improved else ''}")

    def _write_csv(self) -> None:
        """Write metrics.csv from the history: whole at the first call after set-up (so a
        resumed run never duplicates rows), then by appending the new rows (rewriting a
        file of thousands of rows at every short epoch would cost a percent of the run)."""
        history = self.history
        if not history:
            return
        path = self.out / "metrics.csv"

        def write_rows(fh, rows, header):
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            if header:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})

        if 0 < self._rows_written <= len(history) and path.exists():
            with open(path, "a", newline="") as fh:
                write_rows(fh, history[self._rows_written :], header=False)
        else:
            def write(tmp):
                with open(tmp, "w", newline="") as fh:
                    write_rows(fh, history, header=True)

            atomic_write(path, write)
        self._rows_written = len(history)

    def plot(self) -> Path | None:
        """``learning_curve.png`` from the history."""
        if not self.history or not self.write:
            return None
        from .plots import learning_curve

        return learning_curve(self.history, self.out / "learning_curve.png")
