"""Helpers for tests: tiny random models and random structures, built in milliseconds, and
the invariants every model must keep as checks anyone can run.

Used by the project's own test suite and usable on any model configuration or a new
architecture: ``check_invariants(random_model(config))`` checks rotations, reflections,
translations, permutations, forces and stress as derivatives, smoothness at the cutoff
and size extensivity in one call, in float32 or float64.
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

__all__ = ["devices", "tiny_config", "tiny_equireann_config", "tiny_leignn_config", "tiny_configs", "random_model",
           "random_molecule", "random_crystal", "evaluate", "random_rotation", "check_invariants", "INVARIANTS",
           "check_rotation", "check_reflection", "check_translation", "check_permutation", "check_forces",
           "check_stress", "check_cutoff_smoothness", "check_extensivity", "finite_difference_forces"]


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


# -- the invariants as reusable checks ----------------------------------------------------
#
# Each check takes a model (any architecture, float32 or float64), raises AssertionError
# saying what broke, and scales its tolerances to the model's precision. ``check_invariants``
# runs them all: a new architecture or configuration is checked with one call.


def random_rotation(rng: np.random.Generator | None = None) -> np.ndarray:
    """A uniformly random proper rotation matrix (det +1)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def transformed(atoms: Atoms, matrix: np.ndarray) -> Atoms:
    """``atoms`` with positions (and a periodic cell) multiplied by ``matrix``."""
    out = atoms.copy()
    out.positions = atoms.positions @ matrix.T
    if atoms.pbc.any():
        out.cell = atoms.cell.array @ matrix.T
    return out


def _tol(model, float64: float, float32: float) -> float:
    return float64 if model.dtype == torch.float64 else float32


def _close(actual, expected, atol: float, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    worst = float(np.abs(actual - expected).max()) if actual.size else 0.0
    if not worst <= atol:
        raise AssertionError(f"{what}: largest difference {worst:.3g} exceeds {atol:.3g}")


def check_rotation(model, periodic: bool = False) -> None:
    """Energies invariant, forces (and stress) equivariant under a rotation plus a
    translation; and the forces do rotate (the check could fail)."""
    atoms = random_crystal(seed=1) if periodic else random_molecule(seed=1)
    stress = periodic and getattr(model, "conservative", True)
    ref = evaluate(model, atoms, stress=stress)
    rot = random_rotation(np.random.default_rng(11))
    moved = transformed(atoms, rot)
    moved.positions += np.array([0.3, -1.7, 2.2])
    out = evaluate(model, moved, stress=stress)
    scale = max(abs(ref["energy"]), 1.0)
    _close(out["energy"], ref["energy"], _tol(model, 1e-10, 1e-5) * scale, "rotated energy")
    _close(out["energies"], ref["energies"], _tol(model, 1e-10, 1e-5) * scale, "rotated per-atom energies")
    fscale = max(np.abs(ref["forces"]).max(), 1e-3)
    _close(out["forces"], ref["forces"] @ rot.T, _tol(model, 1e-10, 1e-4) * max(fscale, 1.0), "rotated forces")
    if stress:
        _close(out["stress"], rot @ ref["stress"] @ rot.T, _tol(model, 1e-10, 1e-4), "rotated stress")
    if np.abs(ref["forces"] @ rot.T - ref["forces"]).max() < 1e-3:
        raise AssertionError("the forces hardly change under rotation: the model is (nearly) constant here, "
                             "so this check proves nothing")


def check_reflection(model) -> None:
    """Energies invariant, forces equivariant under inversion and a mirror plane."""
    atoms = random_molecule(seed=2)
    ref = evaluate(model, atoms)
    for name, matrix in (("inversion", -np.eye(3)), ("mirror", np.diag([-1.0, 1.0, 1.0]))):
        out = evaluate(model, transformed(atoms, matrix))
        _close(out["energy"], ref["energy"], _tol(model, 1e-10, 1e-5) * max(abs(ref["energy"]), 1.0),
               f"energy after {name}")
        _close(out["forces"], ref["forces"] @ matrix.T, _tol(model, 1e-10, 1e-4), f"forces after {name}")


def check_translation(model) -> None:
    """Energies and forces unchanged by a translation and by moving one atom by a lattice
    vector (or wrapping the cell)."""
    atoms = random_crystal(seed=5)
    ref = evaluate(model, atoms)
    moved = atoms.copy()
    moved.positions += np.array([0.4, 0.1, -0.3])
    moved.positions[2] += atoms.cell.array.T @ np.array([1, -2, 1])
    out = evaluate(model, moved)
    _close(out["energy"], ref["energy"], _tol(model, 1e-10, 1e-5) * max(abs(ref["energy"]), 1.0),
           "energy after a translation and a lattice shift")
    _close(out["forces"], ref["forces"], _tol(model, 1e-10, 1e-4), "forces after a translation and a lattice shift")
    moved.wrap()
    _close(evaluate(model, moved)["forces"], ref["forces"], _tol(model, 1e-10, 1e-4), "forces after wrapping")


def check_permutation(model) -> None:
    """Permuting atoms permutes per-atom energies and forces; permuting edges changes nothing."""
    atoms = random_molecule(n=9, seed=6)
    ref = evaluate(model, atoms)
    perm = np.random.default_rng(0).permutation(len(atoms))
    out = evaluate(model, atoms[perm])
    _close(out["energies"], ref["energies"][perm], _tol(model, 1e-12, 1e-5), "per-atom energies of permuted atoms")
    _close(out["forces"], ref["forces"][perm], _tol(model, 1e-12, 1e-4), "forces of permuted atoms")
    graph = build_graph(atoms, model.cutoff, dtype=model.dtype)
    order = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(1))
    shuffled = graph._replace(edge_index=graph.edge_index[:, order], shifts=graph.shifts[order])
    _close(evaluate(model, shuffled)["forces"], ref["forces"], _tol(model, 1e-12, 1e-4), "forces of permuted edges")


def near_cutoff_molecule(cutoff: float) -> Atoms:
    """A cluster in which several pairs sit at 0.90-0.99 of the cutoff."""
    atoms = random_molecule(n=6, seed=8, size=2.5)
    extra = []
    rng = np.random.default_rng(9)
    for k, frac in enumerate([0.91, 0.95, 0.985]):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        extra.append(atoms.positions[k] + frac * cutoff * direction)
    return atoms + Atoms("HOC", positions=extra)


def finite_difference_forces(model, atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    """-dE/dx by central differences of step ``h`` (Å)."""
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, c] += sign * h
                energies.append(evaluate(model, moved)["energy"])
            forces[a, c] = -(energies[0] - energies[1]) / (2 * h)
    return forces


def check_forces(model, periodic: bool = False) -> None:
    """Forces equal minus the energy's finite-difference gradient (pairs near the cutoff
    included for a molecule); conservative models only."""
    atoms = random_crystal(n=5, seed=10) if periodic else near_cutoff_molecule(model.cutoff)
    analytic = evaluate(model, atoms)["forces"]
    h = _tol(model, 1e-5, 3e-3)
    numeric = finite_difference_forces(model, atoms, h=h)
    scale = np.abs(analytic).max()
    if scale <= 1e-3:
        raise AssertionError("forces below 1e-3 eV/Å everywhere: the model is (nearly) constant here")
    _close(analytic, numeric, _tol(model, 1e-6, 2e-2) * scale + 1e-9, "forces against finite differences")


def check_stress(model) -> None:
    """Stress is symmetric and equals the energy's finite-difference strain derivative over
    the volume; conservative models only."""
    atoms = random_crystal(n=5, seed=13)
    stress = evaluate(model, atoms, stress=True)["stress"]
    _close(stress, stress.T, _tol(model, 1e-14, 1e-6), "stress symmetry")
    volume = atoms.get_volume()
    delta = _tol(model, 1e-5, 3e-3)

    def energy(strain):
        deformed = atoms.copy()
        deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        return evaluate(model, deformed)["energy"]

    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] += 0.5 * delta
            e[b, a] += 0.5 * delta
            numeric[a, b] = (energy(e) - energy(-e)) / (2 * delta) / volume
    scale = np.abs(stress).max()
    if scale <= 1e-4:
        raise AssertionError("stress below 1e-4 eV/Å^3: the model is (nearly) constant here")
    _close(stress, numeric, _tol(model, 1e-7, 2e-2) * scale + 1e-11, "stress against the strain derivative")


def check_cutoff_smoothness(model) -> None:
    """Energy and forces continuous as a pair crosses the cutoff; a dimer beyond the cutoff
    is two isolated atoms; conservative models only."""
    cutoff = model.cutoff
    base = random_molecule(n=7, seed=15, size=2.4)
    rng = np.random.default_rng(3)
    for _ in range(200):  # a direction in which only the probe-anchor pair is near the cutoff
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        probe = base.positions[0] + cutoff * direction
        others = np.linalg.norm(base.positions[1:] - probe, axis=1)
        if np.abs(others - cutoff).min() > 0.05 and (others < cutoff).any():
            break
    delta = _tol(model, 1e-6, 2e-5)
    inner, outer = (evaluate(model, base + Atoms("O", positions=[base.positions[0] + r * direction]))
                    for r in (cutoff - delta, cutoff + delta))
    fmax = max(np.linalg.norm(inner["forces"], axis=1).max(), 1e-3)
    _close(inner["energy"], outer["energy"], 2 * delta * fmax + _tol(model, 1e-10, 1e-5) * max(abs(inner["energy"]), 1),
           "energy across the cutoff")
    _close(inner["forces"], outer["forces"], _tol(model, 1e-4, 1e-3), "forces across the cutoff")
    isolated = evaluate(model, Atoms("C"))["energy"] + evaluate(model, Atoms("O"))["energy"]
    far = evaluate(model, Atoms("CO", positions=[[0, 0, 0], [cutoff + 0.01, 0, 0]]))["energy"]
    _close(far, isolated, _tol(model, 0.0, 1e-5) * max(abs(isolated), 1.0), "a dimer beyond the cutoff")


def check_extensivity(model, local: bool = True) -> None:
    """A 2x2x2 supercell has eight times the energy (the same stress and forces), a batch
    gives each structure's own results, and (``local`` models) two far-apart copies of a
    molecule have twice its energy."""
    conservative = getattr(model, "conservative", True)
    atoms = random_crystal(n=4, seed=20)
    ref = evaluate(model, atoms, stress=conservative)
    big = evaluate(model, atoms.repeat((2, 2, 2)), stress=conservative)
    _close(big["energy"], 8 * ref["energy"], _tol(model, 1e-11, 1e-5) * max(abs(big["energy"]), 1.0),
           "supercell energy")
    _close(big["forces"], np.tile(ref["forces"], (8, 1)), _tol(model, 1e-11, 1e-4), "supercell forces")
    if conservative:
        _close(big["stress"], ref["stress"], _tol(model, 1e-11, 1e-5), "supercell stress")
    from .graph import collate

    frames = [random_molecule(n=5, seed=17), random_crystal(n=4, seed=18), random_molecule(n=8, seed=19)]
    graphs = [build_graph(f, model.cutoff, dtype=model.dtype) for f in frames]
    batch = energy_forces_stress(model, collate(graphs))
    singles = [evaluate(model, g) for g in graphs]
    _close(batch["energy"].detach().double().numpy(), [s["energy"] for s in singles],
           _tol(model, 1e-13, 1e-5) * max(abs(s["energy"]) for s in singles), "batched energies")
    _close(batch["forces"].detach().double().numpy(), np.concatenate([s["forces"] for s in singles]),
           _tol(model, 1e-13, 1e-4), "batched forces")
    if local:
        one = random_molecule(n=6, seed=16)
        two = one + one.copy()
        two.positions[len(one):] += np.array([20.0, 0.0, 0.0])
        a, b = evaluate(model, one), evaluate(model, two)
        _close(b["energy"], 2 * a["energy"], _tol(model, 1e-12, 1e-5) * max(abs(b["energy"]), 1.0),
               "two far-apart copies")
        _close(b["forces"], np.tile(a["forces"], (2, 1)), _tol(model, 1e-13, 1e-4), "forces of two far-apart copies")


INVARIANTS = {
    "rotation": check_rotation,
    "rotation-periodic": lambda model: check_rotation(model, periodic=True),
    "reflection": check_reflection,
    "translation": check_translation,
    "permutation": check_permutation,
    "forces": check_forces,
    "forces-periodic": lambda model: check_forces(model, periodic=True),
    "stress": check_stress,
    "cutoff": check_cutoff_smoothness,
    "extensivity": check_extensivity,
}
CONSERVATIVE_ONLY = ("forces", "forces-periodic", "stress", "cutoff")


def check_invariants(model, only: list[str] | None = None) -> list[str]:
    """Run every invariant check of :data:`INVARIANTS` on ``model`` (a model of any
    architecture, or your own :class:`~ase_nemp.model.AtomisticModel`, float32 or
    float64, with species H, C and O) and raise ``AssertionError`` listing every one that
    fails. Checks that need forces from the energy are skipped for a direct-force model;
    a model with a global node skips the far-apart copies. Returns the names of the
    checks run. Give the model random, non-trivial weights (:func:`random_model`): at a
    constant model the checks say so rather than pass."""
    conservative = getattr(model, "conservative", True)
    local = not getattr(model.config, "use_global", False)
    failures, ran = [], []
    for name, check in INVARIANTS.items():
        if only is not None and name not in only or name in CONSERVATIVE_ONLY and not conservative:
            continue
        try:
            check_extensivity(model, local=local) if name == "extensivity" else check(model)
        except AssertionError as err:
            failures.append(f"{name}: {err}")
        ran.append(name)
    if failures:
        raise AssertionError("invariants broken:\n  " + "\n  ".join(failures))
    return ran
