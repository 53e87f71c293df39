"""Figures without pyplot's global state (safe in threads, scripts and notebooks alike)."""

from __future__ import annotations

__all__ = ["figure"]


def figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4)):
    """``(fig, axes)`` of a figure detached from pyplot; save it with ``fig.savefig``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)
