"""Independent jobs on executors: order, retries, dying workers, interruption; local processes and Dask."""

import os
import time
from pathlib import Path

import pytest

from ase_nemp.jobs import InProcess, LocalPool, check_spec, open_executor, run_jobs


def flaky(job):
    """Square ``value``; fail (``mode`` 'raise') or kill the worker process (``mode``
    'die') on the first attempt only (a marker file remembers it), fail always for
    'always'. Records when it ran."""
    value, mode, folder = job
    start = time.time()
    marker = Path(folder) / f"tried-{value}"
    first = not marker.exists()
    marker.touch()
    if mode == "always":
        raise RuntimeError(f"job {value} cannot be done")
    if first and mode == "raise":
        raise RuntimeError(f"job {value} failed once")
    if first and mode == "die":
        os._exit(3)
    time.sleep(0.3)
    return value * value, start, time.time(), os.getpid()


def jobs(tmp_path, modes):
    return [(v, mode, str(tmp_path)) for v, mode in enumerate(modes)]


def check(outcomes, modes):
    assert [o.index for o in outcomes] == list(range(len(modes)))  # the order of the jobs
    for o, mode in zip(outcomes, modes):
        if mode == "always":
            assert not o.ok and "cannot be done" in str(o.error) and o.attempts == 2
        else:
            assert o.ok and o.value[0] == o.index ** 2 and o.attempts == (1 if mode == "ok" else 2)


MODES = ["ok", "raise", "ok", "always", "ok", "ok"]


def test_serial_jobs_retry_once_and_report_in_order(tmp_path):
    seen = []
    outcomes = run_jobs(flaky, jobs(tmp_path, MODES), on_done=lambda o: seen.append(o.index))
    check(outcomes, MODES)
    assert sorted(seen) == list(range(len(MODES)))
    assert all(o.value[3] == os.getpid() for o in outcomes if o.ok)  # in this process
    with pytest.raises(ValueError, match="retries"):
        run_jobs(flaky, [], retries=-1)


def test_a_local_pool_runs_jobs_at_once_and_survives_a_dying_worker(tmp_path):
    modes = ["ok", "die", "ok", "raise", "always", "ok"]
    with open_executor("processes:2") as pool:
        assert isinstance(pool, LocalPool)
        outcomes = run_jobs(flaky, jobs(tmp_path, modes), pool)
    # a worker killed mid-job breaks the pool: the jobs it held are tried again on a new one
    for o, mode in zip(outcomes, modes):
        assert o.index == modes.index(mode) or mode == "ok"
        if mode == "always":  # two attempts of its own (and one more if a dying worker took one)
            assert not o.ok and "cannot be done" in str(o.error) and o.attempts in (2, 3)
        else:
            assert o.ok and o.value[0] == o.index ** 2
    assert len({o.value[3] for o in outcomes if o.ok}) >= 2  # in worker processes
    assert os.getpid() not in {o.value[3] for o in outcomes if o.ok}
    spans = sorted((o.value[1], o.value[2]) for o in outcomes if o.ok)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # two jobs ran at the same time


def test_dask_workers_give_the_serial_results(tmp_path, dask_executor):
    for name in ("serial", "dask"):
        (tmp_path / name).mkdir()
    serial = run_jobs(flaky, jobs(tmp_path / "serial", ["ok"] * 6))
    modes = ["ok", "raise", "ok", "always", "die", "ok"]
    outcomes = run_jobs(flaky, jobs(tmp_path / "dask", modes), dask_executor)
    assert [o.index for o in outcomes] == list(range(6))
    assert [o.value[0] for o in outcomes if o.ok] == [s.value[0] for s, m in zip(serial, modes) if m != "always"]
    assert not outcomes[3].ok and outcomes[3].attempts == 2
    assert os.getpid() not in {o.value[3] for o in outcomes if o.ok}


def test_a_stop_keeps_what_finished_and_cancels_the_rest(tmp_path):
    done = []
    outcomes = run_jobs(flaky, jobs(tmp_path, ["ok"] * 5), InProcess(), on_done=done.append,
                        stop=lambda: len(done) >= 2)
    assert [o.index for o in outcomes] == [0, 1] and all(o.ok for o in outcomes)
    assert not (tmp_path / "tried-2").exists()  # never started


def test_scheduler_specifications_are_checked():
    for good in ("serial", None, 2, "processes:3", "tcp://10.0.0.1:8786"):
        assert check_spec(good) == good
    for bad in ("processes:", "processes:0", "threads", 0, True, 2.5):
        with pytest.raises(ValueError, match="unknown scheduler"):
            check_spec(bad)
    with pytest.raises(ValueError, match="unknown scheduler"), open_executor("local"):
        pass
