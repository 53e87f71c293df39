"""The per-round plot of ``nemp learn`` (``learning.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plotting import figure


def learning_plot(rows: list[dict], path: str | Path, threshold: float | None = None) -> Path:
    """Three panels against the round: teacher calls (cumulative) and frames labelled;
    the committee's error on each round's new frames (before fine-tuning) and on the
    monitor set (after); the largest force uncertainty met by each exploration."""
    fig, (ax_t, ax_e, ax_u) = figure(1, 3, figsize=(14, 4))
    rounds = np.array([r["round"] for r in rows])
    ax_t.bar(rounds, [r.get("labelled", 0) or 0 for r in rows], color="0.7", label="labelled this round")
    ax_t.plot(rounds, [r.get("teacher_calls", 0) for r in rows], "o-", label="teacher calls so far")
    ax_t.set_xlabel("round")
    ax_t.set_ylabel("frames")
    ax_t.legend(fontsize=8)

    def series(key):
        x = [r["round"] for r in rows if r.get(key) is not None]
        return x, [1e3 * r[key] for r in rows if r.get(key) is not None]

    for key, text, style in (("new_f_rmse", "new frames, before training", "o-"),
                             ("monitor_f_rmse", "monitor set, after training", "s--")):
        x, y = series(key)
        if x:
            ax_e.plot(x, y, style, label=f"F RMSE, {text}")
    ax_e.set_xlabel("round")
    ax_e.set_ylabel("force RMSE against the teacher (meV/Å)")
    ax_e.set_yscale("log")
    if ax_e.lines:
        ax_e.legend(fontsize=8)
    names = sorted({n for r in rows for n in (r.get("max_uncertainty_by_exploration") or {})})
    for name in names:
        x = [r["round"] for r in rows if name in (r.get("max_uncertainty_by_exploration") or {})]
        y = [r["max_uncertainty_by_exploration"][name] for r in rows if name in (r.get("max_uncertainty_by_exploration") or {})]
        ax_u.plot(x, y, "o-", label=name)
    if threshold is not None:
        ax_u.axhline(threshold, color="k", ls="--", lw=0.8, label="threshold")
    ax_u.set_xlabel("round")
    ax_u.set_ylabel("largest force uncertainty met (eV/Å)")
    ax_u.set_yscale("log")
    ax_u.legend(fontsize=7)
    for ax in (ax_t, ax_e, ax_u):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
