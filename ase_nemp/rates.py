"""Rate constants of an elementary step by harmonic transition-state theory.

Vineyard's harmonic TST (J. Phys. Chem. Solids 3, 121 (1957)):

    k(T) = nu * exp(-Ea / kB T),    nu = prod_{i=1}^{3n} nu_i(IS) / prod_{i=1}^{3n-1} nu_i(TS)

with ``Ea = E(TS) - E(IS)`` the classical barrier of the step from the minimum it starts
from (eV), ``nu_i`` the real harmonic frequencies (s^-1, ``nu = E / h`` from ASE's mode
energies) of the initial minimum and of the saddle without its imaginary mode, both from
Hessians over the same atoms. The zero-point-corrected barrier is reported alongside:
``Ea_ZPE = Ea + ZPE(TS, real modes) - ZPE(IS)``.

Which atoms: the Hessians span the atoms that are free to move (not fixed by
``FixAtoms``; for the demo, the adsorbates and the two upper Pd layers), so the prefactor
is that of the model's own degrees of freedom. When every atom of a non-periodic
structure is free, its 6 (3 with periodic boundaries) zero modes of rigid motion are
dropped from both products.

With a committee, every member gives its own barrier (its energies at the same two
geometries) and its own prefactor (its own Hessians there); the spreads (sample standard
deviations over the members) of ``Ea``, ``log10 nu`` and ``log10 k(T)`` are the committee's
uncertainty of the rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase.units import _hplanck, _e, kB
from ase.vibrations import VibrationsData

__all__ = ["HarmonicRate", "harmonic_rate", "vineyard_prefactor", "PLANCK_EV_S"]

#: Planck's constant in eV s
PLANCK_EV_S = _hplanck / _e


def _zero_modes(vib: VibrationsData) -> int:
    """Modes of rigid motion in the Hessian: none when some atom is left out of it."""
    atoms = vib.get_atoms()
    if len(vib.get_indices()) < len(atoms) or len(atoms) < 2:
        return 0
    return 3 if atoms.pbc.any() else 6


def _mode_energies(vib: VibrationsData, imaginary: int) -> np.ndarray:
    """Real mode energies (eV): without the ``imaginary`` most negative modes and the
    modes of rigid motion; a soft imaginary mode left enters with its magnitude."""
    energies = vib.get_energies()
    curvature = np.where(np.abs(energies.imag) > 0, -np.abs(energies.imag) ** 2, energies.real**2)
    order = np.argsort(curvature)
    kept = order[imaginary:]
    zero = _zero_modes(vib)
    if zero:
        kept = kept[np.argsort(np.abs(curvature[kept]))][zero:]
    return np.sort(np.abs(energies[kept]))


def vineyard_prefactor(initial: VibrationsData, saddle: VibrationsData) -> float:
    """log10 of Vineyard's prefactor in s^-1 (see the module docstring)."""
    if sorted(initial.get_indices()) != sorted(saddle.get_indices()):
        raise ValueError("the two Hessians of a rate must span the same atoms")
    e_is = _mode_energies(initial, 0)
    e_ts = _mode_energies(saddle, 1)
    if len(e_is) != len(e_ts) + 1:
        raise ValueError("the initial state and the saddle do not have one mode in difference")
    if (e_is <= 0).any() or (e_ts <= 0).any():
        raise ValueError("a zero-frequency mode: the Hessian is singular and the prefactor undefined")
    log_nu = np.log10(e_is).sum() - np.log10(e_ts).sum() - np.log10(PLANCK_EV_S)
    return float(log_nu)


def _zpe(vib: VibrationsData, imaginary: int) -> float:
    return 0.5 * float(_mode_energies(vib, imaginary).sum())


@dataclass
class HarmonicRate:
    """A step's harmonic-TST rate (see the module docstring).

    Attributes
    ----------
    barrier : float
        eV, ``Ea``.
    zpe_barrier : float
        eV, ``Ea`` with the zero-point energies.
    log10_prefactor : float
        log10(nu / s^-1).
    temperatures : ndarray
        K.
    log10_rate : ndarray
        log10(k / s^-1) at each temperature.
    barrier_spread, log10_prefactor_spread : float or None
        Committee spreads (eV; decades), None for a single model.
    log10_rate_spread : ndarray or None
        Committee spread of log10 k at each temperature (decades).
    member_barriers, member_log10_prefactors : ndarray or None
        Each member's values.
    """

    barrier: float
    zpe_barrier: float
    log10_prefactor: float
    temperatures: np.ndarray
    log10_rate: np.ndarray
    barrier_spread: float | None = None
    log10_prefactor_spread: float | None = None
    log10_rate_spread: np.ndarray | None = None
    member_barriers: np.ndarray | None = None
    member_log10_prefactors: np.ndarray | None = None

    @property
    def prefactor(self) -> float:
        """s^-1."""
        return 10.0**self.log10_prefactor

    @property
    def rate(self) -> np.ndarray:
        """s^-1 at each temperature."""
        return 10.0**self.log10_rate


def _log10_rate(log10_prefactor, barrier, temperatures: np.ndarray) -> np.ndarray:
    return np.asarray(log10_prefactor)[..., None] - np.asarray(barrier)[..., None] / (kB * temperatures) / np.log(10)


def harmonic_rate(initial: VibrationsData, saddle: VibrationsData, barrier: float,
                  temperatures: Sequence[float] = (300.0, 500.0, 700.0),
                  member_barriers: Sequence[float] | None = None) -> HarmonicRate:
    """Vineyard's rate of one step from the Hessians of its initial minimum and saddle.

    Parameters
    ----------
    initial, saddle : VibrationsData
        Hessians over the same atoms (from :func:`ase_nemp.hessian`); with a committee
        their ``.members`` give the spread.
    barrier : float
        eV, E(saddle) - E(initial minimum).
    temperatures : sequence of float
        K.
    member_barriers : sequence of float, optional
        Each committee member's barrier (eV) at the same two geometries, in the order
        of ``.members``.

    Returns
    -------
    HarmonicRate
    """
    temperatures = np.asarray(temperatures, dtype=float).reshape(-1)
    if not (temperatures > 0).all() or not np.isfinite(temperatures).all():
        raise ValueError(f"temperatures must be positive and finite (K), got {temperatures.tolist()}")
    if not np.isfinite(barrier):
        raise ValueError(f"the barrier is not a finite number: {barrier}")
    log_nu = vineyard_prefactor(initial, saddle)
    zpe_barrier = barrier + _zpe(saddle, 1) - _zpe(initial, 0)
    rate = HarmonicRate(barrier=float(barrier), zpe_barrier=float(zpe_barrier), log10_prefactor=log_nu,
                        temperatures=temperatures, log10_rate=_log10_rate(log_nu, barrier, temperatures))
    members_is, members_ts = getattr(initial, "members", None), getattr(saddle, "members", None)
    if member_barriers is not None and members_is and members_ts:
        if not len(member_barriers) == len(members_is) == len(members_ts):
            raise ValueError("one barrier and two Hessians are needed per committee member")
        eb = np.asarray(member_barriers, dtype=float)
        nu = np.array([vineyard_prefactor(a, b) for a, b in zip(members_is, members_ts)])
        log_k = _log10_rate(nu, eb, temperatures)
        rate.member_barriers, rate.member_log10_prefactors = eb, nu
        rate.barrier_spread = float(eb.std(ddof=1))
        rate.log10_prefactor_spread = float(nu.std(ddof=1))
        rate.log10_rate_spread = log_k.std(axis=0, ddof=1)
    return rate
