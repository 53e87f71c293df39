"""Loss (spec section 6) and error metrics.

Loss of a batch, a **sum** over its structures g with N_g atoms::

    L = w_E sum_g c_g ((E_g - E_g^ref) / N_g)^2
      + w_F sum_g c_g (1 / 3N_g) sum_{i in g} |F_i - F_i^ref|^2
      + w_S sum_g c_g |sigma_g - sigma_g^ref|^2 / 9          (structures with stress only)

``c_g`` is the structure's weight (1 unless ``training.config_type_weights`` gives its
``config_type`` another).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["LossWeights", "batch_loss", "ErrorStats"]


@dataclass
class LossWeights:
    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0


def batch_loss(out: dict[str, torch.Tensor], batch, weights: LossWeights) -> torch.Tensor:
    """Weighted loss of one batch (a scalar tensor that can be back-propagated)."""
    n = batch.num_atoms.to(out["energy"].dtype)
    c = batch.weight  # (B,) or None: every structure weighs 1

    def weighted(terms):  # per structure
        return (terms * c.to(terms.dtype)).sum() if c is not None else terms.sum()

    loss = weights.energy * weighted(((out["energy"] - batch.energy) / n) ** 2)
    if weights.forces:
        sq = ((out["forces"] - batch.forces) ** 2).sum(1)  # (N,)
        per_graph = torch.zeros_like(n, dtype=sq.dtype).index_add_(0, batch.graph.batch, sq)
        loss = loss + weights.forces * weighted(per_graph / (3.0 * n.to(sq.dtype)))
    if weights.stress and "stress" in out and bool(batch.has_stress.any()):
        diff = ((out["stress"] - batch.stress) ** 2).sum((1, 2)) / 9.0
        loss = loss + weights.stress * weighted(torch.where(batch.has_stress, diff, torch.zeros_like(diff)))
    return loss


@dataclass
class _Acc:
    e_atom: list = field(default_factory=list)  # eV/atom
    e_struct: list = field(default_factory=list)  # eV
    f: list = field(default_factory=list)  # eV/Å, components
    s: list = field(default_factory=list)  # eV/Å^3, components

    def summary(self) -> dict[str, float]:
        def rmse(x):
            return float(np.sqrt(np.mean(np.square(x)))) if len(x) else float("nan")

        def mae(x):
            return float(np.mean(np.abs(x))) if len(x) else float("nan")

        f = np.concatenate(self.f) if self.f else np.zeros(0)
        s = np.concatenate(self.s) if self.s else np.zeros(0)
        return {
            "structures": len(self.e_atom),
            "e_rmse_atom": rmse(self.e_atom), "e_mae_atom": mae(self.e_atom),
            "e_rmse": rmse(self.e_struct), "e_mae": mae(self.e_struct),
            "f_rmse": rmse(f), "f_mae": mae(f),
            "s_rmse": rmse(s), "s_mae": mae(s), "stress_structures": len(self.s),
        }


class ErrorStats:
    """Accumulates prediction errors overall and per ``config_type``."""

    def __init__(self) -> None:
        self.groups: dict[str, _Acc] = {}

    def add(self, out: dict[str, torch.Tensor], batch) -> None:
        energy = out["energy"].detach().double().cpu().numpy()
        forces = out["forces"].detach().double().cpu().numpy()
        ref_e = batch.energy.double().cpu().numpy()
        ref_f = batch.forces.double().cpu().numpy()
        graph_of_atom = batch.graph.batch.cpu().numpy()
        stress = out.get("stress")
        for g, sample in enumerate(batch.samples):
            de = energy[g] - ref_e[g]
            df = (forces[graph_of_atom == g] - ref_f[graph_of_atom == g]).ravel()
            for key in ("all", sample.config_type):
                acc = self.groups.setdefault(key, _Acc())
                acc.e_struct.append(de)
                acc.e_atom.append(de / sample.num_atoms)
                acc.f.append(df)
                if stress is not None and bool(batch.has_stress[g]):
                    acc.s.append((stress[g].detach().double().cpu().numpy() - batch.stress[g].double().cpu().numpy()).ravel())

    @classmethod
    def combined(cls, parts: "list[ErrorStats]") -> "ErrorStats":
        """One ErrorStats holding the errors of ``parts`` (e.g. of several processes), in order."""
        out = cls()
        for part in parts:
            for key, acc in part.groups.items():
                mine = out.groups.setdefault(key, _Acc())
                for name in ("e_atom", "e_struct", "f", "s"):
                    getattr(mine, name).extend(getattr(acc, name))
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """``{"all": {...}, config_type: {...}}`` with RMSE/MAE in eV, eV/atom, eV/Å, eV/Å^3."""
        ordered = ["all"] + sorted(k for k in self.groups if k != "all")
        return {k: self.groups[k].summary() for k in ordered if k in self.groups}
