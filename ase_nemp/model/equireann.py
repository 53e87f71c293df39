"""EquiREANN: equivariant message passing on embedded atomic-orbital densities
(Wu, Xia, Zhang and Jiang, J. Phys. Chem. A 128, 11061 (2024); design/equireann-model.md).

Atom i is described by linear combinations of "atomic orbitals" placed on its
neighbours, ``Phi_i = sum_{e->i} c_e phi_e`` with ``phi_e = f_c(d) R(d) Y(r_hat)`` (K
Gaussian radial channels, real orthonormal harmonics up to L), and by their contracted
squared norms, the density ``rho_i`` (M invariants). Each iteration refines the orbital
coefficients from the neighbour's density (``c_e += NN_t(rho_j)``) and passes the
neighbour's whole orbital set (``Phi_i = sum [c_e phi_e + f_c(d) Phi_j]``): equivariant
features are only summed and squared, never coupled by a tensor product. The energy is
an MLP of the last density.

Cost per iteration, n neighbours per atom: about 3 n_L K multiply-adds per edge and
n_L K M per atom (see the spec's section 6): far below NEMP's per-edge coefficient MLPs.

Our choices where the authors' code leaves room (spec section 7): species pairs enter
through a learned table (``species_input="table"``, default) or, for fidelity, through an
MLP of ``Z_i Z_j / (Z_i + Z_j)`` (``"atomic_number"``); the isolated-atom switch and ZBL of
:mod:`ase_nemp.model.limits` are available as for every architecture.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..graph import AtomicGraph
from .angular import degrees, normalized_spherical_harmonics
from .base import AtomisticModel, edge_vectors, scatter
from .config import ModelConfig
from .limits import coordination_switch, zbl_energies

__all__ = ["EquiREANN", "EquiREANNConfig"]

_INPUTS = ("table", "atomic_number")
_OUTPUT_INITS = ("xavier", "zero")


@dataclass(frozen=True)
class EquiREANNConfig(ModelConfig):
    """Hyperparameters of EquiREANN (names of design/equireann-model.md section 1.3).

    Attributes
    ----------
    species : tuple of int
        Atomic numbers the model knows (sorted); symbols are accepted.
    cutoff : float
        r_c in Å.
    sh_lmax : int
        L >= 1: largest degree of the orbitals' harmonics.
    num_radial : int
        K: Gaussian radial channels of the orbitals.
    num_orbitals : int
        M: contracted orbitals, the size of the density.
    num_iterations : int
        T: message-passing iterations (0: none).
    pair_mlp : tuple of int
        Hidden widths of the pair embedding MLP (``species_input="atomic_number"`` only).
    iter_mlp, readout_mlp : tuple of int
        Hidden widths of the iteration MLPs (M -> K) and of the readout (M -> 1).
    pair_layernorm, iter_layernorm, readout_layernorm : bool
        LayerNorm between hidden layers of each MLP.
    neigh_scale : float
        n_nb: the initial orbital coefficients and centre weights are N(0, 1) / n_nb.
    output_init : {"xavier", "zero"}
        The weights of every MLP's output layer at the start (their biases are the spec's
        b0 either way). ``"zero"`` is the spec's section 2.1: an untrained model is a
        constant, its forces exactly zero, and the first steps pass no gradient upstream of
        the readout. ``"xavier"`` (default) draws them Xavier-normal like the hidden layers:
        on acetylacetone it reaches 36.1 against 42.0 meV/Å validation force RMSE after 150
        epochs (``benchmarks/acac/equireann_init.md``).
    species_input : {"table", "atomic_number"}
        How species pairs and centres enter: learned tables, or MLPs of the atomic numbers.
    eps : float
        Guard of zero-length edges (Å^2) and of the harmonics.
    isolated_atom_switch : float or None
        n_s of the isolated-atom limit (an atom without neighbours has exactly E0).
    zbl, zbl_radius_scale
        Short-range ZBL repulsion, as in :class:`~ase_nemp.model.config.NEMPConfig`.
    """

    species: tuple[int, ...] = field(default=(1, 8))
    cutoff: float = 4.0
    sh_lmax: int = 2
    num_radial: int = 8
    num_orbitals: int = 64
    num_iterations: int = 2
    pair_mlp: tuple[int, ...] = (8, 8)
    iter_mlp: tuple[int, ...] = (64, 64)
    readout_mlp: tuple[int, ...] = (64, 64)
    pair_layernorm: bool = True
    iter_layernorm: bool = False
    readout_layernorm: bool = False
    neigh_scale: float = 20.0
    species_input: str = "table"
    output_init: str = "xavier"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("pair_mlp", "iter_mlp", "readout_mlp"):
            set_(self, name, tuple(int(w) for w in getattr(self, name)))
        set_(self, "neigh_scale", float(self.neigh_scale))
        problems = self._shared_problems()
        if self.sh_lmax < 1:
            problems.append(f"sh_lmax must be >= 1 (got {self.sh_lmax})")
        for name in ("num_radial", "num_orbitals"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_iterations < 0:
            problems.append(f"num_iterations must be >= 0 (got {self.num_iterations})")
        if any(w < 1 for name in ("pair_mlp", "iter_mlp", "readout_mlp") for w in getattr(self, name)):
            problems.append("MLP widths must be >= 1")
        if self.species_input not in _INPUTS:
            problems.append(f"species_input must be one of {_INPUTS} (got {self.species_input!r})")
        if self.output_init not in _OUTPUT_INITS:
            problems.append(f"output_init must be one of {_OUTPUT_INITS} (got {self.output_init!r})")
        if not self.neigh_scale > 0:
            problems.append(f"neigh_scale must be positive (got {self.neigh_scale})")
        if problems:
            raise ValueError("invalid EquiREANNConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for name in ("pair_mlp", "iter_mlp", "readout_mlp"):
            out[name] = list(out[name])
        return out


EquiREANNConfig.PRESETS = {
    # the defaults of the authors' code (Equi-NN): r_c 4 Å, L 2, K 8, M 64, T 2
    "equi-nn": dict(cutoff=4.0, sh_lmax=2, num_radial=8, num_orbitals=64, num_iterations=2),
    # the authors' development runs on water: r_c 5 Å, L 2, K 8, M 64
    "water": dict(cutoff=5.0, sh_lmax=2, num_radial=8, num_orbitals=64, num_iterations=2),
}


class _Activation(nn.Module):
    """``alpha * silu(beta * y)`` with learnable per-feature alpha (1) and beta (1 / fan-in)."""

    def __init__(self, width: int, fan_in: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.full((width,), 1.0 / fan_in))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.nn.functional.silu(self.beta * y)


class ReannMLP(nn.Module):
    """The MLP of the spec's section 2.1: Xavier-normal hidden layers, the learnable
    activation above, optional LayerNorm between hidden layers, and an output layer with
    bias ``bias`` and weights ``output_init``: Xavier-normal, or zero (the network starts
    as the constant ``bias``)."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, layernorm: bool, bias: torch.Tensor,
                 output_init: str = "xavier") -> None:
        super().__init__()
        widths = (d_in, *hidden)
        layers: list[nn.Module] = []
        for q in range(len(hidden)):
            linear = nn.Linear(widths[q], widths[q + 1])
            nn.init.xavier_normal_(linear.weight)
            layers.append(linear)
            layers.append(_Activation(widths[q + 1], widths[q]))
            if layernorm and q < len(hidden) - 1:
                layers.append(nn.LayerNorm(widths[q + 1]))
        out = nn.Linear(widths[-1], d_out)
        with torch.no_grad():
            if output_init == "zero":
                out.weight.zero_()
            else:
                nn.init.xavier_normal_(out.weight)
            out.bias.copy_(bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EquiREANN(AtomisticModel):
    """EquiREANN potential (conservative: forces and stress by autograd).

    Parameters
    ----------
    config : EquiREANNConfig
    dtype : torch.dtype
    seed : int, optional
        Seed for the random initialisation; the global torch RNG is left untouched.
    """

    architecture = "equireann"

    @property
    def receptive_hops(self) -> int:
        """T + 1: the first densities, then one hop per iteration."""
        return self.config.num_iterations + 1

    def _build(self, cfg: EquiREANNConfig) -> None:
        self._register_species(cfg)
        S, K, M, L, T = cfg.num_species, cfg.num_radial, cfg.num_orbitals, cfg.sh_lmax, cfg.num_iterations
        f64 = torch.float64
        # the pair embedding [c0 | alpha | r_s] and the centre weights g start at the values the
        # authors' output biases give every pair and species (drawn once)
        pair_start = torch.cat([torch.randn(K, dtype=f64) / cfg.neigh_scale, torch.ones(K, dtype=f64),
                                torch.rand(K, dtype=f64) * math.sqrt(cfg.cutoff)])
        centre_start = torch.randn(M, dtype=f64) / cfg.neigh_scale
        a, b = torch.triu_indices(S, S)  # unordered pairs a <= b
        pair_row = torch.zeros(S, S, dtype=torch.long)
        pair_row[a, b] = pair_row[b, a] = torch.arange(a.numel())
        self.register_buffer("pair_row", pair_row.reshape(-1), persistent=False)  # ordered (a*S+b) -> unordered row
        if cfg.species_input == "table":
            self.pair_table = nn.Parameter(pair_start.repeat(a.numel(), 1))
            self.centre_table = nn.Parameter(centre_start.repeat(S, 1))
        else:
            z = torch.tensor(cfg.species, dtype=f64)
            self.register_buffer("pair_z", (z[a] * z[b] / (z[a] + z[b]))[:, None], persistent=False)
            self.register_buffer("centre_z", z[:, None], persistent=False)
            self.pair_mlp = ReannMLP(1, cfg.pair_mlp, 3 * K, cfg.pair_layernorm, pair_start, cfg.output_init)
            self.centre_mlp = ReannMLP(1, cfg.pair_mlp, M, cfg.pair_layernorm, centre_start, cfg.output_init)
        bound = math.sqrt(6.0 / ((L + T + 2) * K * M))
        self.contraction = nn.Parameter(torch.empty(T + 1, L + 1, K, M, dtype=f64).uniform_(-bound, bound))
        self.iter_mlps = nn.ModuleList(
            ReannMLP(M, cfg.iter_mlp, K, cfg.iter_layernorm, torch.randn(K, dtype=f64),
                     cfg.output_init) for _ in range(T))
        self.readout = ReannMLP(M, cfg.readout_mlp, 1, cfg.readout_layernorm, torch.zeros(1, dtype=f64),
                                cfg.output_init)
        self.register_buffer("l_of_lm", torch.from_numpy(degrees(L)), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.contraction.dtype

    def set_energy_shift(self, shift_per_species) -> None:
        """The readout starts at the mean of the per-species residual energies (eV per atom):
        the authors' mean energy per atom, after the reference energies."""
        with torch.no_grad():
            self.readout.net[-1].bias.fill_(float(torch.as_tensor(shift_per_species, dtype=torch.float64).mean()))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair embedding per unordered species pair (P, 3K) and centre weights (S, M)."""
        if self.config.species_input == "table":
            return self.pair_table, self.centre_table
        return self.pair_mlp(self.pair_z.to(self.dtype)), self.centre_mlp(self.centre_z.to(self.dtype))

    def _density(self, Phi: torch.Tensor, t: int, g: torch.Tensor) -> torch.Tensor:
        """rho_ik = g_ik sum_lm (sum_n Phi_ilm,n W_l,n,k)^2, (N, M)."""
        W = self.contraction[t].index_select(0, self.l_of_lm)  # (n_L, K, M)
        C = torch.einsum("iln,lnk->ilk", Phi, W)
        return g * (C * C).sum(1)

    def network_energies(self, graph: AtomicGraph, species: torch.Tensor, fused: bool = False,
                         edges_within: list[int] | None = None) -> torch.Tensor:  # every layer over every edge
        cfg = self.config
        K, S, N = cfg.num_radial, cfg.num_species, graph.num_atoms
        i, j = graph.edge_index[0], graph.edge_index[1]
        r = edge_vectors(graph.positions, graph.edge_index, graph.shifts, graph.cell, graph.batch)  # (E, 3)
        q = (r * r).sum(-1)
        d = torch.sqrt(q + cfg.eps)  # never sqrt(q): finite gradients for zero-length edges
        inside = (q > cfg.eps) & (d < cfg.cutoff)
        fc = torch.where(inside, (0.5 * torch.cos(d * (math.pi / cfg.cutoff)) + 0.5) ** 2, torch.zeros_like(d))
        Y = normalized_spherical_harmonics(r / d[:, None], cfg.sh_lmax, cfg.eps) * (1.0 / math.sqrt(4.0 * math.pi))
        ordered = species.index_select(0, i) * S + species.index_select(0, j)
        pair_emb, centre = self.embeddings()
        emb = pair_emb.index_select(0, self.pair_row.index_select(0, ordered))  # (E, 3K)
        c, alpha, rs = emb[:, :K], emb[:, K : 2 * K], emb[:, 2 * K :]
        radial = torch.exp(-(alpha * (d[:, None] - rs)) ** 2)  # (E, K)
        phi = (fc[:, None] * radial)[:, None, :] * Y[:, :, None]  # (E, n_L, K)
        g = centre.index_select(0, species)  # (N, M)
        Phi = scatter(c[:, None, :] * phi, i, N)
        rho = self._density(Phi, 0, g)
        for t, nn_t in enumerate(self.iter_mlps, start=1):
            c = c + nn_t(rho).index_select(0, j)
            Phi = scatter(c[:, None, :] * phi + fc[:, None, None] * Phi.index_select(0, j), i, N)
            rho = self._density(Phi, t, g)
        energies = self.readout(rho).squeeze(-1)
        if cfg.isolated_atom_switch is not None:
            energies = energies * coordination_switch(scatter(fc, i, N), cfg.isolated_atom_switch)
        if cfg.zbl:
            energies = energies + zbl_energies(r, ordered, i, N, self._zbl_tables(), cfg.eps)
        return energies

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"species={cfg.symbols}, cutoff={cfg.cutoff}, L={cfg.sh_lmax}, K={cfg.num_radial}, "
                f"M={cfg.num_orbitals}, T={cfg.num_iterations}, parameters={self.num_parameters():,}")
