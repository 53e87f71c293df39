"""Ctrl-C and SIGTERM for long runs: record them, stop at a safe point, keep the files."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["deferred_stop"]


@contextmanager
def deferred_stop(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call ``on_signal(signum)`` instead of ending
    the process, so the caller can finish what it writes and stop cleanly; the previous
    handlers come back afterwards. Outside the main thread signals cannot be caught and
    the block runs with the handlers as they are."""
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda signum, frame: on_signal(signum))
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
