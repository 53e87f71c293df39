"""The checkpoint of a training run: everything that decides its future (parameters, EMA,
optimiser, schedules, shuffling generator, position inside the epoch), written atomically,
and the checks that a resume continues the same run on the same data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import copy
import math

import torch

from ..files import atomic_write
from .config import RunConfig, TrainConfig
from .setup import file_digest

__all__ = ["CHECKPOINT_VERSION", "write_checkpoint", "read_checkpoint", "check_compatible", "initial_state",
           "snapshot", "restore", "resume_from"]

CHECKPOINT_VERSION = 1


def write_checkpoint(path: Path, contents: dict[str, Any]) -> Path:
    """``contents`` with this format's version, atomically at ``path``."""
    atomic_write(path, lambda tmp: torch.save({"version": CHECKPOINT_VERSION, **contents}, tmp))
    return path


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, or a ``FileNotFoundError`` / ``ValueError`` saying why not."""
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot resume: the checkpoint {path} is corrupt or empty "
                         f"({type(err).__name__}); start the run afresh in another output.dir") from err
    if not isinstance(ckpt, dict) or "run" not in ckpt:
        raise ValueError(f"cannot resume: {path} is not an ase-nemp training checkpoint")
    return ckpt


def check_compatible(ckpt: dict, run: RunConfig) -> None:
    """Refuse to resume with another data or model section, other training settings than
    the budget and the execution ones, or data files edited since the checkpoint."""
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    old = ckpt["run"]
    new = run.to_dict()
    for section in ("data", "model"):
        if old[section] != new[section]:
            raise ValueError(f"cannot resume: the '{section}' section changed since the checkpoint was written "
                             f"(was {old[section]}, now {new[section]})")
    allowed = {"epochs", "max_time", "checkpoint_every", "valid_every", "threads", "workers", "compile"}
    changed = [k for k in new["training"] if old["training"].get(k) != new["training"][k] and k not in allowed]
    if changed:
        raise ValueError(f"cannot resume: training settings {changed} changed; only {sorted(allowed)} may change")
    for key, digest in (ckpt.get("data_digests") or {}).items():
        if digest != file_digest(new["data"].get(key)):
            raise ValueError(f"cannot resume: the data file data.{key} ({new['data'].get(key)}) changed since the "
                             "checkpoint was written; resuming would continue on other data")


def initial_state(cfg: TrainConfig) -> dict:
    """The state of a run before its first step (everything in it goes into the checkpoint)."""
    return {"epoch": 0, "step_in_epoch": 0, "perm": None, "plateau_scale": 1.0, "best_val": math.inf,
            "bad_epochs": 0, "force_weight": cfg.force_weight, "elapsed": 0.0, "history": [], "best_epoch": -1,
            "steps": 0}


def snapshot(model, ema, optimizer) -> dict:
    """Copies of the parameters, their EMA and the optimiser state (the best epoch's, to come
    back to if the run diverges; kept in the checkpoint)."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "ema": {k: v.detach().clone() for k, v in ema.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict())}


def restore(saved: dict | None, model, ema, optimizer) -> None:
    """Go back to a :func:`snapshot`; without one the run diverged before any valid epoch."""
    if saved is None:
        raise RuntimeError("training diverged before any valid epoch; lower lr_warm / lr_peak")
    model.load_state_dict(saved["model"])
    ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])


def resume_from(ckpt: dict, ema, optimizer, generator: torch.Generator, state: dict) -> dict | None:
    """Load a checkpoint's EMA, optimiser, shuffling generator and state (the model itself
    is built from it first: :func:`~ase_nemp.train.setup.model_from_checkpoint`); returns
    the best epoch's :func:`snapshot`."""
    ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    generator.set_state(ckpt["generator"])
    state.update(ckpt["state"])
    return ckpt.get("best_state")
