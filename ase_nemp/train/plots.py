"""Learning-curve and parity plots (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: list[dict], path: str | Path) -> Path:
    """Losses, validation errors and learning rate against epoch."""
    plt = _pyplot()
    epoch = np.array([r["epoch"] for r in history])
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    ax_l.semilogy(epoch, [r["train_loss"] for r in history], label="train loss")
    ax_l.semilogy(epoch, [r["val_loss"] ** 2 for r in history], label="validation loss")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("weighted loss per structure")
    lr_ax = ax_l.twinx()
    lr_ax.semilogy(epoch, [r["lr"] for r in history], color="0.6", ls="--", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    ax_l.legend(loc="upper right", fontsize=8)
    ax_e.semilogy(epoch, [1e3 * r["val_e_rmse_atom"] for r in history], label="energy RMSE (meV/atom)")
    ax_e.semilogy(epoch, [1e3 * r["val_f_rmse"] for r in history], label="force RMSE (meV/Å)")
    ax_e.set_xlabel("epoch")
    ax_e.set_title("validation (EMA parameters)")
    ax_e.legend(fontsize=8)
    for ax in (ax_l, ax_e):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parity_plot(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Energy per atom and force-component parity plots."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, key, unit, name in ((axes[0], "energy_per_atom", "eV/atom", "energy"), (axes[1], "forces", "eV/Å", "forces")):
        x, y = np.asarray(ref[key]).ravel(), np.asarray(pred[key]).ravel()
        ax.scatter(x, y, s=3, alpha=0.4)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((y - x) ** 2)))
        ax.set_xlabel(f"reference {name} ({unit})")
        ax.set_ylabel(f"NEMP {name} ({unit})")
        ax.set_title(f"{name}: RMSE {1e3 * rmse:.2f} m{unit}")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
