"""Radial pieces: the smooth cutoff envelope (spec section 3.1)."""

from __future__ import annotations

import torch

__all__ = ["polynomial_envelope"]


def polynomial_envelope(u: torch.Tensor, p: int) -> torch.Tensor:
    """DimeNet polynomial envelope ``phi_p(u)`` for ``u = r / r_c`` (not clipped).

    ``phi_p(u) = 1 - (p+1)(p+2)/2 u^p + p(p+2) u^(p+1) - p(p+1)/2 u^(p+2)``;
    ``phi_p(1) = phi_p'(1) = phi_p''(1) = 0`` (a triple zero at the cutoff). The model
    uses its square and switches it off for ``u >= 1``.
    """
    up = u**p
    return 1.0 - 0.5 * (p + 1) * (p + 2) * up + p * (p + 2) * up * u - 0.5 * p * (p + 1) * up * u * u
