"""Setting up a training run: the data (read, split, neighbour lists), the model (from the
config or a file, with reference energies and force scale from the data), the optimiser,
and the checks that a new run overwrites nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..files import read_structures
from ..model import AtomisticModel, ModelConfig, config_class, model_class
from .config import RunConfig, TrainConfig, checked_fields
from .data import LabelKeys, Sample, build_samples, fit_atomic_energies, isolated_atom_energies, split_indices

__all__ = ["prepare_data", "build_model", "model_config", "starting_model", "make_optimizer", "file_digest",
           "data_names", "check_fresh_folder", "RUN_FILES", "weigh_config_types", "model_from_checkpoint",
           "warn_if_stress_ignored", "config_text", "data_digests", "ema_copy"]


def file_digest(path: str | list | None) -> str | None:
    """SHA-256 of a data file's contents (of the files in order, for a list), to notice a file
    edited between a run and its resume."""
    import hashlib

    paths = path if isinstance(path, (list, tuple)) else [path]
    if not all(p and os.path.exists(p) for p in paths):
        return None
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def data_names(train) -> str:
    """The training file's name (names, comma-separated, for a list of files)."""
    return ", ".join(os.path.basename(str(p)) for p in (train if isinstance(train, (list, tuple)) else [train]))


def prepare_data(run: RunConfig, cutoff: float, species: tuple[int, ...] | None, progress: bool = True):
    """Read, split and neighbour-list the data. Returns (train, valid, species)."""
    d = run.data
    keys = LabelKeys(d.energy_key, d.forces_key, d.stress_key)
    frames = read_structures(d.train)
    if d.valid:
        train_frames, valid_frames = frames, read_structures(d.valid)
        train_idx, valid_idx = np.arange(len(frames)), np.arange(len(valid_frames))
    else:
        train_idx, valid_idx = split_indices(len(frames), d.valid_fraction, run.training.seed)
        train_frames, valid_frames = [frames[k] for k in train_idx], [frames[k] for k in valid_idx]
    if not valid_frames:
        raise ValueError("no validation structures: set data.valid or a positive data.valid_fraction")
    if not len(train_idx):
        raise ValueError(f"no training structures: data.valid_fraction {d.valid_fraction} of {len(frames)} structures "
                         "leaves none to train on")
    if species is None:
        species = tuple(sorted({int(z) for f in train_frames + valid_frames for z in f.numbers}))
    train = build_samples(train_frames, cutoff, keys, species, train_idx, progress=progress)
    valid = build_samples(valid_frames, cutoff, keys, species, valid_idx, progress=progress)
    return train, valid, species


def build_model(run: RunConfig, train: list[Sample], valid: list[Sample], species: tuple[int, ...],
                seed: int | None = None) -> AtomisticModel:
    """Model from the ``model`` section (``architecture``: nemp by default), with E0s, force
    scale and readout shift from the data.

    ``seed`` (default ``training.seed``) seeds the initial parameters."""
    architecture, cfg = model_config(run.model, species)
    model = model_class(architecture)(cfg, dtype=torch.float64, seed=run.training.seed if seed is None else seed)
    # reference energies: isolated atoms if given, else a least-squares fit on the training set
    numbers = [s.graph.numbers.numpy() for s in train]
    energies = [s.energy for s in train]
    if run.data.isolated_atoms:
        keys = LabelKeys(run.data.energy_key, run.data.forces_key, run.data.stress_key)
        e0 = isolated_atom_energies(read_structures(run.data.isolated_atoms), keys)
        missing = [z for z in cfg.species if z not in e0]
        if missing:
            from ase.data import chemical_symbols

            raise ValueError(f"isolated_atoms file lacks element(s) {', '.join(chemical_symbols[z] for z in missing)}")
        e0 = np.array([e0[z] for z in cfg.species])
    else:
        e0 = fit_atomic_energies(numbers, energies, cfg.species)
    forces = np.concatenate([s.forces for s in train + valid])
    force_rms = float(np.sqrt(np.mean(forces**2)))
    model.set_reference_energies(e0.tolist(), force_rms=max(force_rms, 1e-3))
    # start the per-species readout shift at the least-squares residual per atom
    residual = [e - float(np.sum(e0[np.searchsorted(cfg.species, n)])) for e, n in zip(energies, numbers)]
    model.set_energy_shift(fit_atomic_energies(numbers, residual, cfg.species))
    return model


def model_config(section: dict, species: tuple[int, ...] | None) -> tuple[str, ModelConfig]:
    """``(architecture, config)`` from the ``model`` section for data with elements
    ``species`` (None before the data are read: a placeholder element, for settings such
    as the cutoff). ``architecture`` (default ``nemp``) picks the config class."""
    fields = dict(section)
    preset = fields.pop("preset", None)
    architecture = str(fields.pop("architecture", "nemp")).lower()
    try:
        config_cls = config_class(architecture)
    except ValueError as err:
        raise ValueError(f"model.architecture: {err}") from None
    fields = checked_fields(config_cls, fields, "model", also=("architecture", "preset"),
                            where=f" for architecture {architecture!r}")
    fields.setdefault("species", species or (1,))
    try:
        cfg = config_cls.preset(preset, **fields) if preset else config_cls(**fields)
    except TypeError as err:  # a wrong type inside a structured field (an MLP spec, the species)
        raise ValueError(f"invalid value in section 'model': {err}") from None
    missing = sorted(set(species or ()) - set(cfg.species))
    if missing:
        from ase.data import chemical_symbols

        raise ValueError(f"model.species {list(cfg.symbols)} lacks element(s) "
                         f"{', '.join(chemical_symbols[z] for z in missing)} found in the data")
    return architecture, cfg


def starting_model(start, init_from: str, member: int | None, size: int) -> AtomisticModel:
    """The model an ``init_from`` run starts from: the file's model, or member k of its committee."""
    if start.is_committee:
        if member is None or start.size != size:
            raise ValueError(f"init_from {init_from} is a committee of {start.size}; set "
                             f"training.committee: {start.size} to fine-tune it (member k starts from member k)")
        return start.members[member]
    if member is not None:
        raise ValueError(f"init_from {init_from} holds a single model; a committee of {size} needs a "
                         f"committee file of {size} members or a start from random parameters")
    return start


def data_digests(run: RunConfig) -> dict[str, str | None]:
    """The data files' digests (:func:`file_digest`), kept in the checkpoint."""
    return {key: file_digest(getattr(run.data, key)) for key in ("train", "valid", "isolated_atoms")}


def ema_copy(model: AtomisticModel) -> AtomisticModel:
    """The model's copy that holds the exponential moving average of its parameters."""
    import copy

    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def config_text(run: RunConfig) -> str:
    """The run's resolved configuration as the YAML of its ``config.yaml``."""
    import yaml

    return yaml.safe_dump(run.to_dict(), sort_keys=False)


def weigh_config_types(samples: list[Sample], weights: dict | None) -> None:
    """Give every sample the loss weight of its ``config_type`` (1 where none is given)."""
    weights = weights or {}
    for sample in samples:
        sample.weight = float(weights.get(sample.config_type, 1.0))


def model_from_checkpoint(ckpt: dict) -> AtomisticModel:
    """The trained model of a checkpoint (float64; the trainer moves it)."""
    architecture = ckpt.get("architecture", "nemp")  # checkpoints before the registry: NEMP
    model = model_class(architecture)(config_class(architecture).from_dict(ckpt["model_config"]), dtype=torch.float64)
    model.load_state_dict(ckpt["model"])
    return model


def warn_if_stress_ignored(model: AtomisticModel, train: list[Sample], stress_weight: float) -> None:
    """Say so when stress labels cannot be trained: a direct-force model has no stress."""
    with_stress = sum(sample.stress is not None for sample in train)
    if not model.conservative and with_stress and stress_weight > 0:
        import warnings

        warnings.warn(f"{with_stress} training structures carry stress labels, but a {model.architecture} model "
                      "with direct forces has no stress (it is not a strain derivative of an energy): "
                      f"stress_weight {stress_weight} is ignored and the stress is not trained. Use "
                      "force_mode: conservative to train it, or stress_weight: 0 to say so", stacklevel=4)


def make_optimizer(params: list, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AMSGrad (default) or AdamW over ``params`` at the peak learning rate."""
    # one fused kernel for all parameters: half the time of the per-tensor loop here
    fused = device.type in ("cpu", "cuda")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr_peak, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=cfg.lr_peak, amsgrad=True, weight_decay=0.0, fused=fused)


# the files a training run writes into its output folder
RUN_FILES = ("checkpoint.pt", "best.pt", "metrics.csv", "config.yaml", "learning_curve.png", "test_metrics.md",
             "test_metrics.json", "test_parity.png", "committee.md", "calibration.png")


def check_fresh_folder(out: Path, config_text: str | None = None) -> None:
    """Refuse to start a new run where it would overwrite files: results of an earlier
    run, or the user's own files of the same names (``output.dir: .`` next to one's own
    ``config.yaml``). A ``config.yaml`` identical to this run's own is the trace of a
    start interrupted before its first checkpoint, and may be replaced."""
    taken = [name for name in RUN_FILES if (out / name).exists()]
    if "config.yaml" in taken and config_text is not None and (out / "config.yaml").read_text() == config_text:
        taken.remove("config.yaml")
    taken += sorted(p.name for p in out.glob("member-*") if p.is_dir())
    if taken:
        raise FileExistsError(f"{str(out)!r} already holds {', '.join(taken)}: an earlier run's files or your own; "
                              "use --resume to continue that run, or pick another output.dir (nothing was overwritten)")
