"""Evaluate a model on labelled structures: RMSE/MAE overall and per ``config_type``, and,
for a committee, how well its spread predicts its error (calibration)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ..devices import resolve_device
from ..io import load, resolve_dtype
from ..model import AtomisticModel, Committee
from ..files import read_structures
from .data import LabelKeys, Sample, build_samples, make_batch
from .loss import ErrorStats

__all__ = ["evaluate", "format_table", "predictions", "calibration", "format_calibration"]


def _as_model(model: AtomisticModel | Committee | str | os.PathLike, device, dtype) -> AtomisticModel | Committee:
    if isinstance(model, (AtomisticModel, Committee)):
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return load(model, device=device, dtype=dtype)


def predictions(
    model: AtomisticModel | Committee | str | os.PathLike,
    frames: Sequence[Atoms] | Sequence[Sample] | str | os.PathLike,
    keys: LabelKeys = LabelKeys(),
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "float64",
):
    """Run a model or a committee on labelled frames (or prepared samples).

    Returns ``(ErrorStats, pred, ref)``. ``pred`` and ``ref`` hold ``energy`` (B,),
    ``energy_per_atom`` (B,), ``forces`` (N, 3) and ``num_atoms`` (B,) arrays; for a
    committee (whose prediction is the members' mean) ``pred`` also holds
    ``energy_uncertainty`` (B,) and ``forces_uncertainty`` (N,).
    """
    dtype = resolve_dtype(dtype) if dtype is not None else None
    device = resolve_device(device)
    model = _as_model(model, device, dtype)
    model.eval()
    is_committee, conservative = model.is_committee, bool(model.conservative)
    if isinstance(frames, (str, os.PathLike)):
        frames = read_structures(frames)
    if len(frames) and isinstance(frames[0], Sample):
        samples = list(frames)
    else:
        samples = build_samples(frames, model.cutoff, keys, model.config.species)
    stats = ErrorStats()
    names = ["energy", "energy_per_atom", "forces", "num_atoms"]
    pred = {k: [] for k in names + (["energy_uncertainty", "forces_uncertainty"] if is_committee else [])}
    ref = {k: [] for k in names}
    for start in range(0, len(samples), batch_size):
        batch = make_batch(samples[start : start + batch_size]).to(device, model.dtype)
        want_stress = bool(batch.has_stress.any()) and conservative
        out = model.predict(batch.graph, stress=want_stress)
        if is_committee:
            pred["energy_uncertainty"].append(out["energy_uncertainty"].double().cpu().numpy())
            pred["forces_uncertainty"].append(out["forces_uncertainty"].double().cpu().numpy())
        stats.add(out, batch)
        n = batch.num_atoms.double().cpu().numpy()
        for store, energy, forces in ((pred, out["energy"], out["forces"]), (ref, batch.energy, batch.forces)):
            store["energy"].append(energy.double().cpu().numpy())
            store["forces"].append(forces.double().cpu().numpy())
            store["energy_per_atom"].append(store["energy"][-1] / n)
            store["num_atoms"].append(n.astype(int))
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


def _per_structure(values: np.ndarray, num_atoms: np.ndarray, reduce) -> np.ndarray:
    bounds = np.concatenate([[0], np.cumsum(num_atoms)])
    return np.array([reduce(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])


def calibration_data(pred: dict, ref: dict) -> dict[str, np.ndarray]:
    """Per structure and per atom: the committee's uncertainty and its true error.

    ``energy``: ``energy_uncertainty`` against ``|E - E_ref|`` (eV); ``forces``: the RMS over
    a structure's atoms of ``forces_uncertainty`` against the RMS of ``|F_i - F_i,ref|``
    (eV/Å); ``forces_atom``: per atom, ``forces_uncertainty`` against ``|F_i - F_i,ref|``.
    """
    n = pred["num_atoms"]
    err_atom = np.linalg.norm(pred["forces"] - ref["forces"], axis=1)
    rms = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
    return {
        "energy_uncertainty": pred["energy_uncertainty"], "energy_error": np.abs(pred["energy"] - ref["energy"]),
        "forces_uncertainty": _per_structure(pred["forces_uncertainty"], n, rms),
        "forces_error": _per_structure(err_atom, n, rms),
        "forces_atom_uncertainty": pred["forces_uncertainty"], "forces_atom_error": err_atom,
    }


def calibration(pred: dict, ref: dict) -> dict[str, float]:
    """How well a committee's spread ranks its errors (from :func:`predictions` output).

    Returns the Spearman rank correlations ``energy_spearman``, ``forces_spearman`` (per
    structure) and ``forces_atom_spearman`` (per atom), and the ratios of RMS error to RMS
    uncertainty ``energy_ratio`` and ``forces_ratio`` (1 for a spread that has the size of
    the error; larger when the committee is over-confident).
    """
    from scipy.stats import spearmanr

    data = calibration_data(pred, ref)

    def rho(a, b):
        if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return float("nan")
        return float(spearmanr(a, b).statistic)

    def ratio(err, unc):
        return float(np.sqrt(np.mean(err**2)) / max(np.sqrt(np.mean(unc**2)), 1e-300))

    return {
        "structures": int(len(data["energy_error"])),
        "energy_spearman": rho(data["energy_uncertainty"], data["energy_error"]),
        "forces_spearman": rho(data["forces_uncertainty"], data["forces_error"]),
        "forces_atom_spearman": rho(data["forces_atom_uncertainty"], data["forces_atom_error"]),
        "energy_ratio": ratio(data["energy_error"], data["energy_uncertainty"]),
        "forces_ratio": ratio(data["forces_atom_error"], data["forces_atom_uncertainty"]),
    }


def format_calibration(cal: dict[str, float]) -> str:
    """Markdown table of :func:`calibration`."""
    return "\n".join([
        "| quantity | Spearman rank correlation | RMS error / RMS uncertainty |",
        "|---|---|---|",
        f"| energy per structure | {cal['energy_spearman']:.3f} | {cal['energy_ratio']:.2f} |",
        f"| forces per structure (RMS over atoms) | {cal['forces_spearman']:.3f} | {cal['forces_ratio']:.2f} |",
        f"| forces per atom | {cal['forces_atom_spearman']:.3f} | |",
    ])


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
