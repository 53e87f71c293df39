"""The NEMP potential as a plain ``torch.nn.Module`` (design/nemp-model.md section 3).

Cost of one forward pass
------------------------
N atoms, E edges (n = E/N neighbours per atom, 30-100), C channels, S species,
n_L = (L+1)^2 and n_l = (l+1)^2 harmonic components, F the width of the coefficient
MLPs, K the number of non-zero Clebsch-Gordan entries (83 for (L,l) = (2,2), 125 for
(3,2)). Per step:

==========================================  =============================  ===========
step                                        cost                           space
==========================================  =============================  ===========
edge vectors, envelope, harmonics Yhat      O(E n_L)                       edges
pair tables (S^2 pairs, then gathered)      O(S^2 P^2) + O(E (C + N_R))    edges
sinc radial basis and initial edge MLP      O(E F (N_R + F + C))           edges
coefficient MLPs K_t, M_t (per layer)       O(E F ((t+3)C + B Lb F + n C)) edges  <- dominant
edge invariants, Eq. 7                      O(E n_l C) (two gathers)       edges
node invariants, Eq. 8                      O(E n_l C) (one scatter)       edges
virtual node U, Eq. 10                      O(N n_l C^2) + O(E n_l C)      nodes/edges
harmonic density A, Eq. 9                   O(E n_L C) (one scatter)       edges
Clebsch-Gordan tensor product, Eq. 11       O(N K C)                       **nodes**
channel mixings Omega, W_sp                 O(N n_l C^2)                   nodes
readout                                     O(N F ((T+2) C + B Lb F))      nodes
==========================================  =============================  ===========

Everything that touches edges is a per-channel scalar (MLP outputs, invariants) or a
harmonic expansion ``coefficient x Yhat``; the only tensor product couples two
*neighbour sums* on each node, so no E x K or E x C x K tensor is ever formed. The
largest activations are E x n_L x C (input of A) and E x F (MLP hidden states).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import AtomicGraph
from .angular import coupling_paths, degrees, normalized_spherical_harmonics, real_clebsch_gordan
from .base import AtomisticModel, edge_vectors, scatter
from .config import NEMPConfig
from .limits import coordination_switch, zbl_energies
from . import kernels
from .kernels import edge_geometry, edge_invariants, mlp, node_densities, species_matmul, tensor_product
from .mlp import ScaledMLP
from .radial import polynomial_envelope

__all__ = ["NEMP"]


class NEMP(AtomisticModel):
    """Node-equivariant message-passing potential.

    Parameters
    ----------
    config : NEMPConfig
        Hyperparameters (species, cutoff, sizes).
    dtype : torch.dtype
        Floating-point type of the parameters (float64 by default; float32 is faster).
    seed : int, optional
        Seed for the random initialisation; the global torch RNG is left untouched.

    The model maps a batch of graphs to per-atom and per-structure energies in eV; it
    knows nothing of ASE. Forces and stress come from
    :func:`ase_nemp.model.energy_forces_stress`. The reference energies and the force
    scale ``force_rms`` (sigma_F, the readout's energy scale) are those of
    :class:`~ase_nemp.model.base.AtomisticModel`.
    """

    architecture = "nemp"
    exchanges_features = True  # layer t reads its neighbours' V only

    @property
    def receptive_hops(self) -> int:
        """The embedding's neighbour sum, then one hop per layer."""
        return self.config.num_layers + 1

    # ------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------
    def _build(self, cfg: NEMPConfig) -> None:
        self._register_species(cfg)
        S, C, NR, P = cfg.num_species, cfg.num_channels, cfg.num_radial, cfg.pair_dim
        L, lf, T = cfg.sh_lmax, cfg.feat_lmax, cfg.num_layers
        f64 = torch.float64

        # pair-embedding input for the S^2 ordered pairs (a, b), row a*S + b
        a_idx, b_idx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        a_idx, b_idx = a_idx.reshape(-1), b_idx.reshape(-1)
        if cfg.pair_input == "one_hot":
            eye = torch.eye(S, dtype=f64)
            pair_inputs = torch.cat([eye[a_idx], eye[b_idx]], dim=1)
        else:
            z = torch.tensor(cfg.species, dtype=f64)
            pair_inputs = torch.stack([z[a_idx], z[b_idx]], dim=1)
        self.register_buffer("pair_inputs", pair_inputs, persistent=False)

        # pair networks (section 3.2)
        self.pair_mlp = ScaledMLP(pair_inputs.shape[1], P, cfg.pair_mlp, bias=True)
        self.freq_mlp = ScaledMLP(P, NR, cfg.pair_mlp, bias=True)
        self.pw_mlp = ScaledMLP(P, C + NR, cfg.pair_mlp, bias=False)
        with torch.no_grad():
            self.pair_mlp.b_out.fill_(1.0)
            self.freq_mlp.b_out.copy_(torch.rand(NR, dtype=f64) * 12.0 + 0.01)

        # edge and coefficient networks (sections 3.3-3.5)
        self.edge_mlp = ScaledMLP(2 * NR, (lf + 3) * C, cfg.edge_mlp)
        self.coeff_mlps = nn.ModuleList(ScaledMLP((2 + t) * C, 3 * (lf + 1) * C, cfg.coeff_mlp) for t in range(T + 1))
        self.layer_mlps = nn.ModuleList(ScaledMLP((3 + t) * C, (lf + 1 + L + 1) * C, cfg.coeff_mlp) for t in range(T))

        # node-level mixings and path weights
        paths = coupling_paths(L, lf)
        self.w_sp = nn.Parameter(torch.randn(S, C, C, dtype=f64))
        self.omega = nn.Parameter(torch.randn(T, S, 3, C, C, dtype=f64))
        self.path_weights = nn.Parameter(torch.randn(T, len(paths), S, C, dtype=f64))

        # readout (section 3.6)
        self.readout = ScaledMLP((T + 2) * C, 1, cfg.readout_mlp, bias=cfg.readout_bias)
        self.scale = nn.Parameter(torch.ones(S, dtype=f64))
        self.shift = nn.Parameter(torch.zeros(S, dtype=f64))

        # constant index tables
        deg_L = torch.from_numpy(degrees(L))
        self.register_buffer("l_of_L", deg_L, persistent=False)  # (n_L,) degree of each component
        self.register_buffer("l_of_f", deg_L[: (lf + 1) ** 2].clone(), persistent=False)  # (n_l,)
        inv = 1.0 / torch.sqrt((2.0 * self.l_of_f.to(f64) + 1.0) * (lf + 1))
        self.register_buffer("inv_sqrt_deg", inv[:, None], persistent=False)  # (n_l, 1)
        self._register_tensor_product(paths, lf)

    def _register_tensor_product(self, paths: list[tuple[int, int, int]], lf: int) -> None:
        """Sparse list of the non-zero CG entries of every path, with 1/sqrt(N_lf) folded in."""
        n_per_lf = [sum(1 for p in paths if p[2] == l) for l in range(lf + 1)]
        i1, i2, io, ip, coef = [], [], [], [], []
        for k, (l1, l2, l3) in enumerate(paths):
            cg = real_clebsch_gordan(l1, l2, l3)
            for a, b, c in zip(*np.nonzero(cg)):
                i1.append(l1 * l1 + a)
                i2.append(l2 * l2 + b)
                io.append(l3 * l3 + c)
                ip.append(k)
                coef.append(cg[a, b, c] / math.sqrt(n_per_lf[l3]))
        self.register_buffer("tp_in1", torch.tensor(i1), persistent=False)
        self.register_buffer("tp_in2", torch.tensor(i2), persistent=False)
        self.register_buffer("tp_out", torch.tensor(io), persistent=False)
        self.register_buffer("tp_path", torch.tensor(ip), persistent=False)
        self.register_buffer("tp_coef", torch.tensor(coef, dtype=torch.float64)[:, None], persistent=False)
        self.paths = paths

    @property
    def dtype(self) -> torch.dtype:
        return self.w_sp.dtype

    def set_energy_shift(self, shift_per_species) -> None:
        """The readout's per-species shift, in units of ``force_rms`` (set that first)."""
        with torch.no_grad():
            self.shift.copy_(torch.as_tensor(shift_per_species, dtype=torch.float64) / self.force_rms.double())

    def network_energies(self, graph: AtomicGraph, species: torch.Tensor, fused: bool = False,
                         edges_within: list[int] | None = None, exchange=None) -> torch.Tensor:
        return self.atomic_energies_of(graph.positions, species, graph.edge_index, graph.shifts, graph.cell,
                                       graph.batch, fused=fused, edges_within=edges_within, exchange=exchange)

    def atomic_energies_of(
        self,
        positions: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        cell: torch.Tensor,
        batch: torch.Tensor,
        trace: dict[str, Any] | None = None,
        fused: bool = False,
        edges_within: list[int] | None = None,
        exchange=None,
    ) -> torch.Tensor:
        """Per-atom energies (N,) of the network (without the reference energies) from
        positions, species indices and the edge list.

        ``trace``, if a dict, receives intermediate arrays named as in the parity files
        (``n``, ``Yhat``, ``sigma``, ``k``, ``w``, ``V_in``, ``V_prenorm``,
        ``readout_input``, ``readout_raw``) for debugging. ``fused`` selects the fused CPU
        kernels for the edge blocks (first derivatives only); see :meth:`forward`.
        ``edges_within`` (:meth:`forward`): layer t then runs over the edges whose centre
        is at most T - 1 - t pairs from the atoms wanted, the only ones whose features
        layer t + 1 still reads (layer 0's coefficients Q too); the rest of the embedding
        over every edge. ``exchange`` (:meth:`forward`): called on ``V`` before every
        layer, the only node features a layer reads on the neighbour side.
        """
        cfg = self.config
        N, E = positions.shape[0], edge_index.shape[1]
        S, C, L, lf, T, eps = cfg.num_species, cfg.num_channels, cfg.sh_lmax, cfg.feat_lmax, cfg.num_layers, cfg.eps
        n_f = (lf + 1) ** 2
        i, j = edge_index[0], edge_index[1]

        # -- geometry (3.1) and pair tables (3.2), computed on the S^2 ordered pairs
        r = edge_vectors(positions, edge_index, shifts, cell, batch)  # (E, 3)
        use_kernels = fused and trace is None and kernels.fits(C, cfg.num_radial, L)
        csr = kernels.build_csr(edge_index, N, positions.dtype) if use_kernels else None
        sigma = self.pair_mlp(self.pair_inputs)  # (S^2, P)
        k_tab, w_tab = self.freq_mlp(sigma), self.pw_mlp(sigma)  # (S^2, N_R), (S^2, C+N_R)
        pair = species.index_select(0, i) * S + species.index_select(0, j)
        Y, f, X0, e0 = self._geometry(r, pair, k_tab, w_tab, csr)
        coordination = scatter(f, i, N)  # (N,) sum of cutoff weights, 0 for an isolated atom
        n = coordination + eps
        inv_n = (1.0 / n)[:, None]  # (N, 1)

        # -- initial edge coefficients (3.3)
        G = mlp(self.edge_mlp, X0, csr).view(E, lf + 3, C)
        e_feat = torch.cat([e0, G[:, lf + 2]], dim=1)  # (E, 2C)
        rho = [scatter(G[:, lf + 1], i, N)]  # rho^(0): (N, C)

        # -- initial node-equivariant features (3.4)
        A0 = self._density(Y, G, lf + 1, i, N, csr)  # (N, n_l, C), rows 0..l of G
        V = self._mix(A0 * inv_n[:, :, None], self.w_sp, species, 1.0 / math.sqrt(C), csr)
        if edges_within is not None and T > 0:  # layer 0 reads Q only on its own edges
            E = int(edges_within[T - 1])
        Q = mlp(self.coeff_mlps[0], e_feat[:E], csr).view(E, 3, lf + 1, C)
        if trace is not None:
            trace.update(n=n, Yhat=Y, sigma=sigma, k=k_tab, w=w_tab, V_in=[], V_prenorm=[])

        # -- message passing (3.5)
        for t in range(T):
            if edges_within is not None and int(edges_within[T - 1 - t]) < edge_index.shape[1]:
                E = int(edges_within[T - 1 - t])  # the halo shrinks by one pair per layer
                Y, e_feat, Q, edge_index = Y[:E], e_feat[:E], Q[:E], edge_index[:, :E]
                csr = kernels.build_csr(edge_index, N, positions.dtype) if csr is not None else None
            if exchange is not None:  # the neighbours' features from the ranks that own them
                V = exchange(V)
            if trace is not None:
                trace["V_in"].append(V)
            om = self.omega[t]  # (S, 3, C, C), picked by the species of each node
            Vt = V * self.inv_sqrt_deg  # (N, n_l, C)
            eps_e, rho_t = self._edge_invariants(Y, Vt, Q, edge_index, N, csr)  # Eqs. 7, 8
            rho.append(rho_t)
            e_feat = torch.cat([e_feat, eps_e], dim=1)  # (E, (3+t) C)
            B = mlp(self.layer_mlps[t], e_feat, csr).view(E, lf + 1 + L + 1, C)
            Z = self._mix(V, om[:, 0], species, 1.0 / math.sqrt(C), csr)  # node level, species of j
            U, A = self._virtual_node_and_density(Y, Z, B, edge_index, N, csr)  # Eqs. 10, 9
            w_path = self.path_weights[t].transpose(0, 1).index_select(0, species)  # (N, paths, C)
            Pt = self._tensor_product(A, U, w_path, csr) * (inv_n * inv_n)[:, :, None]  # Eq. 11
            V = self._mix(V, om[:, 2], species, 1.0, csr) + self._mix(Pt, om[:, 1], species, 1.0, csr)
            V = V * (1.0 / math.sqrt(2.0 * C))  # Eq. 12
            if t < T - 1:
                Q = mlp(self.coeff_mlps[t + 1], e_feat, csr).view(E, 3, lf + 1, C)
            else:  # the readout only needs Q0 + Q1 + Q2
                Q = mlp(self.coeff_mlps[T], e_feat, csr, fold=3).view(E, 1, lf + 1, C)
            if trace is not None:
                trace["V_prenorm"].append(V)
            if cfg.use_feature_norm:
                ms = (V * V).sum((1, 2), keepdim=True) * (1.0 / ((lf + 1) * C))
                V = V / torch.sqrt(ms + eps)

        # -- readout (3.6): sum_lm V_lm / sqrt(3(2l+1)(l+1)) sum_e (Q0+Q1+Q2)_l Yhat_lm
        _, rho_T = self._edge_invariants(Y, V * self.inv_sqrt_deg, Q, edge_index, N, csr)
        rho.append(rho_T * (1.0 / math.sqrt(3.0)))
        x = torch.cat(rho, dim=1) * inv_n  # (N, (T+2) C)
        raw = mlp(self.readout, x, csr).squeeze(-1)  # (N,)
        if trace is not None:
            trace.update(readout_input=x, readout_raw=raw)
        energies = self.force_rms * (self.scale.index_select(0, species) * raw + self.shift.index_select(0, species))
        if cfg.isolated_atom_switch is not None:
            energies = energies * coordination_switch(coordination, cfg.isolated_atom_switch)
        if cfg.zbl:
            energies = energies + zbl_energies(r, pair, i, N, self._zbl_tables(), eps)
        return energies

    # -- the edge blocks, each with its eager formula and the fused kernel ---------------
    def _geometry(self, r, pair, k_tab, w_tab, csr):
        """Per-edge inputs from the edge vectors ``r`` (E, 3) and the pair tables.

        Returns ``Y`` (E, n_L) harmonics of r/d, ``f`` (E,) the cutoff weight
        phi_p(d/r_c)^2 (zero outside), ``X0`` = [w_{C:} f, sinc(k d/r_c) f] (E, 2 N_R), the
        edge MLP's input, and ``e0`` = w_{:C} f (E, C), with d = sqrt(|r|^2 + eps) and k, w
        the table rows of the edge's species pair ``pair`` (E,).
        """
        cfg = self.config
        eps, C = cfg.eps, cfg.num_channels
        if csr is not None:
            return edge_geometry(r, pair, k_tab, w_tab, cfg.cutoff, cfg.envelope_p, eps, cfg.sh_lmax, csr)
        q = (r * r).sum(-1)
        d = torch.sqrt(q + eps)  # never sqrt(q): keeps the backward finite at q = 0
        u = d / cfg.cutoff
        inside = (q > eps) & (u < 1.0)
        f = torch.where(inside, polynomial_envelope(u, cfg.envelope_p) ** 2, torch.zeros_like(u))
        Y = normalized_spherical_harmonics(r / d[:, None], cfg.sh_lmax, eps)
        k, w = k_tab.index_select(0, pair), w_tab.index_select(0, pair)
        fc = f[:, None]
        X0 = torch.cat([w[:, C:] * fc, torch.sinc(k * u[:, None]) * fc], dim=1)
        return Y, f, X0, w[:, :C] * fc

    def _edge_invariants(self, Y, Vt, Q, edge_index, N, csr):
        """Eq. 7 ``eps_e`` (E, C) and Eq. 8 ``rho`` (N, C) from ``Q`` (E, 3, l+1, C).

        With a_{e,l} = sum_m Yhat_lm Vt_{i,lm} and b_{e,l} = sum_m Yhat_lm Vt_{j,lm}:
        eps_e = sum_l (Q0 a + Q1 b) / sqrt(2) and rho_i = sum_{e->i} sum_l Q2 a. (Eq. 8
        written as sum_lm Vt_i sum_e Q2 Yhat regroups to the same sum over edges.) With a
        single slot ``Q`` (E, 1, l+1, C) only rho is computed, from that slot.
        """
        if csr is not None:
            eps_e, rho = edge_invariants(Y, Vt, Q, csr)
            return (eps_e if Q.shape[1] == 3 else None), rho
        i, j = edge_index[0], edge_index[1]
        Yf = Y[:, : Vt.shape[1], None]
        a = self._contract_m(Yf * Vt.index_select(0, i))  # (E, l+1, C)
        rho = scatter((Q[:, -1] * a).sum(1), i, N)
        if Q.shape[1] == 1:
            return None, rho
        b = self._contract_m(Yf * Vt.index_select(0, j))
        eps_e = (Q[:, 0] * a + Q[:, 1] * b).sum(1) * (1.0 / math.sqrt(2.0))
        return eps_e, rho

    def _virtual_node_and_density(self, Y, Z, B, edge_index, N, csr):
        """Eq. 10 ``U_i = sum_e beta_l Z_j`` (N, n_l, C) and Eq. 9 ``A_i = sum_e alpha_l Yhat``
        (N, n_L, C), with ``B`` (E, l+1 + L+1, C) = [beta ; alpha]."""
        lf1, L1 = self.config.feat_lmax + 1, self.config.sh_lmax + 1
        if csr is not None:
            return node_densities(Y, Z, B, lf1, lf1, L1, csr)
        i, j = edge_index[0], edge_index[1]
        beta, alpha = B[:, :lf1], B[:, lf1:]
        U = scatter(beta.index_select(1, self.l_of_f) * Z.index_select(0, j), i, N)
        A = scatter(alpha.index_select(1, self.l_of_L) * Y[:, :, None], i, N)
        return U, A

    def _density(self, Y, G, rows, i, N, csr):
        """Eq. 5 density ``sum_e g_l Yhat_lm`` from the first ``rows`` = l+1 rows of ``G``."""
        if csr is not None:
            return node_densities(Y, None, G, 0, 0, rows, csr)
        return scatter(G[:, :rows].index_select(1, self.l_of_f) * Y[:, : rows * rows, None], i, N)

    @staticmethod
    def _mix(X: torch.Tensor, W: torch.Tensor, species: torch.Tensor, scale: float, csr) -> torch.Tensor:
        """``scale * X[i] @ W[species[i]]`` on nodes: X (N, M, C), W (S, C, C)."""
        if csr is not None:
            return species_matmul(X, W, species, scale, csr)
        out = torch.bmm(X, W.index_select(0, species))
        return out if scale == 1.0 else out * scale

    def _contract_m(self, x: torch.Tensor) -> torch.Tensor:
        """Sum (E, n_l, C) over m within each degree l -> (E, l+1, C)."""
        lf = self.config.feat_lmax
        if torch.compiler.is_compiling():  # static slices fuse into reductions
            return torch.stack([x[:, l * l : (l + 1) ** 2].sum(1) for l in range(lf + 1)], dim=1)
        return x.new_zeros(x.shape[0], lf + 1, x.shape[2]).index_add_(1, self.l_of_f, x)

    def _tensor_product(self, A: torch.Tensor, U: torch.Tensor, w: torch.Tensor, csr=None) -> torch.Tensor:
        """Channel-wise CG product on nodes.

        ``A`` (N, n_L, C), ``U`` (N, n_l, C), path weights ``w`` (N, |paths|, C) ->
        (N, n_l, C): ``sum_paths w * sum_{m1 m2} C[m1, m2, mf] A[m1] U[m2] / sqrt(N_lf)``.
        Cost O(N K C) with K the number of non-zero CG entries. With ``csr`` (the fused
        kernels) one pass per node; the path weights then carry no gradient.
        """
        if csr is not None:
            return tensor_product(A, U, w, self.tp_in1, self.tp_in2, self.tp_out, self.tp_path, self.tp_coef, csr)
        terms = A.index_select(1, self.tp_in1) * U.index_select(1, self.tp_in2)  # (N, K, C)
        terms = terms * (w.index_select(1, self.tp_path) * self.tp_coef)
        return terms.new_zeros(A.shape[0], U.shape[1], A.shape[2]).index_add_(1, self.tp_out, terms)

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"species={cfg.symbols}, cutoff={cfg.cutoff}, L={cfg.sh_lmax}, l={cfg.feat_lmax}, "
            f"C={cfg.num_channels}, T={cfg.num_layers}, parameters={self.num_parameters():,}"
        )
