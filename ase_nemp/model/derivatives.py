"""Energy derivatives: forces and stress by autograd, outside the model's ``forward``.

Stress uses a symmetric strain (spec section 1.1): positions and cells are replaced by
``x (I + eps_sym)`` and ``H (I + eps_sym)`` with ``eps_sym = (eps + eps^T)/2`` and
``eps = 0`` a (B, 3, 3) leaf; then ``stress = (1/V) dE/deps`` with ``V = |det H|``.
This is ASE's sign convention (positive when stretching raises the energy; pressure
is ``-trace(stress)/3``) and the virial is ``-V stress``.

A model with ``conservative = False`` (LEIGNN with direct forces) returns its forces from
``forward``; they are passed on as they are, and stress is refused (StressNotAvailable).
"""

from __future__ import annotations

import torch

from ..graph import AtomicGraph

__all__ = ["energy_forces_stress", "StressNotAvailable"]


def energy_forces_stress(
    model: torch.nn.Module,
    graph: AtomicGraph,
    *,
    forces: bool = True,
    stress: bool = False,
    training: bool = False,
) -> dict[str, torch.Tensor]:
    """Evaluate energies and, by one autograd call, forces and stress.

    Parameters
    ----------
    model : NEMP
    graph : AtomicGraph
    forces : bool
        Compute ``forces = -dE/dx`` (N, 3), eV/Å.
    stress : bool
        Compute ``stress`` (B, 3, 3) in eV/Å^3 and ``virial`` (B, 3, 3) in eV. Only
        meaningful for 3D-periodic structures.
    training : bool
        Keep the graph of the derivatives (``create_graph=True``) so a loss on forces
        or stress can be back-propagated. Leave false for inference, which may then use
        the fused CPU kernels (:mod:`ase_nemp.model.kernels`).

    Returns
    -------
    dict with ``energy`` (B,), ``energies`` (N,) and, as requested, ``forces``,
    ``stress`` and ``virial``. Without ``training`` the results are detached.
    """
    if not getattr(model, "conservative", True):
        return _direct(model, graph, forces, stress, training)
    positions, cell = graph.positions, graph.cell
    inputs = []
    if forces or stress:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if stress:
        strain = torch.zeros_like(cell, requires_grad=True)  # (B, 3, 3)
        inputs.append(strain)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        x = positions + torch.bmm(positions.unsqueeze(1), sym[graph.batch]).squeeze(1)
        cell = cell + torch.bmm(cell, sym)
    else:
        x = positions
    # inference may use the fused kernels (first derivatives only); training must not
    out = model(graph._replace(positions=x, cell=cell), fused=not training)
    if not inputs:
        return {k: v if training else v.detach() for k, v in out.items()}

    grads = torch.autograd.grad(out["energy"].sum(), inputs, create_graph=training, allow_unused=True)
    result = dict(out)
    if forces:
        g = grads[0]
        result["forces"] = -g if g is not None else torch.zeros_like(positions)
    if stress:
        g = grads[-1]
        de_deps = g if g is not None else torch.zeros_like(graph.cell)
        volume = torch.linalg.det(graph.cell).abs()[:, None, None]
        result["stress"] = de_deps / volume
        result["virial"] = -de_deps
    if not training:
        result = {k: v.detach() for k, v in result.items()}
    return result


class StressNotAvailable(ValueError):
    """Stress asked of a model whose forces are not the gradient of its energy."""


NO_STRESS_MESSAGE = ("stress needs forces that are the gradient of the energy; this model reads its forces from a "
                     "direct head (LEIGNN force_mode 'direct'), so it has no stress. Use force_mode 'conservative' "
                     "for stress and cell relaxations.")


def _direct(model, graph: AtomicGraph, forces: bool, stress: bool, training: bool) -> dict[str, torch.Tensor]:
    """A direct-force model: forces are one of its outputs, and there is no stress."""
    if stress:
        raise StressNotAvailable(NO_STRESS_MESSAGE)
    with torch.set_grad_enabled(training):
        out = model(graph, fused=not training)
    if not forces:
        out = {k: v for k, v in out.items() if k != "forces"}
    return out if training else {k: v.detach() for k, v in out.items()}
