"""LEIGNN: a lightweight equivariant network of scalar and vector features
(Yang et al. 2024, arXiv 2311.02869; design/leignn-model.md).

Every atom carries H scalar channels h and H vector channels v (3 x H). A layer
(a) exchanges information with a global node per structure (optional), (b) passes
messages from neighbours, a gated copy of their vectors plus "the force of j on i"
along the unit vector u_e = -r_e / d_e, and (c) updates both by the paper's node-level
message update (NMU), which reads the vectors only through their channel-wise norms.
No spherical harmonics, no Clebsch-Gordan products: vectors are only scaled and summed.

Forces come in two modes (``force_mode``):

* ``"direct"`` (the authors'): F_i = v_i w_F, equivariant but not the gradient of the
  energy: energy is not conserved along a trajectory and there is no stress. The model
  sets ``conservative = False``; the calculator refuses stress and says why.
* ``"conservative"`` (ours): F = -dE/dx and stress by the strain derivative, as for the
  other architectures; the filter bias is then off so the energy is smooth at r_c.

With the global node (``use_global``) every atom's energy depends on every other atom of
its structure through per-structure means: separated fragments are not independent and
E(A + B) != E(A) + E(B) (the paper's own caveat, tested). ``use_global=False`` restores
strict locality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import AtomicGraph
from .base import AtomisticModel, edge_vectors, scatter
from .config import ModelConfig
from .limits import coordination_switch, zbl_energies
from .radial import polynomial_envelope

__all__ = ["LEIGNN", "LEIGNNConfig"]


@dataclass(frozen=True)
class LEIGNNConfig(ModelConfig):
    """Hyperparameters of LEIGNN (names of design/leignn-model.md section 1.2).

    Attributes
    ----------
    species, cutoff
        Elements (sorted atomic numbers; symbols accepted) and r_c in Å.
    num_channels : int
        H, scalar and vector channels (even).
    num_layers : int
        T (the authors train with 4).
    num_radial : int
        R Gaussians on [0, 1] in d / r_c.
    envelope_p : int
        Exponent of the polynomial envelope (not squared).
    force_mode : {"direct", "conservative"}
    use_global : bool
        The per-structure global scalar and vector node.
    update : {"nmu", "painn"}
        The paper's message update, or PaiNN's (the paper's "Vanilla" ablation).
    radial_bias : bool or None
        Bias of the radial filter; None: on in direct mode (the authors'), off in
        conservative mode (with it the energy jumps where an edge crosses r_c).
    norm_eps : float
        Inside the vector norm of the update (finite gradient at v = 0).
    remove_net_force : bool
        Direct mode: subtract each structure's mean force (momentum conservation).
    eps : float
        Guard of zero-length edges (Å^2).
    isolated_atom_switch, zbl, zbl_radius_scale
        The limits of :mod:`ase_nemp.model.limits`; ZBL needs the conservative mode.
    """

    species: tuple[int, ...] = field(default=(1, 8))
    cutoff: float = 6.0
    num_channels: int = 512
    num_layers: int = 4
    num_radial: int = 128
    envelope_p: int = 5
    force_mode: str = "direct"
    use_global: bool = True
    update: str = "nmu"
    radial_bias: bool | None = None
    norm_eps: float = 1e-8
    remove_net_force: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "norm_eps", float(self.norm_eps))
        if self.radial_bias is None:
            set_(self, "radial_bias", self.force_mode == "direct")
        problems = self._shared_problems()
        if self.num_channels < 2 or self.num_channels % 2:
            problems.append(f"num_channels must be even and >= 2 (got {self.num_channels})")
        for name in ("num_layers", "num_radial", "envelope_p"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_radial < 2:
            problems.append("num_radial must be >= 2")
        if self.force_mode not in ("direct", "conservative"):
            problems.append(f"force_mode must be 'direct' or 'conservative' (got {self.force_mode!r})")
        if self.update not in ("nmu", "painn"):
            problems.append(f"update must be 'nmu' or 'painn' (got {self.update!r})")
        if self.force_mode == "conservative" and self.radial_bias:
            problems.append("radial_bias makes the energy jump where an edge crosses the cutoff; "
                            "the conservative mode needs radial_bias: false")
        if self.force_mode == "conservative" and self.remove_net_force:
            problems.append("remove_net_force applies to direct forces only (conservative forces sum to zero)")
        if self.force_mode == "direct" and self.zbl:
            problems.append("zbl needs force_mode 'conservative' (its forces come from the energy)")
        if problems:
            raise ValueError("invalid LEIGNNConfig: " + "; ".join(problems))


LEIGNNConfig.PRESETS = {
    # the authors' OC20 / ISO17 settings, and their MD / LiPS settings (r_c 5 Å)
    "oc20": dict(cutoff=6.0, num_channels=512, num_layers=4, num_radial=128),
    "md": dict(cutoff=5.0, num_channels=512, num_layers=4, num_radial=128),
    # a small model for CPUs and tests
    "small": dict(cutoff=5.0, num_channels=64, num_layers=3, num_radial=32),
}


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) * (1.0 / 0.6)


class _MLP(nn.Module):
    """Linear, scaled SiLU, Linear (and a final scaled SiLU if ``end_act``)."""

    def __init__(self, d_in: int, d_mid: int, d_out: int, end_act: bool = False) -> None:
        super().__init__()
        self.first, self.second, self.end_act = nn.Linear(d_in, d_mid), nn.Linear(d_mid, d_out), end_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(_act(self.first(x)))
        return _act(y) if self.end_act else y


class _Layer(nn.Module):
    def __init__(self, cfg: LEIGNNConfig, last: bool) -> None:
        super().__init__()
        H = cfg.num_channels
        if cfg.use_global:
            self.node_mlp = _MLP(2 * H, H, H, end_act=True)
            self.node_lin = nn.Linear(H, H, bias=False)
            if not last:  # the last layer's global update reaches no output (spec D10)
                self.vn_mlp = _MLP(2 * H, H, H, end_act=True)
                self.vn_lin = nn.Linear(H, H, bias=False)
        self.x_mlp = _MLP(H, H // 2, 3 * H)
        self.rbf = nn.Linear(cfg.num_radial, 3 * H, bias=cfg.radial_bias)
        self.vec_lin = nn.Linear(H, 2 * H, bias=False)
        self.update_mlp = _MLP(2 * H, H, 3 * H)


class LEIGNN(AtomisticModel):
    """LEIGNN potential; ``conservative`` follows ``config.force_mode``.

    In direct mode :meth:`forward` also returns ``forces`` (N, 3), eV/Å.
    """

    architecture = "leignn"

    @property
    def receptive_hops(self) -> int | None:
        """One hop per layer; None with the global node, which couples every atom."""
        return None if self.config.use_global else self.config.num_layers

    def _build(self, cfg: LEIGNNConfig) -> None:
        self._register_species(cfg)
        self.conservative = cfg.force_mode == "conservative"
        H, T = cfg.num_channels, cfg.num_layers
        self.embedding = nn.Parameter(torch.empty(cfg.num_species, H, dtype=torch.float64).uniform_(-math.sqrt(3.0),
                                                                                                      math.sqrt(3.0)))
        if cfg.use_global:
            self.global_start = nn.Parameter(torch.randn(H, dtype=torch.float64))
        self.layers = nn.ModuleList(_Layer(cfg, last=(t == T - 1)) for t in range(T))
        self.energy_mlp = _MLP(H, H // 2, 1)
        if not self.conservative:
            self.force_head = nn.Linear(H, 1, bias=False)
        R = cfg.num_radial
        self.register_buffer("rbf_centres", torch.arange(R, dtype=torch.float64) / (R - 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.dtype

    def set_energy_shift(self, shift_per_species) -> None:
        """The energy MLP's output bias starts at the mean per-species residual (eV per atom)."""
        with torch.no_grad():
            self.energy_mlp.second.bias.fill_(float(torch.as_tensor(shift_per_species, dtype=torch.float64).mean()))

    def _outputs(self, graph: AtomicGraph, species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-atom network energies (N,) and, in direct mode, forces (N, 3)."""
        cfg = self.config
        H, N, B = cfg.num_channels, graph.num_atoms, graph.num_graphs
        i, j = graph.edge_index[0], graph.edge_index[1]
        batch = graph.batch
        r = edge_vectors(graph.positions, graph.edge_index, graph.shifts, graph.cell, batch)
        q2 = (r * r).sum(-1)
        d = torch.sqrt(q2 + cfg.eps)
        u = -r / d[:, None]  # neighbour -> centre (the authors' direction)
        q = d / cfg.cutoff
        inside = (q2 > cfg.eps) & (q < 1.0)
        envelope = torch.where(inside, polynomial_envelope(q.clamp(max=1.0), cfg.envelope_p), torch.zeros_like(q))
        width = 1.0 / (cfg.num_radial - 1)
        rho = envelope[:, None] * torch.exp(-((q[:, None] - self.rbf_centres) ** 2) / (2.0 * width * width))
        keep = inside if cfg.radial_bias else None  # a filter bias would give zero-length edges a message
        ones = torch.ones(N, dtype=graph.positions.dtype, device=graph.positions.device)
        counts = scatter(ones, batch, B).clamp(min=1.0)[:, None]  # atoms per structure

        h = self.embedding.index_select(0, species)
        v = h.new_zeros(N, 3, H)
        if cfg.use_global:
            gs = self.global_start.expand(B, H)
            gv = h.new_zeros(B, 3, H)
        for t, layer in enumerate(self.layers):
            if cfg.use_global:  # (a) global distributing
                h = h + layer.node_mlp(torch.cat([h, gs.index_select(0, batch)], dim=1))
                v = v + layer.node_lin(v + gv.index_select(0, batch))
            # (b) local messages
            f = layer.rbf(rho)
            if keep is not None:
                f = f * keep[:, None].to(f.dtype)
            m = layer.x_mlp(h).index_select(0, j) * f * (1.0 / math.sqrt(3.0))
            m_vv, m_vs, m_s = m[:, :H], m[:, H : 2 * H], m[:, 2 * H :]
            h = (h + scatter(m_s, i, N)) * (1.0 / math.sqrt(2.0))
            dv = m_vv[:, None, :] * v.index_select(0, j) + u[:, :, None] * m_vs[:, None, :]
            v = v + scatter(dv, i, N) * (1.0 / math.sqrt(H))
            # (c) message update
            vv = layer.vec_lin(v)
            v1, v2 = vv[..., :H], vv[..., H:]
            norm = torch.sqrt((v2 * v2).sum(1) + cfg.norm_eps)
            a, b, c = layer.update_mlp(torch.cat([h, norm], dim=1)).split(H, dim=1)
            if cfg.update == "nmu":
                h = h + b * (1.0 / math.sqrt(2.0)) + h * torch.tanh(c)
                v = v + a[:, None, :] * v1
            else:  # PaiNN's update
                dot = (v1 * v2).sum(1) * (1.0 / math.sqrt(H))
                h = h + (a + b * dot) * (1.0 / math.sqrt(2.0))
                v = v + c[:, None, :] * v1
            if cfg.use_global and t < cfg.num_layers - 1:  # (d) global aggregating
                gs = gs + layer.vn_mlp(torch.cat([scatter(h, batch, B) / counts, gs], dim=1))
                gv = gv + layer.vn_lin(scatter(v, batch, B) / counts[:, :, None] + gv)
        energies = self.energy_mlp(h).squeeze(-1)
        if cfg.isolated_atom_switch is not None:
            fc = envelope * envelope  # the coordination as the other architectures count it
            energies = energies * coordination_switch(scatter(fc, i, N), cfg.isolated_atom_switch)
        if cfg.zbl:
            S = cfg.num_species
            pair = species.index_select(0, i) * S + species.index_select(0, j)
            energies = energies + zbl_energies(r, pair, i, N, self._zbl_tables(), cfg.eps)
        if self.conservative:
            return energies, None
        forces = self.force_head(v).squeeze(-1)  # (N, 3)
        if cfg.remove_net_force:
            forces = forces - (scatter(forces, batch, B) / counts).index_select(0, batch)
        return energies, forces

    def network_energies(self, graph: AtomicGraph, species: torch.Tensor, fused: bool = False,
                         edges_within: list[int] | None = None) -> torch.Tensor:  # every layer over every edge
        return self._outputs(graph, species)[0]

    def forward(self, graph: AtomicGraph, fused: bool = False,
                edges_within: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Energies (and, in direct mode, ``forces``) of a batch; see :class:`AtomisticModel`
        (every layer runs over every edge, whatever ``edges_within``)."""
        graph = graph.checked(self.dtype)
        species = self.species_index(graph.numbers)
        energies, forces = self._outputs(graph, species)
        energies = energies + self.atomic_energies.index_select(0, species)
        out = {"energy": scatter(energies, graph.batch, graph.num_graphs), "energies": energies}
        if forces is not None:
            out["forces"] = forces
        return out

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"species={cfg.symbols}, cutoff={cfg.cutoff}, H={cfg.num_channels}, T={cfg.num_layers}, "
                f"forces={cfg.force_mode}, global={cfg.use_global}, parameters={self.num_parameters():,}")
