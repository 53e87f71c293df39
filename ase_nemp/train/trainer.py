"""The training loop of ``nemp train`` (design/nemp-model.md section 6).

Per epoch: one shuffled pass over the training set (AMSGrad or AdamW, gradient clipping,
an EMA of the parameters after every step), a validation pass with the EMA parameters,
then the learning-rate schedule (linear warm-up x reduce-on-plateau), the force-weight
schedule, the metrics CSV and learning curve, the best model file and the checkpoint.

Everything that decides the future of a run (parameters, EMA, optimiser, schedules,
shuffling generator, position inside the epoch) is in ``checkpoint.pt``, written
atomically; ``--resume`` therefore continues bit for bit, also after Ctrl-C or SIGTERM,
which write a checkpoint before the process exits.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import FolderLock, atomic_write, read_structures
from ..io import load, resolve_dtype, save
from ..signals import deferred_stop
from ..model import AtomisticModel, Committee, ModelConfig, config_class, energy_forces_stress, model_class
from .config import RunConfig, TrainConfig, checked_fields
from .data import (
    LabelKeys,
    Sample,
    build_samples,
    fit_atomic_energies,
    isolated_atom_energies,
    make_batch,
    split_indices,
)
from .compiled import compiled_or_none
from .distributed import ProcessGroup, is_main_process
from .loss import ErrorStats, LossWeights, batch_loss

__all__ = ["Trainer", "TrainingInterrupted", "prepare_data", "build_model", "train", "train_committee"]

CHECKPOINT_VERSION = 1


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C / SIGTERM once the checkpoint is safely on disk."""


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _file_digest(path: str | list | None) -> str | None:
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


# ---------------------------------------------------------------------------------------
# data and model set-up
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------


# the files a training run writes into its output folder
RUN_FILES = ("checkpoint.pt", "best.pt", "metrics.csv", "config.yaml", "learning_curve.png", "test_metrics.md",
             "test_metrics.json", "test_parity.png", "committee.md", "calibration.png")


def _check_fresh_folder(out: Path, config_text: str | None = None) -> None:
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


class Trainer:
    """Train a model (any architecture) from a :class:`RunConfig`.

    Parameters
    ----------
    run : RunConfig
    progress : bool
        Show tqdm progress bars.
    member : int, optional
        Index k of a committee member: the run goes to ``output.dir/member-k`` and its
        initial parameters and data order are seeded with ``training.seed + k`` (the
        train/validation split stays that of ``training.seed``).
    """

    def __init__(self, run: RunConfig, progress: bool = True, member: int | None = None) -> None:
        self.run = run
        self.cfg: TrainConfig = run.training
        self.member = member
        self.seed = self.cfg.seed + (member or 0)
        self.out = Path(run.output_dir) if member is None else Path(run.output_dir) / f"member-{member}"
        self.group = ProcessGroup(self.cfg.device)  # one process, or this one of a torchrun
        self.progress = progress and self.group.main
        self.device = self.group.device(self.cfg.device)
        self.dtype = resolve_dtype(self.cfg.dtype)
        self._stop_signal: int | None = None
        self._pool: ThreadPoolExecutor | None = None  # shard workers, made on first use
        self._metrics_rows = 0  # rows of metrics.csv written by this process since set-up

    # -- set-up ------------------------------------------------------------------------
    def setup(self, resume: bool = False, data: tuple | None = None) -> None:
        """Read the data (or take ``data`` = (train, valid, species) from :func:`prepare_data`),
        build or load the model, and restore the checkpoint when resuming. The output
        folder stays locked against other runs until :meth:`fit` returns."""
        self._lock = FolderLock(self.out) if self.group.main else None
        try:
            try:
                self._setup(resume, data)  # no collective call in here: a process may fail alone
            except BaseException as err:
                self.group.agree(err)
            self.group.agree(None)
            for module in (self.model, self.ema):  # one start for all processes, whatever happened
                self.group.broadcast_parameters(module)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _setup(self, resume: bool, data: tuple | None) -> None:
        if self.group.world > self.cfg.batch_size:
            raise ValueError(f"training.batch_size {self.cfg.batch_size} is the batch of all {self.group.world} "
                             "processes together: give every process at least one structure per step")
        ckpt_path = self.out / "checkpoint.pt"
        ckpt = None
        if resume:
            if not ckpt_path.exists():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
            try:
                ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise ValueError(f"cannot resume: the checkpoint {ckpt_path} is corrupt or empty "
                                 f"({type(err).__name__}); start the run afresh in another output.dir") from err
            if not isinstance(ckpt, dict) or "run" not in ckpt:
                raise ValueError(f"cannot resume: {ckpt_path} is not an ase-nemp training checkpoint")
            self._check_compatible(ckpt)
        elif self.group.main:
            _check_fresh_folder(self.out, self._config_text())

        start = None
        if ckpt:
            species, cutoff = tuple(ckpt["model_config"]["species"]), ckpt["model_config"]["cutoff"]
        elif self.cfg.init_from:
            start = self._starting_model(load(self.cfg.init_from, dtype=torch.float64))
            species, cutoff = start.config.species, start.config.cutoff
        else:
            species, cutoff = None, model_config(self.run.model, None)[1].cutoff
        if data is not None:
            self.train_set, self.valid_set, species = data
        else:
            self.train_set, self.valid_set, species = prepare_data(self.run, cutoff, species, self.progress)
        weights = self.cfg.config_type_weights or {}
        for sample in list(self.train_set) + list(self.valid_set):
            sample.weight = float(weights.get(sample.config_type, 1.0))
        if ckpt:
            architecture = ckpt.get("architecture", "nemp")  # checkpoints before the registry: NEMP
            model = model_class(architecture)(config_class(architecture).from_dict(ckpt["model_config"]),
                                              dtype=torch.float64)
            model.load_state_dict(ckpt["model"])
        elif start is not None:
            model = start
        else:
            model = build_model(self.run, self.train_set, self.valid_set, species, seed=self.seed)
        self.model = model.to(self.device, self.dtype)
        with_stress = sum(sample.stress is not None for sample in self.train_set)
        if not self.model.conservative and with_stress and self.cfg.stress_weight > 0:
            import warnings

            warnings.warn(f"{with_stress} training structures carry stress labels, but a {model.architecture} model "
                          "with direct forces has no stress (it is not a strain derivative of an energy): "
                          f"stress_weight {self.cfg.stress_weight} is ignored and the stress is not trained. Use "
                          "force_mode: conservative to train it, or stress_weight: 0 to say so", stacklevel=2)
        self.ema = copy.deepcopy(self.model)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = self._make_optimizer()
        self._compiled = compiled_or_none(self.model) if self.cfg.compile else None
        self.generator = torch.Generator().manual_seed(self.seed)
        self.state = {
            "epoch": 0, "step_in_epoch": 0, "perm": None, "plateau_scale": 1.0, "best_val": math.inf,
            "bad_epochs": 0, "force_weight": self.cfg.force_weight, "elapsed": 0.0, "history": [],
            "best_epoch": -1, "steps": 0,
        }
        self._best_state: dict | None = None
        if ckpt:
            self.ema.load_state_dict(ckpt["ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.generator.set_state(ckpt["generator"])
            self.state.update(ckpt["state"])
            if ckpt.get("best_state") is not None:
                self._best_state = ckpt["best_state"]
        self._digests = ckpt.get("data_digests") if ckpt else self._data_digests()
        if self.group.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()

    def _starting_model(self, start) -> AtomisticModel:
        """The model an ``init_from`` run starts from: the file's model, or member k of its committee."""
        size = self.cfg.committee
        if start.is_committee:
            if self.member is None or start.size != size:
                raise ValueError(f"init_from {self.cfg.init_from} is a committee of {start.size}; set "
                                 f"training.committee: {start.size} to fine-tune it (member k starts from member k)")
            return start.members[self.member]
        if self.member is not None:
            raise ValueError(f"init_from {self.cfg.init_from} holds a single model; a committee of {size} needs a "
                             f"committee file of {size} members or a start from random parameters")
        return start

    def _check_compatible(self, ckpt: dict) -> None:
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
        old = ckpt["run"]
        new = self.run.to_dict()
        for section in ("data", "model"):
            if old[section] != new[section]:
                raise ValueError(f"cannot resume: the '{section}' section changed since the checkpoint was written "
                                 f"(was {old[section]}, now {new[section]})")
        allowed = {"epochs", "max_time", "checkpoint_every", "valid_every", "threads", "workers", "compile"}
        changed = [k for k in new["training"] if old["training"].get(k) != new["training"][k] and k not in allowed]
        if changed:
            raise ValueError(f"cannot resume: training settings {changed} changed; only {sorted(allowed)} may change")
        for key, digest in (ckpt.get("data_digests") or {}).items():
            if digest != _file_digest(new["data"].get(key)):
                raise ValueError(f"cannot resume: the data file data.{key} ({new['data'].get(key)}) changed since the "
                                 "checkpoint was written; resuming would continue on other data")

    def _data_digests(self) -> dict[str, str | None]:
        d = self.run.data
        return {key: _file_digest(getattr(d, key)) for key in ("train", "valid", "isolated_atoms")}

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = list(self.model.parameters())
        # one fused kernel for all parameters: half the time of the per-tensor loop here
        fused = self.device.type in ("cpu", "cuda")
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.cfg.lr_peak, weight_decay=self.cfg.weight_decay, fused=fused)
        return torch.optim.Adam(params, lr=self.cfg.lr_peak, amsgrad=True, weight_decay=0.0, fused=fused)

    def _config_text(self) -> str:
        import yaml

        return yaml.safe_dump(self.run.to_dict(), sort_keys=False)

    def _write_config(self) -> None:
        text = self._config_text()
        atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    # -- schedules ---------------------------------------------------------------------
    def learning_rate(self, epoch: int) -> float:
        c = self.cfg
        r = c.lr_warm / c.lr_peak
        warm = r + min(epoch / c.warmup_epochs, 1.0) * (1.0 - r) if c.warmup_epochs > 0 else 1.0
        if c.lr_schedule == "cosine" and epoch >= c.warmup_epochs:
            return c.lr_min + 0.5 * (c.lr_peak - c.lr_min) * (1.0 + math.cos(math.pi * self._progress(epoch)))
        return c.lr_peak * self.state["plateau_scale"] * warm

    def _progress(self, epoch: int) -> float:
        """Fraction of the budget used after the warm-up (time if ``max_time`` is set)."""
        c = self.cfg
        if c.max_time is not None:
            warm_time = self.state.setdefault("warmup_time", self.state["elapsed"])
            return min(max((self.state["elapsed"] - warm_time) / max(c.max_time - warm_time, 1e-9), 0.0), 1.0)
        return min((epoch - c.warmup_epochs) / max(c.epochs - c.warmup_epochs, 1), 1.0)

    def _after_epoch_schedules(self, epoch: int, lr: float, val_loss: float | None) -> None:
        """Plateau count (``val_loss`` None: an epoch without validation) and force weight."""
        c, st = self.cfg, self.state
        if val_loss is None:
            pass
        elif val_loss < (1.0 - 1e-4) * st["best_val"]:
            st["bad_epochs"] = 0
        else:
            st["bad_epochs"] += c.valid_every  # patience counts epochs, validated or not
            if st["bad_epochs"] >= c.plateau_patience:
                st["plateau_scale"] = max(st["plateau_scale"] * c.plateau_factor, c.lr_min / c.lr_peak)
                st["bad_epochs"] = 0
        if epoch > c.warmup_epochs:
            frac = (lr - c.lr_min) / (c.lr_peak - c.lr_min)
            st["force_weight"] = c.force_weight_final + min(max(frac, 0.0), 1.0) * (c.force_weight - c.force_weight_final)

    def weights(self) -> LossWeights:
        return LossWeights(self.cfg.energy_weight, self.state["force_weight"], self.cfg.stress_weight)

    # -- one epoch ---------------------------------------------------------------------
    def _batches(self, samples: list[Sample], order, size: int):
        for start in range(0, len(order), size):
            yield start // size, make_batch([samples[k] for k in order[start : start + size]]).to(self.device, self.dtype)

    def _loss_and_grads(self, samples: list[Sample], weights: LossWeights, params: list[torch.Tensor]):
        """Loss of a set of structures and its gradient with respect to ``params``."""
        batch = make_batch(samples).to(self.device, self.dtype)
        # a direct-force model (LEIGNN) has no stress: its stress labels are not used
        stress = bool(weights.stress) and self.model.conservative
        if self._compiled is not None:
            out = self._compiled(batch.graph, stress)
        else:
            out = energy_forces_stress(self.model, batch.graph, stress=stress, training=True)
        loss = batch_loss(out, batch, weights)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]

    def _step_gradients(self, samples: list[Sample], weights: LossWeights, params: list[torch.Tensor]):
        """Loss and gradient of this process's share of one batch: in ``workers`` shards
        computed concurrently and summed in shard order (deterministic), or in one pass."""
        samples = self.group.share(samples)
        if not samples:  # a last, short batch with fewer structures than processes
            return torch.zeros((), dtype=self.dtype, device=self.device), [torch.zeros_like(p) for p in params]
        k = self.cfg.workers
        if k == 1 or len(samples) == 1:
            return self._loss_and_grads(samples, weights, params)
        bounds = [round(n * len(samples) / k) for n in range(k + 1)]
        shards = [samples[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="nemp-shard")
        parts = [f.result() for f in [self._pool.submit(self._loss_and_grads, s, weights, params) for s in shards]]
        loss, grads = parts[0]
        for part_loss, part_grads in parts[1:]:
            loss = loss + part_loss
            grads = [g + h for g, h in zip(grads, part_grads)]
        return loss, grads

    def _train_epoch(self, lr: float) -> float:
        from tqdm.auto import tqdm

        c, st = self.cfg, self.state
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if st["perm"] is None:
            st["perm"] = torch.randperm(len(self.train_set), generator=self.generator).tolist()
        order = st["perm"]
        n_steps = math.ceil(len(order) / c.batch_size)
        weights = self.weights()
        params = [p for p in self.model.parameters()]
        ema_params = [p for p in self.ema.parameters()]
        # running sums of the epoch live in the state, so that a resumed epoch reports all its steps
        st.setdefault("epoch_loss_sum", 0.0)
        st.setdefault("epoch_loss_count", 0)
        bar = tqdm(total=n_steps, initial=st["step_in_epoch"], desc=f"epoch {st['epoch']}", leave=False,
                   disable=not self.progress, dynamic_ncols=True, mininterval=1.0)
        self.model.train()
        for start in range(st["step_in_epoch"] * c.batch_size, len(order), c.batch_size):
            samples = [self.train_set[k] for k in order[start : start + c.batch_size]]
            loss, grads = self._step_gradients(samples, weights, params)
            loss, grads, stop = self.group.sum_step(loss, grads, self._stop_signal is not None)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.grad = g
                if c.optimizer == "amsgrad" and c.weight_decay:
                    for p in params:
                        p.grad.add_(p, alpha=c.weight_decay)
                torch.nn.utils.clip_grad_norm_(params, c.clip_norm, foreach=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                # the usual warm-up of the average: early steps forget the random start quickly
                decay = min(c.ema_decay, (1.0 + st["steps"]) / (10.0 + st["steps"]))
                torch._foreach_mul_(ema_params, decay)
                torch._foreach_add_(ema_params, params, alpha=1.0 - decay)
            st["steps"] += 1
            st["step_in_epoch"] += 1
            st["epoch_loss_sum"] += loss.item() / len(samples)
            st["epoch_loss_count"] += 1
            # the postfix waits for the bar's next redraw (at most one a second): refreshing at
            # every step would write to the terminal at every step
            bar.set_postfix(loss=f"{st['epoch_loss_sum'] / st['epoch_loss_count']:.4g}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            # a signal to this process (alone: at once), or to any process of the run as
            # agreed in the step's all-reduce (several: all stop after the same step)
            if stop or (self.group.world == 1 and self._stop_signal is not None):
                bar.close()
                self.save_checkpoint()
                cause = f"signal {self._stop_signal}" if self._stop_signal is not None else "another process's signal"
                raise TrainingInterrupted(f"stopped by {cause}; checkpoint written to {self.out / 'checkpoint.pt'}")
        bar.close()
        mean = st["epoch_loss_sum"] / max(st["epoch_loss_count"], 1)
        st["perm"], st["step_in_epoch"], st["epoch_loss_sum"], st["epoch_loss_count"] = None, 0, 0.0, 0
        return mean

    def validate(self, model: AtomisticModel | None = None, samples: list[Sample] | None = None) -> tuple[float, dict]:
        """Validation loss sqrt(sum loss / n) and error statistics (EMA model).

        The loss uses the configured weights (``energy_weight``, ``force_weight``,
        ``stress_weight``), not the scheduled force weight of the moment: it picks the best
        model, drives the plateau schedule and detects divergence, and a falling force
        weight would otherwise make later epochs look better."""
        model = model or self.ema
        samples = samples if samples is not None else self.valid_set
        weights = LossWeights(self.cfg.energy_weight, self.cfg.force_weight, self.cfg.stress_weight)
        stats = ErrorStats()
        total = 0.0
        model.eval()
        mine = self.group.share(samples)  # each process validates its share
        for _, batch in self._batches(mine, list(range(len(mine))), self.cfg.valid_batch_size):
            stress = bool(batch.has_stress.any()) and model.conservative
            if self._compiled is not None and model.config == self.model.config:
                with torch.no_grad():  # the training step's graph, compiled without its parameter backward
                    out = self._compiled(batch.graph, stress, model=model)
            else:
                out = energy_forces_stress(model, batch.graph, stress=stress)
            total += batch_loss(out, batch, weights).item()
            stats.add(out, batch)
        if self.group.world > 1:
            total = self.group.sum_float(total)
            stats = ErrorStats.combined(self.group.gather(stats))
        return math.sqrt(total / len(samples)), stats.summary()

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train until ``epochs``, ``max_time`` or ``lr <= lr_min``. Returns the metrics history.

        Ctrl-C / SIGTERM write the checkpoint and raise :class:`TrainingInterrupted`."""
        with deferred_stop(self._set_stop):
            try:
                return self._fit()
            finally:
                self._stop_signal = None
                self._release()

    def _fit(self) -> list[dict]:
        from tqdm.auto import tqdm

        c, st = self.cfg, self.state
        threads = torch.get_num_threads()
        if c.threads:
            torch.set_num_threads(c.threads)
        try:
            while st["epoch"] < c.epochs:
                if c.max_time is not None and st["elapsed"] >= c.max_time:
                    break  # a resumed run whose budget is used up
                epoch = st["epoch"]
                lr = self.learning_rate(epoch)
                if lr <= c.lr_min * (1 + 1e-9) and c.lr_schedule == "plateau":
                    tqdm.write(f"learning rate reached lr_min ({c.lr_min:g}); training finished")
                    break
                t0 = time.perf_counter()
                train_loss = self._train_epoch(lr)
                validate = (epoch + 1) % c.valid_every == 0 or epoch + 1 >= c.epochs
                if not validate:  # unless this epoch used up the time budget: the last one is always validated
                    # every process follows the first one's clock: the time schedule must agree
                    st["elapsed"] = self.group.from_main(st["elapsed"] + time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    validate = c.max_time is not None and st["elapsed"] >= c.max_time
                if validate:
                    val_loss, stats = self.validate()
                    st["elapsed"] = self.group.from_main(st["elapsed"] + time.perf_counter() - t0)
                    if not math.isfinite(val_loss) or val_loss > 10.0 * st["best_val"]:
                        self._restore_best(val_loss)
                        st["epoch"] += 1
                        continue
                    improved = val_loss < st["best_val"]
                    self._after_epoch_schedules(epoch, lr, val_loss)
                    if improved:
                        st["best_val"], st["best_epoch"] = val_loss, epoch
                        self._save_best(stats["all"], epoch)
                    row = self._record(epoch, lr, train_loss, val_loss, stats["all"])
                    tqdm.write(
                        f"epoch {epoch:4d}  lr {lr:.2e}  w_F {row['force_weight']:.3g}  train {train_loss:.4g}  "
                        f"val {val_loss:.4g}  E {1e3 * row['val_e_rmse_atom']:.3f} meV/atom  "
                        f"F {1e3 * row['val_f_rmse']:.2f} meV/Å{'  *' if improved else ''}"
                    ) if self.progress else None
                else:
                    self._after_epoch_schedules(epoch, lr, None)
                    self._record(epoch, lr, train_loss, math.nan, {})
                st["epoch"] += 1
                if st["epoch"] % c.checkpoint_every == 0:
                    self.save_checkpoint()
                if c.max_time is not None and st["elapsed"] >= c.max_time:
                    tqdm.write(f"time budget of {c.max_time:.0f} s used; training stopped") if self.progress else None
                    break
            self.save_checkpoint()
            self.plot_learning_curve()
        finally:
            torch.set_num_threads(threads)  # the caller's setting, as it was
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        return st["history"]

    # -- robustness ----------------------------------------------------------------------
    def _snapshot(self) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def _restore_best(self, val_loss: float) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"validation loss {val_loss:.4g} diverged (best {self.state['best_val']:.4g}); "
                   "reloading the best parameters") if self.progress else None
        if self._best_state is None:
            raise RuntimeError("training diverged before any valid epoch; lower lr_warm / lr_peak")
        self.model.load_state_dict(self._best_state["model"])
        self.ema.load_state_dict(self._best_state["ema"])
        self.optimizer.load_state_dict(self._best_state["optimizer"])

    def _save_best(self, metrics: dict, epoch: int) -> None:
        self._best_state = self._snapshot()
        if not self.group.main:
            return
        meta = {"epoch": epoch, "valid_e_rmse_per_atom_eV": metrics["e_rmse_atom"], "valid_f_rmse_eV_per_A": metrics["f_rmse"],
                "train_data": data_names(self.run.data.train), "num_train": len(self.train_set),
                "num_valid": len(self.valid_set)}
        save(self.ema, self.out / "best.pt", **meta)

    # -- files ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` (the first process of a multi-process run; the others hold
        the same state). Returns its path."""
        path = self.out / "checkpoint.pt"
        if not self.group.main:
            return path
        _atomic_torch_save({
            "version": CHECKPOINT_VERSION,
            "run": self.run.to_dict(),
            "architecture": self.model.architecture,
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "data_digests": self._digests,
            "state": self.state,
            "best_state": self._best_state,
        }, path)
        return path

    def _record(self, epoch: int, lr: float, train_loss: float, val_loss: float, metrics: dict) -> dict:
        """Append an epoch's row to the history and metrics.csv; the validation columns are
        NaN for an epoch without validation (``valid_every``)."""
        def val(key):
            return metrics.get(key, math.nan)

        row = {"epoch": epoch, "lr": lr, "force_weight": self.state["force_weight"], "train_loss": train_loss,
               "val_loss": val_loss, "val_e_rmse_atom": val("e_rmse_atom"), "val_e_rmse": val("e_rmse"),
               "val_f_rmse": val("f_rmse"), "val_f_mae": val("f_mae"), "elapsed_s": self.state["elapsed"]}
        self.state["history"].append(row)
        if self.group.main:
            self._write_metrics()
        return row

    def _write_metrics(self) -> None:
        """Write metrics.csv from the history: whole at the first call after set-up (so a
        resumed run never duplicates rows), then by appending the new rows (rewriting a
        file of thousands of rows at every short epoch would cost a percent of the run)."""
        history = self.state["history"]
        if not history:
            return
        path = self.out / "metrics.csv"

        def write_rows(fh, rows, header):
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            if header:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})

        if 0 < self._metrics_rows <= len(history) and path.exists():
            with open(path, "a", newline="") as fh:
                write_rows(fh, history[self._metrics_rows :], header=False)
        else:
            def write(tmp):
                with open(tmp, "w", newline="") as fh:
                    write_rows(fh, history, header=True)

            atomic_write(path, write)
        self._metrics_rows = len(history)

    def plot_learning_curve(self) -> Path | None:
        history = self.state["history"]
        if not history or not self.group.main:
            return None
        from .plots import learning_curve

        return learning_curve(history, self.out / "learning_curve.png")

    # -- signals -------------------------------------------------------------------------
    def _set_stop(self, signum: int) -> None:
        self._stop_signal = signum


def train(run: RunConfig, resume: bool = False, progress: bool = True) -> "Trainer | CommitteeRun":
    """Set up and run a training; returns the trainer (``trainer.out`` holds the files).

    With ``training.committee`` > 1 the members are trained one after another and saved
    as one committee file (:func:`train_committee`). With ``data.test`` set, the best
    model is evaluated on it at the end: the table goes to ``test_metrics.md`` and the
    numbers to ``test_metrics.json``.
    """
    if run.training.committee > 1:
        result = train_committee(run, resume=resume, progress=progress)
    else:
        result = Trainer(run, progress=progress)
        result.setup(resume=resume)
        result.fit()
    if run.data.test and is_main_process() and (result.out / "best.pt").exists():
        _write_test_metrics(run, result.out, progress)
    return result


def _write_test_metrics(run: RunConfig, out: Path, progress: bool) -> None:
    import json

    from .evaluate import format_table, predictions
    from .plots import parity_plot

    keys = LabelKeys(run.data.energy_key, run.data.forces_key, run.data.stress_key)
    stats, pred, ref = predictions(out / "best.pt", run.data.test, keys, device=run.training.device)
    summary = stats.summary()
    (out / "test_metrics.json").write_text(json.dumps(summary, indent=1))
    table = format_table(summary)
    (out / "test_metrics.md").write_text(table + "\n")
    parity_plot(pred, ref, out / "test_parity.png", title=os.path.basename(run.data.test))
    if progress:
        print(f"\ntest set {run.data.test}:\n{table}")


class CommitteeRun:
    """The outcome of :func:`train_committee`: member trainers and the committee file.

    Attributes
    ----------
    out : Path
        ``output.dir``; ``out / "best.pt"`` is the committee file.
    members : list of Trainer
    summary : dict
        Validation errors of the committee mean and the calibration of its spread
        (:func:`ase_nemp.train.evaluate.calibration`).
    """

    def __init__(self, out: Path, members: list[Trainer], summary: dict) -> None:
        self.out, self.members, self.summary = out, members, summary

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def train_committee(run: RunConfig, resume: bool = False, progress: bool = True) -> CommitteeRun:
    """Train ``training.committee`` members one after another and save them as one file.

    Member k runs in ``output.dir/member-k`` (its own checkpoint, metrics and best model)
    with seed ``training.seed + k`` for its initial parameters and data order; all share
    one train/validation split and one set of neighbour lists. ``resume`` continues the
    member that was interrupted and skips the finished ones. At the end the members'
    best models form ``output.dir/best.pt``; its metadata and ``committee.md`` hold the
    committee's validation errors and the calibration of its spread (rank correlation of
    uncertainty and error), ``calibration.png`` the plot. The output folder is locked
    against other runs meanwhile.
    """
    lock = FolderLock(run.output_dir) if is_main_process() else None
    try:
        return _train_committee(run, resume, progress)
    finally:
        if lock is not None:
            lock.release()


def _train_committee(run: RunConfig, resume: bool, progress: bool) -> CommitteeRun:
    from tqdm.auto import tqdm

    from .evaluate import calibration, format_calibration, format_table, predictions
    from .plots import calibration_plot

    out = Path(run.output_dir)
    size = run.training.committee
    group = ProcessGroup(run.training.device)
    progress = progress and group.main
    refusal = None
    if not resume and group.main:
        try:
            _check_fresh_folder(out)
        except FileExistsError as err:
            refusal = err
    group.agree(refusal)
    data = None
    trainers = []
    for k in range(size):
        trainer = Trainer(run, progress=progress, member=k)
        member_resume = resume and (trainer.out / "checkpoint.pt").exists()
        if progress:
            tqdm.write(f"committee member {k + 1} of {size} ({trainer.out})")
        trainer.setup(resume=member_resume, data=data)
        data = (trainer.train_set, trainer.valid_set, tuple(trainer.model.config.species))
        trainer.fit()  # a finished member resumed with the same budget runs no further epoch
        if not (trainer.out / "best.pt").exists():
            raise RuntimeError(f"committee member {k} finished without a best model (no completed epoch); "
                               "give it more epochs or time")
        trainers.append(trainer)
        trainer.model = trainer.ema = None  # the member's files hold it; free the memory
    if not group.main:  # the first process assembles and evaluates the committee
        return CommitteeRun(out, trainers, {})
    committee = Committee([load(t.out / "best.pt", dtype=torch.float64) for t in trainers])
    valid = trainers[0].valid_set
    stats, pred, ref = predictions(committee, valid)
    summary = {"valid": stats.summary(), "calibration": calibration(pred, ref)}
    metadata = {
        "committee_seeds": [t.seed for t in trainers], "train_data": data_names(run.data.train),
        "num_train": len(trainers[0].train_set), "num_valid": len(valid),
        "valid_e_rmse_per_atom_eV": summary["valid"]["all"]["e_rmse_atom"],
        "valid_f_rmse_eV_per_A": summary["valid"]["all"]["f_rmse"], "calibration": summary["calibration"],
        "member_best_epochs": [t.state["best_epoch"] for t in trainers],
    }
    from ..io import save as save_model

    save_model(committee, out / "best.pt", **metadata)
    calibration_plot(pred, ref, out / "calibration.png", title=f"committee of {size}, validation set")
    text = (f"# Committee of {size}: validation ({len(valid)} structures)\n\nErrors of the committee mean:\n\n"
            f"{format_table(summary['valid'])}\n\nUncertainty against true error:\n\n"
            f"{format_calibration(summary['calibration'])}\n")
    (out / "committee.md").write_text(text)
    if progress:
        print(text)
    return CommitteeRun(out, trainers, summary)
