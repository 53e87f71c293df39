"""Committees: several independently trained models evaluated together.

A committee of M members (same architecture and configuration, different random
initialisations and data orders) predicts the **mean** of its members, and the
**spread** of their predictions estimates how far that mean can be trusted: members agree
where they saw data and disagree where they extrapolate.

Uncertainties (sample standard deviations over the members, M - 1 in the denominator):

* ``energy_uncertainty`` (B,), eV: spread of the members' total energies;
* ``forces_uncertainty`` (N,), eV/Å: per atom, ``sqrt(sum_m |F_m,i - F_i|^2 / (M - 1))``,
  the spread of the members' force vectors.

The spread is a relative measure; how it compares with the true error on held-out data
is what ``nemp eval`` reports for a committee file (rank correlation and a plot).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..graph import AtomicGraph
from .derivatives import energy_forces_stress

__all__ = ["Committee", "committee_energy_forces_stress", "committee_statistics"]


class Committee(nn.Module):
    """M models with one configuration, evaluated on the same graph.

    Parameters
    ----------
    members : sequence of models
        At least two, all with the same ``config`` (so the same species and cutoff).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 members, got {len(members)}")
        config = members[0].config
        for k, m in enumerate(members[1:], start=1):
            if m.config != config:
                raise ValueError(f"committee member {k} has another configuration than member 0; "
                                 "members must share species, cutoff and sizes")
        self.members = nn.ModuleList(members)

    @property
    def config(self):
        return self.members[0].config

    @property
    def cutoff(self) -> float:
        return self.members[0].cutoff

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def size(self) -> int:
        return len(self.members)

    is_committee = True

    @property
    def architecture(self) -> str:
        return self.members[0].architecture

    @property
    def conservative(self) -> bool:
        return self.members[0].conservative

    @property
    def receptive_hops(self) -> int | None:
        return self.members[0].receptive_hops

    @property
    def exchanges_features(self) -> bool:
        return all(m.exchanges_features for m in self.members)

    @property
    def atomic_energies(self) -> torch.Tensor:
        """The members' reference energies E0 per species (eV; the members share them)."""
        return self.members[0].atomic_energies

    @property
    def force_rms(self) -> torch.Tensor:
        return self.members[0].force_rms

    def predict(self, graph: AtomicGraph, forces: bool = True, stress: bool = False) -> dict[str, torch.Tensor]:
        """The members' mean ``energy``, ``energies``, ``forces`` and ``stress`` (as asked),
        the spreads ``energy_uncertainty`` (B,) and ``forces_uncertainty`` (N,)
        (:func:`committee_statistics`) and every member's energy, ``member_energy`` (M, B)."""
        members = committee_energy_forces_stress(self, graph, forces=forces, stress=stress)
        return {**committee_statistics(members), "member_energy": members["energy"]}

    def describe(self) -> str:
        """One line: the committee's size and what its members are."""
        return f"committee of {self.size}: " + self.members[0].describe().replace(
            f"{self.members[0].num_parameters():,} parameters", f"{self.num_parameters():,} parameters in all")

    def __len__(self) -> int:
        return len(self.members)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.members[0].species_index(numbers)

    def forward(self, graph: AtomicGraph, fused: bool = False,
                edges_within: list[int] | None = None, exchange=None) -> dict[str, torch.Tensor]:
        """Per-member energies: ``energy`` (M, B) and ``energies`` (M, N), eV
        (``fused``, ``edges_within``, ``exchange``: :meth:`AtomisticModel.forward`)."""
        outs = [m(graph, fused=fused, edges_within=edges_within, exchange=exchange) for m in self.members]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def extra_repr(self) -> str:
        return f"size={self.size}, parameters={self.num_parameters():,}"


def committee_energy_forces_stress(
    committee: Committee, graph: AtomicGraph, *, forces: bool = True, stress: bool = False
) -> dict[str, torch.Tensor]:
    """Every member's ``energy`` (M, B), ``energies`` (M, N) and, as requested, ``forces``
    (M, N, 3) and ``stress`` (M, B, 3, 3); inference only (detached).

    The members run one after another on the same graph, so memory stays that of one
    member; the neighbour list and the graph are built once for all.
    """
    outs = [energy_forces_stress(m, graph, forces=forces, stress=stress) for m in committee.members]
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}


def committee_statistics(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean predictions and spreads from :func:`committee_energy_forces_stress` output.

    Returns ``energy``, ``energies``, ``forces``, ``stress`` (the members' mean, where
    present), ``energy_uncertainty`` (B,) and ``forces_uncertainty`` (N,) as defined in
    the module docstring.
    """
    result = {k: v.mean(0) for k, v in out.items() if k in ("energy", "energies", "forces", "stress", "virial")}
    m = out["energy"].shape[0]
    result["energy_uncertainty"] = out["energy"].std(0, correction=1) if m > 1 else torch.zeros_like(result["energy"])
    if "forces" in out:
        dev = out["forces"] - result["forces"]
        result["forces_uncertainty"] = torch.sqrt((dev * dev).sum((0, 2)) / max(m - 1, 1))
    return result
