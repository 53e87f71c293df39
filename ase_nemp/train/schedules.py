"""The schedules of a training run, as functions of its settings and its state (so that a
resumed run continues them exactly): the learning rate (linear warm-up, then
reduce-on-plateau or a cosine over the epoch or time budget) and the force weight that
follows it. The state is the trainer's dictionary (``plateau_scale``, ``bad_epochs``,
``best_val``, ``force_weight``, ``elapsed``) that goes into every checkpoint.

torch.optim.lr_scheduler has each of these shapes but not their combination with a
wall-time budget, nor a state kept in the checkpoint's own dictionary; these few lines
are the schedule itself.
"""

from __future__ import annotations

import math

from .config import TrainConfig

__all__ = ["learning_rate", "budget_used", "after_epoch"]


def learning_rate(cfg: TrainConfig, state: dict, epoch: int) -> float:
    """The learning rate of ``epoch``."""
    r = cfg.lr_warm / cfg.lr_peak
    warm = r + min(epoch / cfg.warmup_epochs, 1.0) * (1.0 - r) if cfg.warmup_epochs > 0 else 1.0
    if cfg.lr_schedule == "cosine" and epoch >= cfg.warmup_epochs:
        return cfg.lr_min + 0.5 * (cfg.lr_peak - cfg.lr_min) * (1.0 + math.cos(math.pi * budget_used(cfg, state, epoch)))
    return cfg.lr_peak * state["plateau_scale"] * warm


def budget_used(cfg: TrainConfig, state: dict, epoch: int) -> float:
    """Fraction of the budget used after the warm-up (time if ``max_time`` is set)."""
    if cfg.max_time is not None:
        warm_time = state.setdefault("warmup_time", state["elapsed"])
        return min(max((state["elapsed"] - warm_time) / max(cfg.max_time - warm_time, 1e-9), 0.0), 1.0)
    return min((epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1), 1.0)


def after_epoch(cfg: TrainConfig, state: dict, epoch: int, lr: float, val_loss: float | None) -> None:
    """Plateau count (``val_loss`` None: an epoch without validation) and force weight."""
    c, st = cfg, state
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
