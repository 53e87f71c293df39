"""The :class:`Trainer` of one model (design/nemp-model.md section 6). Per epoch: a shuffled
pass over the training set (:mod:`.steps`: gradients, clipping, AMSGrad or AdamW, an EMA of
the parameters), validation with the EMA, the schedules (:mod:`.schedules`), the metrics
(:mod:`.metrics`), the best model file and the checkpoint (:mod:`.checkpoint`: everything
that decides the run's future, so ``--resume`` continues bit for bit, also after Ctrl-C or
SIGTERM). Data, model and optimiser come from :mod:`.setup`; :mod:`.committee` trains one
model or a committee (``nemp train``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..files import FolderLock, atomic_write
from ..io import load, resolve_dtype, save
from ..model import AtomisticModel
from ..signals import deferred_stop
from .checkpoint import (check_compatible, initial_state, read_checkpoint, restore, resume_from, snapshot,
                         write_checkpoint)
from .compiled import compiled_or_none
from .config import RunConfig, TrainConfig
from .data import Sample
from .distributed import ProcessGroup
from .loss import LossWeights
from .metrics import MetricsLog
from .steps import StepGradients, apply_step, validation_loss
from .schedules import after_epoch, learning_rate
from .setup import (build_model, check_fresh_folder, config_text, data_digests, data_names, ema_copy, make_optimizer,
                    model_config, model_from_checkpoint, prepare_data, starting_model, warn_if_stress_ignored,
                    weigh_config_types)

__all__ = ["Trainer", "TrainingInterrupted", "prepare_data", "build_model"]


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C / SIGTERM once the checkpoint is safely on disk."""


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
        if self.device.type == "cpu":
            from ..perf import tune_cpu_allocator

            tune_cpu_allocator()  # each step frees and allocates the same activations again
        self.dtype = resolve_dtype(self.cfg.dtype)
        self._stop_signal: int | None = None

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
        ckpt = None
        if resume:
            ckpt = read_checkpoint(self.out / "checkpoint.pt")
            check_compatible(ckpt, self.run)
        elif self.group.main:
            check_fresh_folder(self.out, config_text(self.run))

        start = None
        if ckpt:
            species, cutoff = tuple(ckpt["model_config"]["species"]), ckpt["model_config"]["cutoff"]
        elif self.cfg.init_from:
            start = starting_model(load(self.cfg.init_from, dtype=torch.float64), self.cfg.init_from, self.member,
                                   self.cfg.committee)
            species, cutoff = start.config.species, start.config.cutoff
        else:
            species, cutoff = None, model_config(self.run.model, None)[1].cutoff
        if data is not None:
            self.train_set, self.valid_set, species = data
        else:
            self.train_set, self.valid_set, species = prepare_data(self.run, cutoff, species, self.progress)
        weigh_config_types(list(self.train_set) + list(self.valid_set), self.cfg.config_type_weights)
        if ckpt:
            model = model_from_checkpoint(ckpt)
        elif start is not None:
            model = start
        else:
            model = build_model(self.run, self.train_set, self.valid_set, species, seed=self.seed)
        self.model = model.to(self.device, self.dtype)
        warn_if_stress_ignored(self.model, self.train_set, self.cfg.stress_weight)
        self.ema = ema_copy(self.model)
        self.optimizer = make_optimizer(list(self.model.parameters()), self.cfg, self.device)
        self._compiled = compiled_or_none(self.model) if self.cfg.compile else None
        self.gradients = StepGradients(self.model, self._compiled, self.group, self.cfg.workers, self.device, self.dtype)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.state = initial_state(self.cfg)
        self._best_state: dict | None = None
        if ckpt:
            self._best_state = resume_from(ckpt, self.ema, self.optimizer, self.generator, self.state)
        self._digests = ckpt.get("data_digests") if ckpt else data_digests(self.run)
        self.log = MetricsLog(self.out, self.state["history"], write=self.group.main)
        if self.group.main:
            text = config_text(self.run)
            atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    # -- schedules (ase_nemp.train.schedules) -------------------------------------------------
    def learning_rate(self, epoch: int) -> float:
        return learning_rate(self.cfg, self.state, epoch)

    def _after_epoch_schedules(self, epoch: int, lr: float, val_loss: float | None) -> None:
        after_epoch(self.cfg, self.state, epoch, lr, val_loss)

    # -- one epoch ---------------------------------------------------------------------
    def _train_epoch(self, lr: float) -> float:
        from tqdm.auto import tqdm

        c, st = self.cfg, self.state
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if st["perm"] is None:
            st["perm"] = torch.randperm(len(self.train_set), generator=self.generator).tolist()
        order = st["perm"]
        n_steps = math.ceil(len(order) / c.batch_size)
        weights = LossWeights(c.energy_weight, st["force_weight"], c.stress_weight)
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
            loss, grads = self.gradients(samples, weights, params)
            loss, grads, stop = self.group.sum_step(loss, grads, self._stop_signal is not None)
            apply_step(self.optimizer, params, grads, ema_params, c, st["steps"])
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
        """Validation loss and error statistics of the EMA model, with the configured weights
        (not the scheduled force weight: the loss picks the best model and drives the plateau
        schedule, and a falling force weight would make later epochs look better)."""
        model = model or self.ema
        weights = LossWeights(self.cfg.energy_weight, self.cfg.force_weight, self.cfg.stress_weight)
        compiled = self._compiled if model.config == self.model.config else None
        return validation_loss(model, samples if samples is not None else self.valid_set, weights,
                               self.cfg.valid_batch_size, self.group, self.device, self.dtype, compiled)

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
                    row = self.log.record(epoch, lr, st["force_weight"], train_loss, val_loss, stats["all"], st["elapsed"])
                    tqdm.write(MetricsLog.line(row, improved)) if self.progress else None
                else:
                    self._after_epoch_schedules(epoch, lr, None)
                    self.log.record(epoch, lr, st["force_weight"], train_loss, math.nan, {}, st["elapsed"])
                st["epoch"] += 1
                if st["epoch"] % c.checkpoint_every == 0:
                    self.save_checkpoint()
                if c.max_time is not None and st["elapsed"] >= c.max_time:
                    tqdm.write(f"time budget of {c.max_time:.0f} s used; training stopped") if self.progress else None
                    break
            self.save_checkpoint()
            self.log.plot()
        finally:
            torch.set_num_threads(threads)  # the caller's setting, as it was
            self.gradients.close()
        return st["history"]

    # -- robustness ----------------------------------------------------------------------
    def _restore_best(self, val_loss: float) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"validation loss {val_loss:.4g} diverged (best {self.state['best_val']:.4g}); "
                   "reloading the best parameters") if self.progress else None
        restore(self._best_state, self.model, self.ema, self.optimizer)

    def _save_best(self, metrics: dict, epoch: int) -> None:
        self._best_state = snapshot(self.model, self.ema, self.optimizer)
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
        return write_checkpoint(path, {
            "run": self.run.to_dict(), "architecture": self.model.architecture,
            "model_config": self.model.config.to_dict(), "model": self.model.state_dict(),
            "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(), "data_digests": self._digests, "state": self.state,
            "best_state": self._best_state})

    # -- signals -------------------------------------------------------------------------
    def _set_stop(self, signum: int) -> None:
        self._stop_signal = signum
