"""Run configuration for ``nemp train``: a YAML file with four sections.

.. code-block:: yaml

    data:
      train: train.xyz            # any file ase.io.read understands (or a list of files)
      valid: null                 # separate validation file (or list of files), or
      valid_fraction: 0.1         # ... this fraction of `train` (fixed seed)
      test: null                  # optional: evaluated with the best model at the end
      isolated_atoms: null        # single-atom energies (E0s); fitted by least squares if absent
      energy_key: energy          # labels in atoms.info/arrays or calculator results
      forces_key: forces
      stress_key: stress
    model:
      architecture: nemp          # nemp (default), equireann or leignn
      preset: emlp                # a preset of that architecture's config (optional) ...
      cutoff: 5.0                 # ... and/or any field of it; species default to the data's
    training:                     # fields of TrainConfig (below)
      epochs: 200
      batch_size: 4
    output:
      dir: runs/my-model          # checkpoint.pt, best.pt, metrics.csv, learning_curve.png

Relative paths are resolved against the directory of the YAML file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..devices import resolve_device

__all__ = ["DataConfig", "TrainConfig", "RunConfig"]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` of a dataclass field names, or a ValueError saying
    what was expected. YAML reads ``1e-5`` (no dot) as a string: numbers written so are
    taken as numbers; booleans are never numbers."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{where} may not be null")
    if isinstance(value, bool) and bool not in options and (int in options or float in options):
        raise ValueError(f"{where} must be a {'number' if float in options else 'whole number'}, not {value!r}")
    if float in options and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where} must be a number, not {value!r}")
    if int in options and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{where} must be a whole number, not {value!r}")
    if bool in options:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be true or false, not {value!r}")
    if list in options and isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, (str, os.PathLike)) for v in value):
            raise ValueError(f"{where} must be a file or a non-empty list of files, not {value!r}")
        return [str(v) for v in value]
    if str in options:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise ValueError(f"{where} must be text, not {value!r}")
    return value


def checked_fields(cls, values: Mapping[str, Any], section: str, also: tuple[str, ...] = (),
                   where: str = "") -> dict[str, Any]:
    """``values`` converted to the field types of dataclass ``cls``; keys that are not its
    fields are refused, naming the known ones (``also``: keys the caller handles itself;
    ``where``: words after the section's name in the message)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in section '{section}'{where}; known keys: "
                         f"{list(also) + sorted(known)}")
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}


def _strict(cls, values: Mapping[str, Any], section: str):
    """``cls(**values)`` with unknown keys refused and values converted to the field types."""
    return cls(**checked_fields(cls, values, section))


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file; a clear error if it is missing, not YAML, or
    not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{str(path)!r} is not valid YAML: {problem}{where}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not a text file") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{str(path)!r} must hold a mapping of sections (data, model, training, ...)")
    return raw


@dataclass(frozen=True)
class DataConfig:
    """Where the data are and how the labels are called (section ``data``)."""

    train: str | list  # a file, or a list of files read one after another
    valid: str | list | None = None  # a file, or a list of files
    valid_fraction: float = 0.1
    test: str | None = None
    isolated_atoms: str | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (section ``training``). Defaults follow the NEMP recipe.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs (one pass over the training set plus validation).
    max_time : float or None
        Wall-clock budget in seconds; training stops cleanly after the epoch that exceeds it.
    batch_size, valid_batch_size : int
        Structures per optimiser step / per validation batch.
    optimizer : {"amsgrad", "adamw"}
        ``amsgrad``: coupled L2 (``weight_decay * theta`` added to the gradient before
        clipping) then AMSGrad, as in the NEMP reference; ``adamw``: decoupled weight decay.
    lr_warm, lr_peak, lr_min : float
        Learning rate at epoch 0, after the warm-up, and the floor that ends training.
    warmup_epochs : int
        Linear warm-up from ``lr_warm`` to ``lr_peak``.
    lr_schedule : {"plateau", "cosine"}
        ``plateau`` (the NEMP recipe): reduce on plateau until ``lr_min``. ``cosine``:
        after the warm-up, anneal from ``lr_peak`` to ``lr_min`` along a cosine over the
        budget (``max_time`` if set, else ``epochs``); suited to a fixed time budget.
    plateau_factor, plateau_patience : float, int
        Multiply the learning rate by ``factor`` after ``patience`` epochs without a
        relative improvement of 1e-4 of the validation loss.
    weight_decay, clip_norm : float
        L2 coefficient and global gradient-norm clip.
    ema_decay : float
        Exponential moving average of the parameters, used for validation and the model
        file. After n optimiser steps the decay is ``min(ema_decay, (1 + n) / (10 + n))``
        so that the average does not drag the random initial parameters along for
        thousands of steps.
    energy_weight, force_weight, force_weight_final, stress_weight : float
        Loss weights. The force weight starts at ``force_weight`` and, after the warm-up,
        follows the learning rate linearly down to ``force_weight_final``.
    dtype : {"float32", "float64"}
    device : str
    seed : int
        Seeds the data split, the shuffling and the initial parameters.
    threads : int or None
        torch CPU threads (None leaves torch's default).
    workers : int
        Split every batch into this many shards whose losses and gradients are computed
        concurrently, one per thread, then summed in a fixed order: the same step as one
        pass over the whole batch (up to float rounding), computed in parallel. The
        per-op work of these small graphs does not spread well over intra-op threads,
        so on a CPU ``workers: 2, threads: 1`` is about twice as fast as ``threads: 2``;
        keep ``workers * threads`` at most the number of cores. Processes under
        ``torchrun`` (:mod:`ase_nemp.train.distributed`) do the same without sharing one
        Python interpreter, and are faster with ``compile``.
    compile : bool
        Compile the training step (energy, forces, stress and the loss's gradient) with
        ``torch.compile`` (:mod:`ase_nemp.train.compiled`): about twice the steps per
        second on a CPU, after compilation at the start (and at every resume): about
        half a minute from inductor's on-disk cache, four to five minutes without it on a
        2-core CPU (the C++ wrapper it generates on a CPU is slow to build). Validation
        runs through the same graph, compiled once more without the parameters' backward.
        Needs a C++ compiler on the CPU. On a 2-core CPU, run two processes of one thread
        each under ``torchrun``.
    config_type_weights : dict or None
        ``{config_type: weight}``: the weight of the structures of that ``config_type`` in
        the loss (training and validation), 1 for the others; for example a few
        structures with very large forces (a repulsive wall, two-body curves) at 0.1, so
        that they shape the model without dominating its optimisation.
    checkpoint_every : int
        Write the resumable checkpoint every this many epochs (and always on exit).
    valid_every : int
        Validate (and so pick the best model, check for divergence and count plateau
        patience) every this many epochs, and always after the last one. 1 validates
        every epoch; a larger value saves the validation's time when epochs are short.
        The skipped epochs have NaN in the validation columns of ``metrics.csv``.
    init_from : str or None
        Start from the parameters of this model file (fine-tuning, e.g. a second stage
        with a larger energy weight): its architecture, elements and reference energies
        are kept, so the ``model`` section must be empty. A relative path is resolved
        against the config file. The optimiser and schedules start afresh. For a
        committee, the file must be a committee of the same size: member k starts from
        member k.
    committee : int
        Train this many members (seeds ``seed``, ``seed + 1``, ... for the initial
        parameters and the data order; one train/validation split for all) one after
        another, each in ``output.dir/member-k`` with the settings above, and save them
        together as one committee file ``output.dir/best.pt``, whose spread estimates
        the error (``energy_uncertainty``, ``forces_uncertainty`` in the calculator).
        1 trains a single model.
    """

    epochs: int = 1000
    max_time: float | None = None
    batch_size: int = 4
    valid_batch_size: int = 32
    optimizer: str = "amsgrad"
    lr_warm: float = 1e-3
    lr_peak: float = 1e-2
    lr_min: float = 1e-5
    warmup_epochs: int = 10
    lr_schedule: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 20
    weight_decay: float = 1e-6
    clip_norm: float = 0.1
    ema_decay: float = 0.999
    energy_weight: float = 1.0
    force_weight: float = 10.0
    force_weight_final: float = 0.1
    stress_weight: float = 0.0
    config_type_weights: dict | None = None
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    workers: int = 1
    compile: bool = False
    checkpoint_every: int = 1
    valid_every: int = 1
    init_from: str | None = None
    committee: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            problems.append(f"threads must be a whole number >= 1 or null (torch's default), not {self.threads!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            problems.append(f"epochs must be a whole number >= 1, not {self.epochs!r}")
        for name in ("checkpoint_every", "valid_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a whole number >= 1, not {value!r}")
        if not isinstance(self.committee, int) or self.committee < 1:
            problems.append(f"committee must be a whole number >= 1, not {self.committee!r}")
        if self.lr_schedule not in ("plateau", "cosine"):
            problems.append(f"lr_schedule must be 'plateau' or 'cosine', not {self.lr_schedule!r}")
        if self.optimizer not in ("amsgrad", "adamw"):
            problems.append(f"optimizer must be 'amsgrad' or 'adamw', not {self.optimizer!r}")
        if not 0 < self.lr_min < self.lr_peak:
            problems.append("need 0 < lr_min < lr_peak")
        if self.batch_size < 1 or self.valid_batch_size < 1:
            problems.append("batch sizes must be >= 1")
        if not 1 <= self.workers <= self.batch_size:
            problems.append("workers must be between 1 and batch_size")
        weights = self.config_type_weights
        if weights is not None and (not isinstance(weights, dict) or not all(
                isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < math.inf
                for k, v in weights.items())):
            problems.append(f"config_type_weights must map config_type names to finite weights >= 0, not {weights!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1)")
        if not 0.0 < self.plateau_factor < 1.0:
            problems.append("plateau_factor must be in (0, 1)")
        if self.dtype not in ("float32", "float64"):
            problems.append(f"dtype must be float32 or float64, not {self.dtype!r}")
        try:
            resolve_device(self.device)
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))


@dataclass(frozen=True)
class RunConfig:
    """A whole training run: data, model settings, training settings, output folder."""

    data: DataConfig
    model: dict = field(default_factory=dict)
    training: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/nemp"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str | Path = ".") -> "RunConfig":
        unknown = sorted(set(raw) - {"data", "model", "training", "output"})
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; sections are data, model, training, output")
        if "data" not in raw or not raw["data"] or "train" not in raw["data"]:
            raise ValueError("the config needs a 'data' section with at least 'train: <file>'")
        base = Path(base_dir)

        def resolve(p):
            if isinstance(p, (list, tuple)):
                return [resolve(q) for q in p]
            if not isinstance(p, (str, os.PathLike)):
                return p  # None, or a value the field check below refuses with its name
            return str((base / p).resolve()) if not Path(p).is_absolute() else str(p)

        data = dict(raw["data"])
        for key in ("train", "valid", "test", "isolated_atoms"):
            if key in data:
                data[key] = resolve(data[key])
        training = dict(raw.get("training") or {})
        if training.get("init_from") is not None:
            training["init_from"] = resolve(training["init_from"])
            if raw.get("model"):
                raise ValueError("training.init_from takes the architecture from the model file: "
                                 "leave the 'model' section out")
        output = dict(raw.get("output") or {})
        out_unknown = sorted(set(output) - {"dir"})
        if out_unknown:
            raise ValueError(f"unknown key(s) {out_unknown} in section 'output'; known keys: ['dir']")
        return cls(
            data=_strict(DataConfig, data, "data"),
            model=dict(raw.get("model") or {}),
            training=_strict(TrainConfig, training, "training"),
            output_dir=resolve(output.get("dir", "runs/nemp")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_yaml(path), base_dir=Path(path).parent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": dataclasses.asdict(self.data),
            "model": dict(self.model),
            "training": dataclasses.asdict(self.training),
            "output": {"dir": self.output_dir},
        }
