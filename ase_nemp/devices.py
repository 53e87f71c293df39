"""Device names as users write them (``"cpu"``, ``"cuda"``, ``"cuda:1"``), checked once.

PyTorch accepts ``"cuda"`` on a build without CUDA and fails later, deep inside the
first tensor operation, with an ``AssertionError``; an unknown name is a ``RuntimeError``.
:func:`resolve_device` turns both into a ``ValueError`` that says what is available.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "set_threads"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` after checking that this machine has it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:N'): {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this PyTorch build or machine has no CUDA GPU; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"device {str(device)!r} is not available here; use 'cpu'")
    return dev


def set_threads(threads: int | None, option: str = "--threads") -> None:
    """``torch.set_num_threads(threads)`` for a command's ``option``; None leaves torch's
    default, and a count below 1 is a ValueError that names the option."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"{option} must be at least 1, got {threads}")
    torch.set_num_threads(threads)
