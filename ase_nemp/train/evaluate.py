"""Evaluate a model on labelled structures: RMSE/MAE overall and per ``config_type``."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ..io import load, resolve_dtype
from ..model import NEMP, energy_forces_stress
from .data import LabelKeys, build_samples, make_batch, read_structures
from .loss import ErrorStats

__all__ = ["evaluate", "format_table", "predictions"]


def _as_model(model: NEMP | str | os.PathLike, device, dtype) -> NEMP:
    if isinstance(model, NEMP):
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return load(model, device=device, dtype=dtype)


def predictions(
    model: NEMP | str | os.PathLike,
    frames: Sequence[Atoms] | str | os.PathLike,
    keys: LabelKeys = LabelKeys(),
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "float64",
):
    """Run the model on labelled frames. Returns ``(ErrorStats, pred, ref)``; ``pred`` and
    ``ref`` hold ``energy``, ``energy_per_atom``, ``forces`` arrays for plots."""
    dtype = resolve_dtype(dtype) if dtype is not None else None
    model = _as_model(model, torch.device(device), dtype)
    model.eval()
    if isinstance(frames, (str, os.PathLike)):
        frames = read_structures(frames)
    samples = build_samples(frames, model.cutoff, keys, model.config.species)
    stats = ErrorStats()
    pred = {"energy": [], "energy_per_atom": [], "forces": []}
    ref = {"energy": [], "energy_per_atom": [], "forces": []}
    for start in range(0, len(samples), batch_size):
        batch = make_batch(samples[start : start + batch_size]).to(torch.device(device), model.dtype)
        out = energy_forces_stress(model, batch.graph, stress=bool(batch.has_stress.any()))
        stats.add(out, batch)
        n = batch.num_atoms.double().cpu().numpy()
        pred["energy"].append(out["energy"].double().cpu().numpy())
        ref["energy"].append(batch.energy.double().cpu().numpy())
        pred["forces"].append(out["forces"].double().cpu().numpy())
        ref["forces"].append(batch.forces.double().cpu().numpy())
        pred["energy_per_atom"].append(pred["energy"][-1] / n)
        ref["energy_per_atom"].append(ref["energy"][-1] / n)
    pred = {k: np.concatenate(v) for k, v in pred.items()}
    ref = {k: np.concatenate(v) for k, v in ref.items()}
    return stats, pred, ref


def evaluate(model, frames, keys: LabelKeys = LabelKeys(), **kwargs) -> dict[str, dict[str, float]]:
    """Error metrics ``{"all": {...}, config_type: {...}}`` (eV, eV/atom, eV/Å, eV/Å^3).

    Keys of each entry: ``structures``, ``e_rmse``, ``e_mae`` (per structure),
    ``e_rmse_atom``, ``e_mae_atom``, ``f_rmse``, ``f_mae``, ``s_rmse``, ``s_mae``.
    """
    stats, _, _ = predictions(model, frames, keys, **kwargs)
    return stats.summary()


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown table of a summary in meV units."""
    head = ("| subset | structures | E RMSE (meV/atom) | E MAE (meV/atom) | E RMSE (meV) | E MAE (meV) "
            "| F RMSE (meV/Å) | F MAE (meV/Å) | stress RMSE (meV/Å³) |")
    lines = [head, "|---" * 9 + "|"]
    for name, m in summary.items():
        stress = f"{1e3 * m['s_rmse']:.3f}" if m["stress_structures"] else "–"
        lines.append(
            f"| {name} | {m['structures']} | {1e3 * m['e_rmse_atom']:.3f} | {1e3 * m['e_mae_atom']:.3f} "
            f"| {1e3 * m['e_rmse']:.2f} | {1e3 * m['e_mae']:.2f} | {1e3 * m['f_rmse']:.2f} | {1e3 * m['f_mae']:.2f} "
            f"| {stress} |"
        )
    return "\n".join(lines)
