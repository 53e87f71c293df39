"""Learning-curve, parity and calibration plots (PNG files).

Figures are made with ``matplotlib.figure.Figure`` directly, never through pyplot, so
that writing a plot does not change the matplotlib backend of the calling program (a
notebook keeps its inline backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plotting import figure


def learning_curve(history: list[dict], path: str | Path) -> Path:
    """Losses, validation errors and learning rate against epoch (the validation curves
    join the validated epochs only)."""
    epoch = np.array([r["epoch"] for r in history])
    checked = [r for r in history if np.isfinite(r["val_loss"])]
    val_epoch = np.array([r["epoch"] for r in checked])
    fig, (ax_l, ax_e) = figure(1, 2, figsize=(11, 4))
    ax_l.semilogy(epoch, [r["train_loss"] for r in history], label="train loss")
    ax_l.semilogy(val_epoch, [r["val_loss"] ** 2 for r in checked], label="validation loss")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("weighted loss per structure")
    lr_ax = ax_l.twinx()
    lr_ax.semilogy(epoch, [r["lr"] for r in history], color="0.6", ls="--", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    ax_l.legend(loc="upper right", fontsize=8)
    ax_e.semilogy(val_epoch, [1e3 * r["val_e_rmse_atom"] for r in checked], label="energy RMSE (meV/atom)")
    ax_e.semilogy(val_epoch, [1e3 * r["val_f_rmse"] for r in checked], label="force RMSE (meV/Å)")
    ax_e.set_xlabel("epoch")
    ax_e.set_title("validation (EMA parameters)")
    ax_e.legend(fontsize=8)
    for ax in (ax_l, ax_e):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def parity_plot(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Energy per atom and force-component parity plots."""
    fig, axes = figure(1, 2, figsize=(10, 4.5))
    for ax, key, unit, name in ((axes[0], "energy_per_atom", "eV/atom", "energy"), (axes[1], "forces", "eV/Å", "forces")):
        x, y = np.asarray(ref[key]).ravel(), np.asarray(pred[key]).ravel()
        ax.scatter(x, y, s=3, alpha=0.4)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((y - x) ** 2)))
        ax.set_xlabel(f"reference {name} ({unit})")
        ax.set_ylabel(f"model {name} ({unit})")
        ax.set_title(f"{name}: RMSE {1e3 * rmse:.2f} m{unit}")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def calibration_plot(pred: dict, ref: dict, path: str | Path, title: str = "") -> Path:
    """A committee's uncertainty against its true error, per structure (log-log).

    Left: energy (eV); right: forces, the RMS over each structure's atoms (large dots) and
    every atom (small dots), eV/Å. The dashed line is error = uncertainty; the titles give
    the Spearman rank correlations (``ase_nemp.train.evaluate.calibration``).
    """
    from .evaluate import calibration, calibration_data

    data, cal = calibration_data(pred, ref), calibration(pred, ref)
    fig, (ax_e, ax_f) = figure(1, 2, figsize=(10, 4.5))
    floor = 1e-6
    panels = (
        (ax_e, "energy", "eV", [(data["energy_uncertainty"], data["energy_error"], 8, 0.6)], cal["energy_spearman"]),
        (ax_f, "forces", "eV/Å", [(data["forces_atom_uncertainty"], data["forces_atom_error"], 2, 0.15),
                                  (data["forces_uncertainty"], data["forces_error"], 8, 0.7)], cal["forces_spearman"]),
    )
    for ax, name, unit, series, rho in panels:
        values = []
        for x, y, size, alpha in series:
            x, y = np.maximum(x, floor), np.maximum(y, floor)
            ax.scatter(x, y, s=size, alpha=alpha)
            values += [x, y]
        both = np.concatenate(values)
        lo, hi = float(both.min()), float(both.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="error = uncertainty")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"committee uncertainty ({unit})")
        ax.set_ylabel(f"true error ({unit})")
        ax.set_title(f"{name}: Spearman {rho:.2f}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def reliability_plot(observed: dict, path: str | Path, title: str = "", samples: dict | None = None) -> Path:
    """Observed coverage of calibrated intervals against their nominal level.

    ``observed``: ``{label: {level: fraction inside}}`` (:func:`ase_nemp.uncertainty.coverage`
    of each property and data set, e.g. ``"energy, monitor set"``); ``samples``: how many
    errors each label counts. A calibrated model lies on the diagonal; the shaded band is
    the 80-95 % acceptance at the 90 % level.
    """
    fig, ax = figure(1, 1, figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="observed = nominal")
    ax.fill_between([0.88, 0.92], 0.80, 0.95, color="tab:green", alpha=0.15, label="90 %: 80-95 % accepted")
    for label, table in observed.items():
        levels = sorted(table)
        n = f" (n={samples[label]})" if samples and label in samples else ""
        ax.plot(levels, [table[x] for x in levels], "o-", ms=3, label=f"{label}{n}")
    ax.set_xlabel("nominal level of the interval")
    ax.set_ylabel("fraction of true errors inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
