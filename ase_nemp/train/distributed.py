"""Data-parallel training over several processes (``torchrun``), with torch.distributed.

Started by ``torchrun --nproc-per-node K nemp train config.yaml``, every process reads the
same data and builds the same model; each takes its share of every batch (batch_size is
the global batch), computes the loss and gradient of that share, and one all-reduce
sums them, so every process takes the same optimiser step as one process would on the
whole batch. Validation is shared out the same way. Only the first process (rank 0)
writes files and prints. Gloo carries the sums on CPUs, NCCL on GPUs (one per process:
``cuda:LOCAL_RANK``).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) :class:`ProcessGroup` is a
single process and every method is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

__all__ = ["ProcessGroup", "OtherProcessFailed", "is_main_process"]


def is_main_process() -> bool:
    """Whether this process writes the files and prints: rank 0 of a torchrun, or a process
    started alone. Reads torchrun's environment only (nothing is initialised)."""
    return os.environ.get("RANK", "0") == "0"


class OtherProcessFailed(RuntimeError):
    """Raised on the processes of a run that did not fail themselves when another did."""


class ProcessGroup:
    """The processes of one training run: ``rank`` of ``world``, ``local_rank`` on its node."""

    def __init__(self, device: str = "cpu") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))  # 0 exactly when is_main_process()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            cuda = str(device).startswith("cuda")
            if cuda:
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")

    @property
    def main(self) -> bool:
        """Whether this process writes the files and prints (rank 0)."""
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """``device`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process run."""
        if self.world > 1 and device == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(device)

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This process's contiguous share of ``items`` (rank order; sizes differ by at most one)."""
        n = len(items)
        a, b = self.rank * n // self.world, (self.rank + 1) * n // self.world
        return list(items[a:b])

    def sum_step(self, loss: torch.Tensor, grads: list[torch.Tensor], stop: bool):
        """Sum the loss and gradients over the processes (one all-reduce), and whether any
        process was asked to stop. Returns ``(loss, grads, stop)``."""
        if self.world == 1:
            return loss, grads, stop
        dtype = grads[0].dtype  # the parameters' (the loss may be float64 with float32 parameters)
        flat = torch.cat([loss.reshape(1).to(dtype)] + [g.reshape(-1) for g in grads]
                         + [grads[0].new_tensor([1.0 if stop else 0.0])])
        torch.distributed.all_reduce(flat)
        out, offset = [], 1
        for g in grads:
            out.append(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[0].to(loss.dtype), out, bool(flat[-1] > 0)

    def sum_float(self, value: float) -> float:
        """``value`` summed over the processes (float64)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t.item())

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every process."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every process (same start, whatever happened)."""
        if self.world == 1:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)

    def agree(self, error: BaseException | None) -> None:
        """Raise on every process if any one failed (``error`` is this process's failure):
        a process that failed alone would leave the others waiting forever."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        failed = self.sum_float(1.0 if error is not None else 0.0)
        if error is not None:
            raise error
        if failed:
            raise OtherProcessFailed("another process of this training run failed; its message says why")

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
            else torch.device("cpu")
