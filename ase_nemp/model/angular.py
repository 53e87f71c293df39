"""Real spherical harmonics and real Clebsch-Gordan coefficients.

Conventions (spec section 2.2 and 4)
------------------------------------
* Components of degree ``l`` are flattened with index ``l**2 + l + m`` for
  ``m = -l..l``; for ``l = 1`` the order is therefore ``(y, z, x)``.
* Real harmonics are the textbook "real form" without an extra Condon-Shortley
  sign: ``m < 0`` terms go like ``sin(|m| phi)``, ``m > 0`` like ``cos(m phi)``,
  both with positive coefficients.
* The model uses the *component-normalised* harmonics
  ``Yhat_lm = sqrt(2l+1) Y_lm(v) / sqrt(sum_m' Y_lm'(v)**2 + eps)``, evaluated
  on ``v = r / sqrt(|r|**2 + eps)``.  Both ``eps`` must be kept to reproduce the
  reference implementation to 1e-10.
* Clebsch-Gordan tensors ``C[l1, l2, lf]`` have shape ``(2l1+1, 2l2+1, 2lf+1)``,
  unit Frobenius norm, and only paths with even ``l1 + l2 + lf`` are used (so
  every coupling is invariant under inversion as well as rotation).

Everything here is computed from first principles (the Racah formula and a
unitary change of basis), once, in float64 numpy; the model stores the result
as buffers.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "num_components",
    "degrees",
    "solid_harmonics",
    "normalized_spherical_harmonics",
    "complex_clebsch_gordan",
    "real_clebsch_gordan",
    "coupling_paths",
]


def num_components(lmax: int) -> int:
    """Number of (l, m) components up to ``lmax``: ``(lmax + 1)**2``."""
    return (lmax + 1) ** 2


def degrees(lmax: int) -> np.ndarray:
    """Degree ``l`` of every flattened component ``l**2 + l + m`` up to ``lmax``."""
    return np.concatenate([np.full(2 * l + 1, l, dtype=np.int64) for l in range(lmax + 1)])


# ---------------------------------------------------------------------------
# Spherical harmonics
# ---------------------------------------------------------------------------


def solid_harmonics(v: torch.Tensor, lmax: int) -> torch.Tensor:
    """Real solid harmonics ``|v|**l Y_lm(v / |v|)`` for ``l <= lmax``.

    Parameters
    ----------
    v : (..., 3) tensor
        Cartesian vectors (any length, including zero).
    lmax : int
        Largest degree.

    Returns
    -------
    (..., (lmax+1)**2) tensor, components ordered ``l**2 + l + m``.

    Notes
    -----
    Homogeneous polynomials obtained by the standard recursion: for
    ``|m| <= l-1``::

        Y_lm = a_lm (z Y_{l-1,m} + b_lm r^2 Y_{l-2,m}),
        a_lm = sqrt((4l^2 - 1)/(l^2 - m^2)),
        b_lm = -sqrt(((l-1)^2 - m^2)/(4(l-1)^2 - 1))     (zero if |m| = l-1)

    and the sectoral terms
    ``Y_{l,+l} = c_l (x Y_{l-1,l-1} - y Y_{l-1,-(l-1)})``,
    ``Y_{l,-l} = c_l (x Y_{l-1,-(l-1)} + y Y_{l-1,l-1})``, ``c_l = sqrt(1 + 1/(2l))``.
    """
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    r2 = x * x + y * y + z * z
    # rows[l][m + l] holds Y_lm
    rows: list[list[torch.Tensor]] = [[torch.full_like(x, 0.5 / math.sqrt(math.pi))]]
    if lmax >= 1:
        c1 = math.sqrt(3.0 / (4.0 * math.pi))
        rows.append([c1 * y, c1 * z, c1 * x])
    for l in range(2, lmax + 1):
        prev, prev2 = rows[l - 1], rows[l - 2]
        row: list[torch.Tensor] = [None] * (2 * l + 1)  # type: ignore[list-item]
        for m in range(-(l - 1), l):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            term = z * prev[m + l - 1]
            if abs(m) <= l - 2:
                b = -math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
                term = term + b * r2 * prev2[m + l - 2]
            row[m + l] = a * term
        c = math.sqrt(1.0 + 1.0 / (2 * l))
        row[2 * l] = c * (x * prev[2 * l - 2] - y * prev[0])
        row[0] = c * (x * prev[0] + y * prev[2 * l - 2])
        rows.append(row)
    return torch.stack([t for row in rows for t in row], dim=-1)


def normalized_spherical_harmonics(v: torch.Tensor, lmax: int, eps: float) -> torch.Tensor:
    """Component-normalised harmonics ``Yhat`` used by the model (spec section 2.2).

    ``Yhat_lm = sqrt(2l+1) Y_lm(v) / sqrt(sum_m' Y_lm'(v)**2 + eps)``; for a unit
    vector ``sum_m Yhat_lm**2 = 2l+1`` (up to O(eps)) and ``Yhat_00 = 1``.

    Parameters
    ----------
    v : (E, 3) tensor
        Edge directions ``r / sqrt(|r|**2 + eps)`` (slightly shorter than unit).
    lmax : int
    eps : float
        The model's regulariser (1e-6 by default).

    Returns
    -------
    (E, (lmax+1)**2) tensor.
    """
    y = solid_harmonics(v, lmax)
    blocks = []
    for l in range(lmax + 1):
        yl = y[..., l * l : (l + 1) * (l + 1)]
        norm = torch.sqrt((yl * yl).sum(-1, keepdim=True) + eps)
        blocks.append(yl * (math.sqrt(2 * l + 1) / norm))
    return torch.cat(blocks, dim=-1)


# ---------------------------------------------------------------------------
# Clebsch-Gordan coefficients
# ---------------------------------------------------------------------------


def complex_clebsch_gordan(l1: int, l2: int, l3: int) -> np.ndarray:
    """Condon-Shortley ``<l1 m1 l2 m2 | l3 m3>`` as an array ``K[m1, m2, m3]``.

    Indices run over ``m + l`` for each degree. Racah's closed formula, evaluated
    with exact integer factorials.
    """
    f = math.factorial
    out = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    if l3 < abs(l1 - l2) or l3 > l1 + l2:
        return out
    pref_tri = (2 * l3 + 1) * f(l3 + l1 - l2) * f(l3 - l1 + l2) * f(l1 + l2 - l3) / f(l1 + l2 + l3 + 1)
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            m3 = m1 + m2
            if abs(m3) > l3:
                continue
            pref_m = f(l3 + m3) * f(l3 - m3) * f(l1 - m1) * f(l1 + m1) * f(l2 - m2) * f(l2 + m2)
            total = 0.0
            for k in range(0, l1 + l2 - l3 + 1):
                dens = (
                    k,
                    l1 + l2 - l3 - k,
                    l1 - m1 - k,
                    l2 + m2 - k,
                    l3 - l2 + m1 + k,
                    l3 - l1 - m2 + k,
                )
                if min(dens) < 0:
                    continue
                total += (-1) ** k / math.prod(f(d) for d in dens)
            out[m1 + l1, m2 + l2, m3 + l3] = math.sqrt(pref_tri * pref_m) * total
    return out


def _complex_to_real(l: int) -> np.ndarray:
    """Unitary ``U`` with ``Y_real = U @ Y_complex`` (rows: real m, cols: complex m)."""
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=complex)
    s = 1.0 / math.sqrt(2.0)
    for m in range(-l, l + 1):
        if m > 0:
            u[m + l, m + l] = (-1) ** m * s
            u[m + l, -m + l] = s
        elif m == 0:
            u[l, l] = 1.0
        else:
            u[m + l, m + l] = 1j * s
            u[m + l, -m + l] = -1j * (-1) ** m * s
    return u


@lru_cache(maxsize=None)
def real_clebsch_gordan(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real-basis coupling tensor ``C[m1, m2, m3]`` for an even path (spec section 4.1).

    Unit Frobenius norm; phase chosen so that ``C[l, l, 0] = +delta / sqrt(2l+1)``
    and ``C[1,1,2][z, z, 0] = +2/sqrt(30)``. Only defined for even ``l1+l2+l3``
    (for odd paths the real-basis tensor is imaginary and the model never uses it).
    """
    if (l1 + l2 + l3) % 2:
        raise ValueError(f"path ({l1}, {l2}, {l3}) is odd; only even paths are real")
    k = complex_clebsch_gordan(l1, l2, l3)
    u1, u2, u3 = _complex_to_real(l1), _complex_to_real(l2), _complex_to_real(l3)
    x = np.einsum("ai,bj,ck,ijk->abc", u1.conj(), u2.conj(), u3, k) / math.sqrt(2 * l3 + 1)
    if np.abs(x.imag).max() > 1e-12:
        raise AssertionError("real CG has an imaginary part; basis change is wrong")
    sign = (-1) ** ((l1 + l2 - l3) // 2)
    out = sign * x.real
    out[np.abs(out) < 1e-14] = 0.0
    out.setflags(write=False)
    return out


def coupling_paths(sh_lmax: int, feat_lmax: int) -> list[tuple[int, int, int]]:
    """Tensor-product paths ``(l1, l2, lf)`` in the spec's order (section 2.3).

    ``l1 <= sh_lmax`` labels the harmonic density A, ``l2 <= feat_lmax`` the
    virtual node U, ``lf <= feat_lmax`` the output; ``l1+l2+lf`` even. Order:
    ``lf`` outer, ``l1`` middle, ``l2`` inner. This order fixes the layout of the
    path weights.
    """
    if feat_lmax > sh_lmax:
        raise ValueError(f"feat_lmax ({feat_lmax}) must not exceed sh_lmax ({sh_lmax})")
    paths = []
    for lf in range(feat_lmax + 1):
        for l1 in range(sh_lmax + 1):
            for l2 in range(abs(l1 - lf), min(feat_lmax, l1 + lf) + 1):
                if (l1 + l2 + lf) % 2 == 0:
                    paths.append((l1, l2, lf))
    return paths
