"""Helpers for tests: tiny random models and random structures, built in milliseconds.

Used by the project's own test suite and usable on any model configuration, e.g. to
check a new configuration for the symmetries with the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase import Atoms

from .graph import AtomicGraph
from .model import (NEMP, LEIGNN, EquiREANN, EquiREANNConfig, LEIGNNConfig, ModelConfig, NEMPConfig,
                    energy_forces_stress)
from .nl import build_graph

__all__ = ["devices", "tiny_config", "tiny_equireann_config", "tiny_leignn_config", "tiny_configs", "random_model", "random_molecule", "random_crystal", "evaluate"]


def devices() -> list[str]:
    """The devices the tests run on: the CPU always, and CUDA where torch finds it."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_config(**overrides: Any) -> NEMPConfig:
    """A small but complete configuration (every network deep, L = 3 > l = 2)."""
    base = dict(
        species=(1, 6, 8), cutoff=3.5, sh_lmax=3, feat_lmax=2, num_channels=4, num_layers=2,
        num_radial=4, pair_dim=8, pair_mlp=(1, 8), edge_mlp=(1, 8), coeff_mlp=(1, 8), readout_mlp=(1, 8),
    )
    base.update(overrides)
    return NEMPConfig(**base)


def tiny_equireann_config(**overrides: Any) -> EquiREANNConfig:
    """A small EquiREANN configuration (L = 2, K = 4, M = 6, T = 2, narrow MLPs)."""
    base = dict(species=(1, 6, 8), cutoff=3.5, sh_lmax=2, num_radial=4, num_orbitals=6, num_iterations=2,
                pair_mlp=(4, 4), iter_mlp=(8,), readout_mlp=(8, 8), neigh_scale=2.0)
    base.update(overrides)
    return EquiREANNConfig(**base)


def tiny_leignn_config(**overrides: Any) -> LEIGNNConfig:
    """A small LEIGNN configuration (H = 8, T = 2, R = 8), direct forces unless overridden."""
    base = dict(species=(1, 6, 8), cutoff=3.5, num_channels=8, num_layers=2, num_radial=8)
    base.update(overrides)
    return LEIGNNConfig(**base)


def tiny_configs(**overrides: Any) -> dict[str, ModelConfig]:
    """One tiny configuration per architecture (and variant), by test id."""
    return {
        "nemp": tiny_config(**overrides),
        "equireann": tiny_equireann_config(**overrides),
        "equireann-atomic-number": tiny_equireann_config(species_input="atomic_number", **overrides),
        "leignn-direct": tiny_leignn_config(**overrides),
        "leignn-conservative": tiny_leignn_config(force_mode="conservative", **overrides),
    }


def random_model(config: ModelConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A random-weight model whose every parameter matters (any architecture).

    At initialisation some parts are constant by design (NEMP's pair embedding barely
    depends on species, its per-species readout is the identity; EquiREANN's output
    layers are zero and all species pairs share one embedding); here they are moved
    away from those values so that tests also catch species and pair-order mistakes.
    """
    config = config or tiny_config()
    if isinstance(config, EquiREANNConfig):
        return _random_equireann(config, seed).to(dtype)
    if isinstance(config, LEIGNNConfig):  # PyTorch's default initialisation is random throughout
        model = LEIGNN(config, dtype=torch.float64, seed=seed)
        gen = torch.Generator().manual_seed(seed + 1)
        model.set_reference_energies((-10.0 * torch.rand(config.num_species, generator=gen, dtype=torch.float64)).tolist(),
                                     force_rms=1.3)
        return model.to(dtype)
    model = NEMP(config, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mlp in (model.pair_mlp, model.freq_mlp):
            for name, p in mlp.named_parameters():
                if name.startswith("w"):
                    p.mul_(20.0)
                elif name != "b_out":
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.scale.copy_(0.6 + 0.8 * torch.rand(model.scale.shape, generator=gen, dtype=torch.float64))
        model.shift.copy_(0.5 * torch.randn(model.shift.shape, generator=gen, dtype=torch.float64))
        e0 = -10.0 * torch.rand(model.atomic_energies.shape, generator=gen, dtype=torch.float64)
        model.set_reference_energies(e0.tolist(), force_rms=1.3)
    return model.to(dtype)


def _random_equireann(config: EquiREANNConfig, seed: int) -> EquiREANN:
    model = EquiREANN(config, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def noise(p: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * torch.randn(p.shape, generator=gen, dtype=p.dtype)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.abs().sum() > 0:  # the zero output layers
                p.copy_(noise(p, 1.0 / p.shape[1] ** 0.5))
            elif name in ("pair_table", "centre_table"):
                p.add_(noise(p, 0.3))  # every pair and species its own start
            elif name.endswith("beta"):
                p.mul_(4.0)
            elif name == "contraction":
                p.mul_(3.0)  # densities of order one rather than 1e-2
        e0 = -10.0 * torch.rand(model.atomic_energies.shape, generator=gen, dtype=torch.float64)
        model.set_reference_energies(e0.tolist(), force_rms=1.3)
        model.readout.net[-1].bias.fill_(0.7)
    return model


def _place(rng: np.random.Generator, n: int, box: np.ndarray, min_dist: float, cell: np.ndarray | None, pbc) -> np.ndarray:
    pos: list[np.ndarray] = []
    tries = 0
    while len(pos) < n:
        tries += 1
        if tries > 100000:
            raise RuntimeError("could not place atoms; box too small for min_dist")
        p = rng.random(3) @ box
        ok = True
        for q in pos:
            d = p - q
            if cell is not None:
                frac = np.linalg.solve(cell.T, d)
                frac -= np.where(pbc, np.round(frac), 0)
                d = frac @ cell
            if np.linalg.norm(d) < min_dist:
                ok = False
                break
        if ok:
            pos.append(p)
    return np.array(pos)


def random_molecule(n: int = 8, seed: int = 0, symbols: str = "HCO", size: float = 3.0, min_dist: float = 0.9) -> Atoms:
    """A random non-periodic cluster with interatomic distances >= ``min_dist`` Å."""
    rng = np.random.default_rng(seed)
    box = np.eye(3) * size
    pos = _place(rng, n, box, min_dist, None, None)
    numbers = rng.choice([Atoms(s).numbers[0] for s in symbols], size=n)
    return Atoms(numbers=numbers, positions=pos)


def random_crystal(n: int = 6, seed: int = 0, symbols: str = "HCO", pbc=(True, True, True), min_dist: float = 0.9) -> Atoms:
    """A random, skewed (triclinic) periodic cell of about 3 Å with ``n`` atoms."""
    rng = np.random.default_rng(seed)
    cell = np.array([[3.1, 0.0, 0.0], [0.7, 3.3, 0.0], [-0.5, 0.4, 3.4]]) + 0.2 * rng.standard_normal((3, 3))
    pos = _place(rng, n, cell, min_dist, cell, np.asarray(pbc))
    numbers = rng.choice([Atoms(s).numbers[0] for s in symbols], size=n)
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=pbc)


def evaluate(model: NEMP, atoms: Atoms | AtomicGraph, stress: bool = False) -> dict[str, np.ndarray]:
    """Energy, per-atom energies, forces (and stress as a 3x3 matrix) as float64 numpy,
    computed on the model's device."""
    graph = atoms if isinstance(atoms, AtomicGraph) else build_graph(atoms, model.cutoff, dtype=model.dtype,
                                                                    device=model.device)
    out = energy_forces_stress(model, graph, stress=stress)
    res = {k: v.detach().to(device="cpu", dtype=torch.float64).numpy() for k, v in out.items()}
    res["energy"] = res["energy"][0] if res["energy"].shape == (1,) else res["energy"]
    if stress:
        res["stress"] = res["stress"][0] if res["stress"].shape[0] == 1 else res["stress"]
    return res
