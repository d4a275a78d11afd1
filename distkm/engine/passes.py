"""Map-reduce over the row chunks of a dask array, as a dask graph.

The shape follows dask's own ``dask.array.reductions.reduction`` (one task
per chunk, then ``combine`` over groups of ``split_every`` partials, level
after level), with three differences that matter to distkm:

* The constants of a pass (the centers, a few KB) sit under one key that
  every chunk task depends on, so they travel once to each worker instead of
  being copied into every task; when copies would total less than
  :data:`EMBED_BYTES` (few chunks), they go into the tasks, which saves the
  scheduling round of that key. The last task of the tree is the result
  itself: a one-chunk pass is one task, a small job's iteration one round trip.
* The order in which partials are combined is fixed by the chunk order,
  never by which worker finishes first: floating-point sums, hence the
  centers, are bit-identical on any number of workers or threads.
* Tasks carry names (``distkm-partial-stats``, ``distkm-partial-stats-combine``)
  that the dashboard shows.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from functools import partial
from operator import getitem

import dask
import dask.array as da
import numpy as np
from dask.core import flatten, istask
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from distkm import config

logger = logging.getLogger("distkm")

#: Constants are copied into the chunk tasks when all the copies take at most this many bytes.
EMBED_BYTES = 1 << 20


def row_offsets(x):
    """Index of the first row of every row chunk of ``x``."""
    return np.concatenate(([0], np.cumsum(x.chunks[0])[:-1])).astype(np.int64)


def map_reduce(x, chunk, combine, *, name, constants=(), weights=None, split_every, per_chunk=None):
    """Lazy result of ``combine`` over ``chunk`` applied to every row chunk of ``x``.

    Parameters
    ----------
    x : dask.array.Array
        2-D, chunked by rows only.
    chunk : callable
        ``chunk(block, *constants, weights_block, **per_chunk_kwargs)``.
    combine : callable
        ``combine(*partials)``: associative; called on groups of partials.
    name : str
        Task name prefix shown on the dashboard (``distkm-<name>``).
    constants : tuple
        Small objects every chunk needs (centers...): stored once in the graph.
    weights : dask.array.Array, optional
        1-D, chunked like ``x``'s rows; ``None`` passes ``None`` to ``chunk``.
    split_every : int
        Fan-in of the tree.
    per_chunk : callable, optional
        ``per_chunk(i) -> dict`` of keyword arguments for chunk ``i``.

    Returns
    -------
    dask.delayed.Delayed
    """
    layer, chunk_keys, token = _map_layer(x, chunk, name, constants, weights, per_chunk)
    final = _tree_layer(layer, chunk_keys, combine, name, token, split_every)
    deps = [x] if weights is None else [x, weights]
    return Delayed(final, HighLevelGraph.from_collections(final, layer, dependencies=deps))


def map_reduce_with_state(x, chunk, combine, *, name, state=None, constants=(), weights=None, split_every,
                          per_chunk=None):
    """A :func:`map_reduce` whose chunks also carry a state from one pass to the next.

    ``chunk(block, state_i, *constants, weights_block, **kwargs)`` returns
    ``(new_state_i, partial)``: the partials are reduced as in :func:`map_reduce`,
    the new states stay where they were computed (persist them) and feed the
    next pass. A state is a chunk-sized array (a few bytes per row), which lets
    a multi-pass algorithm avoid recomputing what earlier passes found.

    Parameters
    ----------
    state : list of dask.delayed.Delayed, optional
        One per row chunk, from the previous pass; ``None`` passes ``None``.
    Other parameters : see :func:`map_reduce`.

    Returns
    -------
    states : list of dask.delayed.Delayed
        Every chunk task's output, which carries its new state: pass them
        (persisted) as the next pass's ``state``; the next chunk task takes the state out.
    result : dask.delayed.Delayed
        ``combine`` over the partials.
    """
    extra = [None] * x.numblocks[0] if state is None else [s.key for s in state]
    layer, chunk_keys, token = _map_layer(x, partial(_carry_state, chunk), name, constants, weights, per_chunk, extra)
    # A chunk task's output (state, partial) is both the chunk's state and a leaf of the tree: no
    # getitem task per chunk to split it (a third of the tasks of a pass, measured ~2 ms each).
    if len(chunk_keys) == 1:
        final = f"distkm-{name}-{token}"
        layer[final] = (getitem, chunk_keys[0], 1)
    else:
        final = _tree_layer(layer, chunk_keys, partial(_combine_outputs, combine), name, token, split_every)
    deps = [x] + ([] if weights is None else [weights]) + list(state or [])
    graph = HighLevelGraph.from_collections(final, layer, dependencies=deps)
    return [Delayed(key, graph, layer=final) for key in chunk_keys], Delayed(final, graph)


class _ChunkOutput(tuple):
    """``(state, partial)`` from a chunk task: the first level of the tree takes the partial out."""

    __slots__ = ()


def _carry_state(chunk, X, previous, *args, **kwargs):
    """``chunk`` on the state that the previous pass's output carries (``None`` in the first pass)."""
    return _ChunkOutput(chunk(X, None if previous is None else previous[0], *args, **kwargs))


def _combine_outputs(combine, *parts):
    return combine(*(part[1] if isinstance(part, _ChunkOutput) else part for part in parts))


def _map_layer(x, chunk, name, constants, weights, per_chunk, extra=None):
    """Graph layer of the per-chunk tasks: ``{(distkm-<name>-<token>, i): task}``."""
    # A fresh token per pass: two passes over identical inputs (e.g. score() twice) must not share
    # keys, or the scheduler may forget the first result while the second asks for it.
    token = uuid.uuid4().hex
    layer = {}
    x_tasks = chunk_tasks(x)
    arrays = all(isinstance(value, np.ndarray) for value in constants)  # (a tuple could read as a task)
    if arrays and len(x_tasks) * sum(value.nbytes for value in constants) <= EMBED_BYTES:
        const_keys = list(constants)
    else:
        const_keys = []
        for j, value in enumerate(constants):
            key = (f"distkm-{name}-args-{token}", j)
            layer[key] = value
            const_keys.append(key)
    w_tasks = chunk_tasks(weights) if weights is not None else [None] * len(x_tasks)
    chunk_name = f"distkm-{name}-{token}"
    keys = []
    for i, (xt, wt) in enumerate(zip(x_tasks, w_tasks)):
        func = partial(chunk, **per_chunk(i)) if per_chunk else chunk
        head = (func, xt) if extra is None else (func, xt, extra[i])
        layer[(chunk_name, i)] = (*head, *const_keys, wt)
        keys.append((chunk_name, i))
    return layer, keys, token


def chunk_tasks(x):
    """The tasks that make ``x``'s chunks, in order, to run inside the chunk tasks of a pass (keys where none).

    Each chunk of ``x`` feeds exactly one task of a pass, so its own task (a
    zarr read, a slice of a cached block) can run there instead of on its own:
    half the tasks of an out-of-core pass, hence half the scheduling (~4-9 ms
    a task on 2 cores), and no decoded chunk waiting in a worker's memory for
    its consumer. dask's linear fusion would not do it: the chunk tasks also
    depend on the constants. Chunks already in memory (persisted) stay keys.
    """
    graph = x.__dask_graph__()
    tasks = []
    for key in flatten(x.__dask_keys__()):
        task = graph[key]
        tasks.append(task if istask(task) else key)
    return tasks


def concatenate_chunks(x, groups, name):
    """``x`` in blocks of consecutive row chunks, each block one task that makes its chunks inside it.

    Parameters
    ----------
    x : dask.array.Array
        1-D, or 2-D chunked by rows only.
    groups : tuple of tuple of int
        Rows of the chunks of each block, in order (they must add up to ``x.chunks[0]``).
    name : str
        Task name prefix shown on the dashboard (``distkm-<name>``).

    Returns
    -------
    dask.array.Array
        Chunked by blocks. Unlike ``x.rechunk``, no chunk is a task of its own,
        waits in memory or travels to the worker assembling its block.
    """
    tasks = chunk_tasks(x)
    out = f"distkm-{name}-{uuid.uuid4().hex}"
    layer, start = {}, 0
    for i, group in enumerate(groups):
        parts = tasks[start:start + len(group)]
        index = (out, i) if x.ndim == 1 else (out, i, 0)
        layer[index] = (np.asarray, parts[0]) if len(parts) == 1 else (np.concatenate, list(parts))
        start += len(group)
    graph = HighLevelGraph.from_collections(out, layer, dependencies=[x])
    chunks = (tuple(sum(g) for g in groups), *x.chunks[1:])
    return da.Array(graph, out, chunks=chunks, meta=x._meta)


def _tree_layer(layer, level, combine, name, token, split_every):
    """Add the combine tree over ``level`` to ``layer``; return the key of the result."""
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    depth = 0
    combine_name = f"distkm-{name}-combine-{token}"
    if len(level) == 1:  # one chunk: its task is the result (named like the chunk tasks on the dashboard)
        final = f"distkm-{name}-{token}"
        layer[final] = layer.pop(level[0])
        return final
    while True:
        if len(level) <= split_every:  # the root of the tree is the result
            layer[combine_name] = (combine, *level)
            return combine_name
        next_level = []
        for j in range(0, len(level), split_every):
            key = (combine_name, depth, j // split_every)
            layer[key] = (combine, *level[j : j + split_every])
            next_level.append(key)
        level, depth = next_level, depth + 1


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
            from distributed import progress

            progress(futures, notebook=False)  # clears its line when done
        results = tuple(client.gather(futures))
    except Exception as e:
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError

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
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return None
    from dask.base import get_scheduler

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
        from dask.utils import parse_timedelta

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
    from tqdm.auto import tqdm

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
        from distributed import as_completed

        for future in as_completed(client.compute(jobs)):
            bar.update(future.result())
            future.release()
