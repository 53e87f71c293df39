"""Many independent jobs on the executor a cluster already runs.

A catalysis study is many independent calculations: the reference labels of an
active-learning round, hundreds of relaxations, one band per pair of end points. The
package hands them to any :class:`concurrent.futures.Executor`; :func:`open_executor`
turns a short specification into one:

==========================  ===================================================================
``None`` or ``"serial"``    in this process, one job after another (the default)
``N`` or ``"processes:N"``  a pool of N local worker processes (rebuilt if a worker dies)
``"tcp://HOST:PORT"``       the Dask distributed scheduler at that address (``pip install
                            "dask[distributed]"``; start one with ``dask scheduler`` and
                            ``dask worker tcp://HOST:PORT`` on the cluster's nodes)
an ``Executor``             used as it is (Dask's ``Client.get_executor()``,
                            ``mpi4py.futures.MPIPoolExecutor``, Parsl, ...) and not shut down
==========================  ===================================================================

:func:`run_jobs` submits every job at once, so N workers finish N slow jobs (a DFT
teacher's single points) in the time of about one. It returns one :class:`Outcome` per job
in the order of the jobs whatever the order they finish in, so the results are those of
the serial path. A job that raises is submitted again ``retries`` times (once by
default) and then reported in its outcome (``error``), costing that job only. A worker
process that dies takes the jobs it held with it; they are submitted again, up to
``LOST_WORKERS`` times each (a local pool cannot tell which of its jobs killed it). ``on_done`` sees every outcome as it completes, for work that must be saved at once.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait, FIRST_COMPLETED
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

__all__ = ["open_executor", "run_jobs", "check_spec", "Outcome", "InProcess", "LocalPool"]


class InProcess(Executor):
    """An executor that runs each job in this process when it is submitted (the serial path)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            future.set_exception(err)
        return future


class LocalPool(Executor):
    """``workers`` local processes (spawned, so a worker never inherits a half-used torch
    thread pool). A worker that dies breaks a plain :class:`ProcessPoolExecutor` for good;
    this one starts a fresh pool at the next submission, so only the jobs that were
    running fail (and are retried by :func:`run_jobs`)."""

    def __init__(self, workers: int) -> None:
        import multiprocessing

        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"a local pool needs a whole number of workers >= 1, got {workers!r}")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(workers, mp_context=self._context)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=self._context)
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextmanager
def open_executor(spec: Any = None) -> Iterator[Executor]:
    """The executor named by ``spec`` (see the module docstring), shut down on leaving
    unless the caller passed an executor of its own. Raises ``ValueError`` for a
    specification it does not know and ``ImportError`` (saying what to install) for a Dask
    address without Dask."""
    check_spec(spec)
    if isinstance(spec, Executor):
        yield spec
        return
    if spec is None or spec == "serial":
        yield InProcess()
        return
    if isinstance(spec, str) and spec.startswith("processes:"):
        spec = int(spec.partition(":")[2])
    if isinstance(spec, int) and not isinstance(spec, bool):
        pool = LocalPool(spec)
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    if isinstance(spec, str) and "://" in spec:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError(f"the scheduler {spec} is a Dask address, and Dask is not installed: "
                              "pip install 'dask[distributed]'") from None
        try:
            client = Client(spec, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise ValueError(f"cannot reach the Dask scheduler at {spec}: {err}") from None
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
        return
    raise AssertionError(spec)  # pragma: no cover - check_spec refused it


@dataclass
class Outcome:
    """One job's end: its ``index`` in the list of jobs, its ``value`` (None if it failed),
    the ``error`` of its last attempt (None if it succeeded), how many ``attempts`` it took
    and the ``seconds`` its successful attempt ran on its worker."""

    index: int
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


LOST_WORKERS = 3  # a job may lose its worker this often before it is given up (Dask's allowed-failures)


def _worker_lost(err: BaseException) -> bool:
    """Whether a job failed because its worker process died (a broken local pool, Dask's
    KilledWorker) rather than by an exception of its own."""
    return isinstance(err, BrokenProcessPool) or type(err).__name__ == "KilledWorker"


def _timed(fn: Callable, item: Any) -> tuple[Any, float]:
    """Run ``fn(item)`` on the worker, with the seconds it took there."""
    start = time.perf_counter()
    value = fn(item)
    return value, time.perf_counter() - start


def run_jobs(fn: Callable[[Any], Any], items: Sequence[Any], executor: Executor | None = None, *,
             retries: int = 1, on_done: Callable[[Outcome], None] | None = None, progress: bool = False,
             desc: str = "jobs", stop: Callable[[], bool] | None = None) -> list[Outcome]:
    """Run ``fn(item)`` for every item on ``executor`` (default: in this process).

    ``fn`` must be a module-level function and the items picklable, for executors in other
    processes. All jobs are submitted at once; each that raises (or whose worker dies) is
    submitted again up to ``retries`` times. ``on_done(outcome)`` is called in this process
    as each job ends, successful or not, in the order they finish. ``stop()``, checked
    whenever a job ends, ends the run early: the jobs not yet finished are cancelled and
    left out of the result.

    Returns the outcomes in the order of ``items`` (those of finished jobs only if stopped).
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    from tqdm.auto import tqdm

    executor = executor if executor is not None else InProcess()
    items = list(items)
    outcomes: dict[int, Outcome] = {}
    attempts = [0] * len(items)
    lost = [0] * len(items)  # attempts that ended with their worker process
    pending: dict[Future, int] = {}
    stopped = stop if stop is not None else (lambda: False)
    bar = tqdm(total=len(items), desc=desc, file=sys.stdout, mininterval=0.2, disable=not progress)

    def submit(k: int) -> None:
        attempts[k] += 1
        pending[executor.submit(_timed, fn, items[k])] = k

    def harvest(futures, retry: bool = True) -> None:
        """Record the finished ``futures``; a failed job with attempts left goes again
        (when ``retry``; else it stays unfinished)."""
        for future in futures:
            k = pending.pop(future)
            try:
                value, seconds = future.result()
            except Exception as err:  # noqa: BLE001 - a job's failure is its outcome, not the run's
                if _worker_lost(err):  # not necessarily this job's doing: a separate allowance
                    lost[k] += 1
                if attempts[k] - lost[k] <= retries and lost[k] <= LOST_WORKERS:
                    if retry:
                        submit(k)
                    continue
                outcome = Outcome(k, error=err, attempts=attempts[k])
            else:
                outcome = Outcome(k, value=value, attempts=attempts[k], seconds=seconds)
            outcomes[k] = outcome
            bar.update(1)
            if on_done is not None:
                on_done(outcome)

    try:
        for k in range(len(items)):
            if stopped():
                break
            submit(k)
            harvest([f for f in pending if f.done()])  # at once for jobs that ran in this process
        while pending and not stopped():
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED, timeout=1.0)
            harvest(finished)
        harvest([f for f in pending if f.done()], retry=False)  # finished work is never thrown away
    finally:
        for future in pending:
            future.cancel()
        bar.close()
    return [outcomes[k] for k in sorted(outcomes)]


def check_spec(spec: Any) -> Any:
    """``spec`` if :func:`open_executor` understands it (without connecting to anything);
    raises ``ValueError`` naming the forms it accepts otherwise."""
    if spec is None or spec == "serial" or isinstance(spec, Executor):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 1:
        return spec
    if isinstance(spec, str) and (spec.startswith("processes:") and spec.partition(":")[2].isdigit()
                                  and int(spec.partition(":")[2]) >= 1 or "://" in spec):
        return spec
    raise ValueError(f"unknown scheduler {spec!r}: use 'serial', 'processes:N' (N local worker processes), "
                     "a Dask scheduler address such as 'tcp://host:8786', or a concurrent.futures.Executor")
