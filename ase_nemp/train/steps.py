"""One optimisation step of training: the loss and gradients of a batch (this process's share,
in ``workers`` shards on threads, summed in shard order so the result does not depend on
timing), the update (clipping, AMSGrad's decoupled weight decay) and the EMA of the
parameters; and the validation pass."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from ..model import energy_forces_stress
from .config import TrainConfig
from .data import Sample, make_batch
from .distributed import ProcessGroup
from .loss import ErrorStats, LossWeights, batch_loss

__all__ = ["StepGradients", "apply_step", "validation_loss"]


class StepGradients:
    """``gradients(samples, weights, params)``: the loss of this process's share of a batch
    and its gradient with respect to ``params``."""

    def __init__(self, model, compiled, group: ProcessGroup, workers: int, device, dtype) -> None:
        self.model, self.compiled, self.group, self.workers = model, compiled, group, workers
        self.device, self.dtype = device, dtype
        self._pool: ThreadPoolExecutor | None = None  # shard workers, made on first use

    def one_pass(self, samples: list[Sample], weights: LossWeights, params: list[torch.Tensor]):
        """Loss of a set of structures and its gradient with respect to ``params``."""
        batch = make_batch(samples).to(self.device, self.dtype)
        # a direct-force model (LEIGNN) has no stress: its stress labels are not used
        stress = bool(weights.stress) and self.model.conservative
        if self.compiled is not None:
            out = self.compiled(batch.graph, stress)
        else:
            out = energy_forces_stress(self.model, batch.graph, stress=stress, training=True)
        loss = batch_loss(out, batch, weights)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]

    def __call__(self, samples: list[Sample], weights: LossWeights, params: list[torch.Tensor]):
        samples = self.group.share(samples)
        if not samples:  # a last, short batch with fewer structures than processes
            return torch.zeros((), dtype=self.dtype, device=self.device), [torch.zeros_like(p) for p in params]
        k = self.workers
        if k == 1 or len(samples) == 1:
            return self.one_pass(samples, weights, params)
        bounds = [round(n * len(samples) / k) for n in range(k + 1)]
        shards = [samples[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="nemp-shard")
        parts = [f.result() for f in [self._pool.submit(self.one_pass, s, weights, params) for s in shards]]
        loss, grads = parts[0]
        for part_loss, part_grads in parts[1:]:
            loss = loss + part_loss
            grads = [g + h for g, h in zip(grads, part_grads)]
        return loss, grads

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def apply_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor],
               ema_params: list[torch.Tensor], cfg: TrainConfig, steps: int) -> None:
    """Set the gradients, clip them, take the optimiser's step and move the EMA (``steps``:
    the steps taken before this one)."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.grad = g
        if cfg.optimizer == "amsgrad" and cfg.weight_decay:
            for p in params:
                p.grad.add_(p, alpha=cfg.weight_decay)
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        # the usual warm-up of the average: early steps forget the random start quickly
        decay = min(cfg.ema_decay, (1.0 + steps) / (10.0 + steps))
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, params, alpha=1.0 - decay)


def validation_loss(model, samples: list[Sample], weights: LossWeights, batch_size: int, group: ProcessGroup,
                    device, dtype, compiled=None) -> tuple[float, dict]:
    """sqrt(sum of the loss / n) over ``samples`` and their error statistics; ``compiled``
    (the training step's compiled graph, for a model of the trained configuration) runs
    without its parameter backward."""
    stats = ErrorStats()
    total = 0.0
    model.eval()
    mine = group.share(samples)  # each process validates its share
    for start in range(0, len(mine), batch_size):
        batch = make_batch(mine[start : start + batch_size]).to(device, dtype)
        stress = bool(batch.has_stress.any()) and model.conservative
        if compiled is not None:
            with torch.no_grad():
                out = compiled(batch.graph, stress, model=model)
        else:
            out = energy_forces_stress(model, batch.graph, stress=stress)
        total += batch_loss(out, batch, weights).item()
        stats.add(out, batch)
    if group.world > 1:
        total = group.sum_float(total)
        stats = ErrorStats.combined(group.gather(stats))
    return math.sqrt(total / len(samples)), stats.summary()
