"""What every architecture shares: species indexing, float64 reference energies, the
data-derived energy scale, and the forward pass from a graph to energies.

An architecture subclasses :class:`AtomisticModel`, builds its network in ``_build`` from
its frozen config (which has ``species``, ``cutoff`` and ``symbols``), calls
:meth:`_register_species` there, and implements :meth:`network_energies`: the per-atom
energies of the network, in eV, without the reference energies. The calculator, the
derivatives, model files and the trainer only use this interface.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import AtomicGraph, values_known
from .limits import zbl_tables

__all__ = ["AtomisticModel", "scatter", "edge_vectors"]

_MAX_Z = 119


def scatter(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum the rows of ``src`` into ``n`` bins given by ``index`` (the sum over e -> i)."""
    return src.new_zeros((n,) + src.shape[1:]).index_add_(0, index, src)


def edge_vectors(positions: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor, cell: torch.Tensor,
                 batch: torch.Tensor) -> torch.Tensor:
    """``r_e = x_j - x_i + n_e @ H_g(i)``, shape (E, 3)."""
    i, j = edge_index[0], edge_index[1]
    if cell.shape[0] == 1:
        offset = shifts @ cell[0]
    else:
        offset = torch.bmm(shifts.unsqueeze(1), cell[batch[i]]).squeeze(1)
    return positions.index_select(0, j) - positions.index_select(0, i) + offset


class AtomisticModel(nn.Module):
    """Base of the architectures: a batch of graphs in, per-atom and per-structure energies out.

    Buffers that come from data rather than training: ``force_rms`` (the RMS force
    component of the training data, eV/Å; an energy scale for the network's output) and
    ``atomic_energies`` (the reference energy E0 of each species, eV, added to every
    atom). ``atomic_energies`` stays float64 whatever the model's dtype: reference
    energies of ~1e3 eV would be rounded to ~1e-4 eV per atom in float32. The network is
    computed in the model's dtype and promoted when the reference is added, so energies
    are float64 while forces keep the model's dtype.

    Attributes
    ----------
    architecture : str
        The registry name (``"nemp"``, ``"equireann"``...), stored in model files.
    conservative : bool
        Forces are ``-dE/dx`` by autograd (and stress the strain derivative). A
        direct-force model sets it false and returns forces from :meth:`forward`.
    receptive_hops : int or None
        How many cutoffs away an atom's energy still depends on other atoms (None: on
        every atom of the structure, for a model with a global node). Domain
        decomposition (LAMMPS) needs ghost atoms this many cutoffs deep.
    exchanges_features : bool
        The per-atom features each layer reads from the neighbours can be handed in from
        outside (``exchange`` of :meth:`forward`): domain decomposition then needs ghost
        atoms one cutoff deep only, their features sent by the ranks that own them.
    is_committee : bool
        False; a :class:`~ase_nemp.model.Committee` answers the same questions (the
        attributes above, :meth:`predict`, :meth:`describe`) with True and its ``size``.
    """

    architecture = ""
    conservative = True
    exchanges_features = False
    is_committee = False
    size = 1

    @property
    def receptive_hops(self) -> int | None:
        raise NotImplementedError  # pragma: no cover - each architecture says

    def __init__(self, config: Any, dtype: torch.dtype = torch.float64, seed: int | None = None) -> None:
        super().__init__()
        if seed is None:
            self._build(config)
        else:
            # parameters are drawn on the CPU from its default generator, seeded inside a fork of
            # its state; torch.manual_seed would also reseed every GPU's generator for good
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)
                self._build(config)
        self.to(dtype)

    def _build(self, config: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _register_species(self, config: Any) -> None:
        """The species lookup, the data-derived buffers and, with ``config.zbl``, the ZBL
        tables (derived from the species, not stored in model files); call first in ``_build``."""
        self.config = config
        S = len(config.species)
        z_to_index = torch.full((_MAX_Z,), -1, dtype=torch.long)
        z_to_index[list(config.species)] = torch.arange(S)
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        self.register_buffer("species_z", torch.tensor(config.species, dtype=torch.long), persistent=False)
        self.register_buffer("force_rms", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("atomic_energies", torch.zeros(S, dtype=torch.float64))
        if config.zbl:
            for name, table in zbl_tables(config.species, config.zbl_radius_scale).items():
                self.register_buffer(name, table, persistent=False)

    def _zbl_tables(self) -> dict[str, torch.Tensor]:
        """The per-pair ZBL tables for :func:`~ase_nemp.model.limits.zbl_energies`."""
        return {"zbl_charge": self.zbl_charge, "zbl_length": self.zbl_length, "zbl_rmax": self.zbl_rmax}

    def _apply(self, fn, recurse=True):
        # keep the reference energies in float64 through .to(dtype) / .float() / .double()
        e0 = self._buffers["atomic_energies"]
        out = super()._apply(fn, recurse)
        device = fn(torch.zeros(1, dtype=torch.float64, device=e0.device)).device
        self._buffers["atomic_energies"] = e0.to(device=device, dtype=torch.float64)
        return out

    # -- properties ---------------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def species(self) -> tuple[int, ...]:
        return tuple(self.config.species)

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    @property
    def device(self) -> torch.device:
        return self.force_rms.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- species and reference energies --------------------------------------------------
    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers to species indices; unknown elements raise ``ValueError``."""
        if numbers.numel() == 0:
            return numbers.new_zeros(0)
        bad = (numbers < 0) | (numbers >= _MAX_Z)
        index = self.z_to_index[numbers.clamp(0, _MAX_Z - 1)]
        bad = bad | (index < 0)
        if values_known(numbers) and bool(bad.any()):
            from ase.data import chemical_symbols

            unknown = sorted({int(z) for z in numbers[bad].tolist()})
            names = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}" for z in unknown]
            raise ValueError(
                f"element(s) {', '.join(names)} not known to this model; "
                f"it was built for {', '.join(self.config.symbols)}"
            )
        return index

    def set_reference_energies(self, atomic_energies: Any = None, force_rms: float | None = None) -> None:
        """Set the data-derived buffers.

        Parameters
        ----------
        atomic_energies : float, sequence of S floats, or {element: energy}, optional
            Reference energy per species added to every atom (eV). A float applies to
            every species.
        force_rms : float, optional
            RMS force component of the training data (eV/Å), the network's energy scale.
        """
        if atomic_energies is not None:
            if isinstance(atomic_energies, dict):
                from ase.data import atomic_numbers

                by_z = {(atomic_numbers[k] if isinstance(k, str) else int(k)): float(v) for k, v in atomic_energies.items()}
                missing = [s for z, s in zip(self.config.species, self.config.symbols) if z not in by_z]
                if missing:
                    raise ValueError(f"atomic energies missing for element(s) {', '.join(missing)}")
                values = [by_z[z] for z in self.config.species]
            elif np.ndim(atomic_energies) == 0:
                values = [float(atomic_energies)] * len(self.config.species)
            else:
                values = [float(v) for v in atomic_energies]
                if len(values) != len(self.config.species):
                    raise ValueError(f"need {len(self.config.species)} atomic energies, got {len(values)}")
            self.atomic_energies.copy_(torch.tensor(values, dtype=torch.float64))
        if force_rms is not None:
            if not force_rms > 0:
                raise ValueError(f"force_rms must be positive, got {force_rms}")
            self.force_rms.fill_(float(force_rms))

    def set_energy_shift(self, shift_per_species: Any) -> None:
        """Start the network's per-atom output at ``shift_per_species`` (eV, S values):
        the residual of the data after the reference energies. Architectures without a
        per-species output shift ignore it."""

    # -- forward -------------------------------------------------------------------------
    def network_energies(self, graph: AtomicGraph, species: torch.Tensor, fused: bool = False,
                         edges_within: list[int] | None = None, exchange=None) -> torch.Tensor:
        """Per-atom energies (N,) of the network in eV, without the reference energies
        (``edges_within``, ``exchange``: see :meth:`forward`)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, graph: AtomicGraph, fused: bool = False,
                edges_within: list[int] | None = None, exchange=None) -> dict[str, torch.Tensor]:
        """Energies of a batch.

        Parameters
        ----------
        graph : AtomicGraph
        fused : bool
            Use fused CPU kernels where the architecture has them (inference with first
            derivatives only); leave off when a loss on forces is back-propagated.
        edges_within : list of int, optional
            For a graph whose energies are wanted only on some atoms (a LAMMPS rank's own
            atoms, :func:`ase_nemp.lammps.fold_images`): atoms ordered by their distance in
            pairs from those atoms (0 for them), edges sorted by centre, and
            ``edges_within[d]`` the number of edges whose centre is at most ``d`` pairs
            away. An architecture that can then computes layer t only over the edges its
            later layers still need (NEMP); the others compute every layer over every
            edge. The energies of the atoms at distance 0 are the same either way; those
            of the others are not meaningful.
        exchange : callable, optional
            Only where ``exchanges_features`` (NEMP): called on the node features (N, ...)
            before every layer, it returns them with the rows of the atoms computed
            elsewhere (a LAMMPS rank's ghosts, computed by the ranks that own them) put
            in, and is differentiable (their gradients go back to the owners). The
            graph's edges then need to reach one cutoff from the atoms wanted, and every
            other atom enters only as a neighbour.

        Returns
        -------
        dict with ``"energy"`` (B,) total energy per structure and ``"energies"`` (N,)
        per-atom energies (eV), both including the per-species reference energies.
        """
        graph = graph.checked(self.dtype)
        species = self.species_index(graph.numbers)
        # passed only when given, so that a subclass written before edges_within still works
        extra = {} if edges_within is None else {"edges_within": edges_within}
        if exchange is not None:
            if not self.exchanges_features:
                raise ValueError(f"a {self.architecture} model cannot take its neighbours' features from outside")
            extra["exchange"] = exchange
        energies = self.network_energies(graph, species, fused=fused, **extra)
        energies = energies + self.atomic_energies.index_select(0, species)
        return {"energy": scatter(energies, graph.batch, graph.num_graphs), "energies": energies}

    def predict(self, graph: AtomicGraph, forces: bool = True, stress: bool = False) -> dict[str, torch.Tensor]:
        """Inference: ``energy`` (B,), ``energies`` (N,) and, as asked, ``forces`` (N, 3)
        and ``stress`` (B, 3, 3), detached (:func:`~ase_nemp.model.energy_forces_stress`).
        A committee returns the same keys (its mean) and its spreads besides."""
        from .derivatives import energy_forces_stress

        return energy_forces_stress(self, graph, forces=forces, stress=stress)

    def describe(self) -> str:
        """One line: architecture, species, cutoff and size."""
        kind = self.architecture + ("" if self.conservative else " (direct forces)")
        return (f"{kind} model of {', '.join(self.config.symbols)}, cutoff {self.cutoff} Å, "
                f"{self.num_parameters():,} parameters")

    def extra_repr(self) -> str:
        return f"species={self.config.symbols}, cutoff={self.cutoff}, parameters={self.num_parameters():,}"
