"""Running the passes on the cluster: watched, with progress, and never a silent wait for workers that are gone.

The graphs come from :mod:`distkm.engine.graph`; this module computes and
persists them on the current Dask client (or dask's local scheduler), says
when the cluster has no workers and gives up after
``distkm.no-workers-timeout``, and shows progress for long passes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid

import dask
from dask.base import get_scheduler
from dask.utils import parse_timedelta
from distributed import as_completed, default_client, progress
from distributed.client import FutureCancelledError
from distributed.comm.core import CommClosedError
from tqdm.auto import tqdm

from distkm import config

logger = logging.getLogger("distkm")


def compute(*jobs, label=None, optimize_graph=True):
    """``dask.compute(*jobs)``, watched: a progress bar, and no silent wait for workers that are gone.

    On a distributed client the jobs run as futures, and a watchdog looks at
    the workers every second: while there are none it says so (and for how
    long), and after ``distkm.no-workers-timeout`` it gives up with the
    advice to resume. A scheduler that goes away is named in one line too.

    The bar (distributed's text progress bar, one per pass) is shown when
    ``distkm.progress`` is set (the CLI sets it unless ``--quiet``) and the
    pass has at least ``distkm.progress-min-chunks`` tasks per job: a bar for
    a pass of a few chunks would only flicker. Once done, the bar gives way
    to ``label: seconds`` (nothing without a label: Lloyd iterations print their own line).
    When stdout is not a terminal (a log file) there is no bar, whose carriage
    returns would make one very long line there: only that last line.
    """
    client = active_client()
    if client is None:
        return dask.compute(*jobs, optimize_graph=optimize_graph)
    started = time.perf_counter()
    n_tasks = sum(len(job.__dask_graph__()) for job in jobs)
    show = config.get("progress", False) and n_tasks >= config.get("progress-min-chunks", 32)
    futures = client.compute(list(jobs), optimize_graph=optimize_graph)
    watchdog = _NoWorkersWatchdog(client, futures, label or "computation")
    try:
        if show and sys.stdout.isatty():
            progress(futures, notebook=False)  # clears its line when done
        results = tuple(client.gather(futures))
    except Exception as e:
        if watchdog.gave_up:
            raise RuntimeError(watchdog.gave_up) from None
        if isinstance(e, (CommClosedError, FutureCancelledError)) or client.status not in ("running", "connecting"):
            raise ConnectionError(f"lost the Dask scheduler during the {label or 'pass over the data'} "
                                  f"({type(e).__name__}); once it is back, resume") from e
        raise
    finally:
        watchdog.stop()
    if show and label:
        print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)
    return results


def active_client():
    """The distributed client that dask would compute on now, or ``None`` (no client, or another scheduler chosen)."""
    try:
        client = default_client()
    except ValueError:  # no client
        return None
    return client if get_scheduler() == client.get else None


def no_workers_message(seconds, during=None):
    """What is said when a cluster has had no workers for ``seconds`` and distkm gives up."""
    where = f" during the {during}" if during else ""
    return (f"the cluster has had no workers for {seconds:.0f} s{where} (distkm.no-workers-timeout); "
            "start workers, then resume")


class _LineProgress:
    """A progress report of one plain line every tenth of the way (for logs, where a bar is one long line)."""

    def __init__(self, desc, total):
        self.desc, self.total, self.done, self.said = desc, total, 0, 0

    def update(self, n):
        self.done += n
        tenth = self.done * 10 // max(self.total, 1)
        if tenth > self.said:
            self.said = tenth
            print(f"{self.desc}: {self.done:,} of {self.total:,} rows", file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NoWorkersWatchdog:
    """Watches a computation's cluster: says when it has no workers, cancels the work after the timeout."""

    def __init__(self, client, futures, what):
        self.client, self.futures, self.what = client, futures, what
        self.timeout = parse_timedelta(config.get("no-workers-timeout"))
        self.gave_up = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="distkm-no-workers-watchdog", daemon=True)
        self._thread.start()

    def _watch(self):
        since, said = None, 0.0
        while not self._done.wait(1.0):
            try:
                n_workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
            except Exception:  # the scheduler itself is gone: the computation says so
                return
            if n_workers:
                since, said = None, 0.0
                continue
            since = since or time.monotonic()
            waited = time.monotonic() - since
            if waited >= self.timeout:
                self.gave_up = no_workers_message(waited, during=self.what)
                self.client.cancel(self.futures)
                return
            if waited - said >= 10 or not said:
                logger.warning("no workers: the %s has waited %.0f s for one (giving up after %.0f s)",
                               self.what, waited, self.timeout)
                said = waited or 1e-9

    def stop(self):
        self._done.set()
        self._thread.join()


def run_chunk_tasks(task, chunk_ids, rows, *, name, progress=True, desc="rows"):
    """Run ``task(i)`` for every chunk id on the current dask scheduler, with a progress bar of rows.

    Parameters
    ----------
    task : callable
        ``task(i) -> rows written``; runs on a worker.
    chunk_ids : list of int
    rows : list of int
        Rows each chunk will write (for the progress bar).
    name : str
        Task name shown on the dashboard (``distkm-<name>``).
    """
    if not chunk_ids:
        return
    token = uuid.uuid4().hex
    run = dask.delayed(task, pure=False)
    jobs = [run(i, dask_key_name=(f"distkm-{name}-{token}", i)) for i in chunk_ids]
    client = active_client()
    # On a terminal, a bar; in a log file (not a terminal), a plain line every tenth of the way, since
    # a bar's carriage returns make one very long line there.
    total = int(sum(rows))
    if progress and not sys.stderr.isatty():
        bar = _LineProgress(desc, total)
    else:
        bar = tqdm(total=total, unit=" rows", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1)
    with bar:
        if client is None:  # dask's local scheduler: the bar moves once, at the end
            bar.update(sum(dask.compute(*jobs)))
            return
        for future in as_completed(client.compute(jobs)):
            bar.update(future.result())
            future.release()


def compute_keeping_states(job):
    """Run a pass whose chunks carry states: the states stay on the workers that computed them.

    Returns
    -------
    states : list
        Persisted (futures on a cluster), for the next pass.
    result
        The pass's result, gathered.
    """
    # Unoptimised: fusing would rename the read tasks inside the chunk tasks.
    *states, result = dask.persist(*job.states, job.result, optimize_graph=False)
    return states, compute(result)[0]


def cluster_threads():
    """Worker threads of the active distributed client's cluster (1 without one)."""
    client = active_client()
    if client is None:
        return 1
    return sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
