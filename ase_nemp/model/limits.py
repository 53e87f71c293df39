"""Physics that holds where a model has no data, by construction rather than by fitting.

Two limits, shared by every architecture:

* **The isolated-atom limit.** An atom with no neighbour inside the cutoff has exactly
  its reference energy E0 (the energy of the free atom the training data were given),
  and fragments farther apart than the cutoff therefore have the sum of their energies.
  A network's energy of an atom i is multiplied by a smooth switch of its coordination
  ``n_i = sum_j f(r_ij)`` (``f`` the model's cutoff weight, 1 at contact, 0 from the
  cutoff on)::

      E_i = E0_i + s(n_i / n_s) * E_i^network,   s(t) = t^3 (10 - 15 t + 6 t^2) on [0, 1]

  ``s`` is 0 at t = 0, 1 from t = 1 on, and twice continuously differentiable, so the
  forces stay smooth. With the default ``n_s = 0.5`` every atom that has one neighbour
  closer than about 0.58 of the cutoff is untouched (s = 1): the switch only acts on
  atoms that are leaving everything else, where a network trained on condensed-phase
  data is otherwise free to put any energy.

* **Short-range repulsion (ZBL).** The universal screened nuclear repulsion of Ziegler,
  Biersack and Littmark, as used for this purpose in NequIP and MACE::

      V(r) = k_e Z_a Z_b / r * phi(r / a),   a = 0.8854 a_0 / (Z_a^0.23 + Z_b^0.23)
      phi(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x}
             + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x}

  switched off smoothly by the polynomial envelope ``phi_6(r / r_ab)`` with
  ``r_ab = f (R_a + R_b)``, R the covalent radii (Cordero et al. 2008) and f the config's
  ``zbl_radius_scale`` (default 0.6), so that it acts only well inside a bond length and
  the network fits the rest. MACE switches off at the full sum of the radii (f = 1); on
  the CO / CO2 / O2 data of the shipped model that leaves ZBL forces of 18 eV/Å (median
  of the largest per structure) at the bond lengths, three times the reference forces
  themselves, for the network to cancel. With f = 0.6 the C-O repulsion starts at 0.85 Å
  (bond 1.13 Å) and Pd-Pd at 1.67 Å (bond 2.75 Å). Each directed edge gives half of V to
  its centre atom, so per-atom energies still sum to the total.
"""

from __future__ import annotations

import torch

from .radial import polynomial_envelope

__all__ = ["coordination_switch", "zbl_tables", "zbl_energies", "COULOMB_EV_A", "ZBL_SCREENING_A"]

COULOMB_EV_A = 14.399645  # e^2 / (4 pi eps_0) in eV Å
ZBL_SCREENING_A = 0.46850  # 0.8854 Bohr radii in Å
_ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)


def coordination_switch(coordination: torch.Tensor, width: float) -> torch.Tensor:
    """``s(n / width)``: 0 for an atom without neighbours, 1 for ``n >= width`` (C2 smooth)."""
    t = (coordination * (1.0 / width)).clamp(0.0, 1.0)
    return t * t * t * (10.0 + t * (6.0 * t - 15.0))


def zbl_tables(species_z: list[int] | tuple[int, ...], radius_scale: float = 0.6,
               dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Per ordered species pair (row ``a * S + b``): ``k_e Z_a Z_b`` (eV Å), the screening
    length a (Å) and the switch-off radius ``r_ab = radius_scale (R_a + R_b)`` (Å)."""
    from ase.data import covalent_radii

    z = torch.tensor([float(v) for v in species_z], dtype=torch.float64)
    radius = torch.tensor([float(covalent_radii[int(v)]) for v in species_z], dtype=torch.float64)
    za, zb = z[:, None], z[None, :]
    return {
        "zbl_charge": (COULOMB_EV_A * za * zb).reshape(-1).to(dtype),
        "zbl_length": (ZBL_SCREENING_A / (za**0.23 + zb**0.23)).reshape(-1).to(dtype),
        "zbl_rmax": (radius_scale * (radius[:, None] + radius[None, :])).reshape(-1).to(dtype),
    }


def zbl_energies(
    r: torch.Tensor, pair: torch.Tensor, centre: torch.Tensor, num_atoms: int, tables: dict[str, torch.Tensor],
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-atom ZBL energies (N,) in eV: half of ``V(r_e)`` of every edge e, on its centre.

    ``r`` (E, 3) edge vectors in Å, ``pair`` (E,) their species-pair rows, ``centre``
    (E,) the centre atoms. Edges beyond ``r_ab`` contribute exactly zero.
    """
    # finite at r = 0 (V ~ 1e10 eV there); eps^2 keeps V(r) exact to 1e-12 relative elsewhere
    d = torch.sqrt((r * r).sum(-1) + eps * eps)
    charge = tables["zbl_charge"].index_select(0, pair)
    length = tables["zbl_length"].index_select(0, pair)
    rmax = tables["zbl_rmax"].index_select(0, pair)
    x = d / length
    phi = sum(c * torch.exp(-k * x) for c, k in zip(_ZBL_C, _ZBL_D))
    u = d / rmax
    envelope = torch.where(u < 1.0, polynomial_envelope(u.clamp(max=1.0), 6), torch.zeros_like(u))
    pair_energy = 0.5 * charge * phi / d * envelope
    return pair_energy.new_zeros(num_atoms).index_add_(0, centre, pair_energy)
