"""Map-reduce passes over the row chunks of a dask array, built as dask graphs (run by :mod:`distkm.engine.run`).

A pass applies ``chunk`` to every row chunk and adds the partials up with
``combine`` in a tree of fan-in ``split_every``, as dask's own
``dask.array.reductions.reduction`` does, with three differences that matter
to distkm:

* The constants of a pass (the centers) sit under one key that every chunk
  task depends on, so they travel once to each worker instead of being
  copied into every task; when copies would total less than
  :data:`EMBED_BYTES` (few chunks), they go into the tasks, which saves the
  scheduling round of that key. The last task of the tree is the result
  itself: a one-chunk pass is one task, a small job's iteration one round trip.
* The order in which partials are combined is fixed by the chunk order,
  never by which worker finishes first: floating-point sums, hence the
  centers, are bit-identical on any number of workers or threads.
* A chunk may carry a state from one pass to the next (the pruning bounds of
  its rows, the sampling state of k-means||): the chunk task returns it
  beside its partial, and it stays on the worker that computed it. A plain
  pass is a pass whose state is ``None``.

``dask.array.reduction`` expresses neither the shared constants, nor the
states, nor running the read of each chunk inside the task that uses it
(:func:`chunk_tasks`), so the graph is written out here, in
:func:`_graph` alone (tests/unit/engine/test_graph.py fails if dask changes under it).
"""

from __future__ import annotations

import uuid
from functools import partial
from operator import getitem
from typing import NamedTuple

import dask.array as da
import numpy as np
from dask.core import flatten, istask
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

#: Constants are copied into the chunk tasks when all the copies take at most this many bytes.
EMBED_BYTES = 1 << 20


class Pass(NamedTuple):
    """A pass as a dask graph: its ``result`` (a Delayed), and each chunk's new ``states`` (None for a plain pass)."""

    result: Delayed
    states: list | None = None


def row_offsets(x):
    """Index of the first row of every row chunk of ``x``."""
    return np.concatenate(([0], np.cumsum(x.chunks[0])[:-1])).astype(np.int64)


def map_reduce(x, chunk, combine, *, name, split_every, constants=(), weights=None, per_chunk=None, states=None):
    """``combine`` over ``chunk`` applied to every row chunk of ``x``, lazily.

    Parameters
    ----------
    x : dask.array.Array
        2-D, chunked by rows only.
    chunk : callable
        ``chunk(block, *constants, weights_block, **per_chunk(i))`` returns a
        partial; with ``states``, ``chunk(block, state_i, *constants,
        weights_block, **per_chunk(i))`` returns ``(new_state_i, partial)``.
    combine : callable
        ``combine(*partials)``: associative; called on groups of partials.
    name : str
        Task name prefix shown on the dashboard (``distkm-<name>``).
    split_every : int
        Fan-in of the tree.
    constants : tuple
        Small objects every chunk needs (centers...): stored once in the graph.
    weights : dask.array.Array, optional
        1-D, chunked like ``x``'s rows; ``None`` passes ``None`` to ``chunk``.
    per_chunk : callable, optional
        ``per_chunk(i) -> dict`` of keyword arguments for chunk ``i``.
    states : list, optional
        A pass whose chunks carry a state: one per row chunk, the previous
        pass's (``Pass.states``, persisted) or ``None`` for a first pass.

    Returns
    -------
    Pass
        With ``states``: every chunk task's output, which carries its new
        state (persist them, and hand them to the next pass; the next chunk
        task takes the state out).
    """
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    token = uuid.uuid4().hex  # fresh per pass: two passes over identical inputs must not share keys
    if states is not None:
        chunk = partial(_carry_state, chunk)
    tasks, chunk_keys = _chunk_layer(x, chunk, name, token, constants, weights, per_chunk, states)
    combine_outputs = combine if states is None or combine is None else partial(_combine_outputs, combine)
    final = _tree_layer(tasks, chunk_keys, combine_outputs, name, token, split_every, states is not None)
    deps = [x] + ([] if weights is None else [weights]) + [s for s in states or [] if s is not None]
    graph = _graph(final, tasks, deps)
    return Pass(Delayed(final, graph), None if states is None else [Delayed(k, graph, layer=final) for k in chunk_keys])


def _graph(name, tasks, dependencies):
    """The one place that builds a dask graph by hand: ``tasks`` (a dict of tuple tasks) over the collections."""
    return HighLevelGraph.from_collections(name, tasks, dependencies=dependencies)


class _ChunkOutput(tuple):
    """``(state, partial)`` from a chunk task: the first level of the tree takes the partial out."""

    __slots__ = ()


def _carry_state(chunk, X, previous, *args, **kwargs):
    """``chunk`` on the state that the previous pass's output carries (``None`` in the first pass)."""
    return _ChunkOutput(chunk(X, None if previous is None else previous[0], *args, **kwargs))


def _combine_outputs(combine, *parts):
    return combine(*(part[1] if isinstance(part, _ChunkOutput) else part for part in parts))


def _chunk_layer(x, chunk, name, token, constants, weights, per_chunk, states):
    """The per-chunk tasks ``{(distkm-<name>-<token>, i): task}`` and their keys, in chunk order."""
    tasks = {}
    x_tasks = chunk_tasks(x)
    arrays = all(isinstance(value, np.ndarray) for value in constants)  # (a tuple could read as a task)
    if arrays and len(x_tasks) * sum(value.nbytes for value in constants) <= EMBED_BYTES:
        const_keys = list(constants)
    else:
        const_keys = []
        for j, value in enumerate(constants):
            key = (f"distkm-{name}-args-{token}", j)
            tasks[key] = value
            const_keys.append(key)
    w_tasks = chunk_tasks(weights) if weights is not None else [None] * len(x_tasks)
    chunk_name = f"distkm-{name}-{token}"
    keys = []
    for i, (xt, wt) in enumerate(zip(x_tasks, w_tasks)):
        func = partial(chunk, **per_chunk(i)) if per_chunk else chunk
        head = (func, xt) if states is None else (func, xt, None if states[i] is None else states[i].key)
        tasks[(chunk_name, i)] = (*head, *const_keys, wt)
        keys.append((chunk_name, i))
    return tasks, keys


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
    graph = _graph(out, layer, [x])
    chunks = (tuple(sum(g) for g in groups), *x.chunks[1:])
    return da.Array(graph, out, chunks=chunks, meta=x._meta)


def _tree_layer(tasks, level, combine, name, token, split_every, stateful):
    """Add the combine tree over ``level`` to ``tasks``; return the key of the result."""
    depth = 0
    combine_name = f"distkm-{name}-combine-{token}"
    if len(level) == 1:  # one chunk: its task is the result (named like the chunk tasks on the dashboard)
        final = f"distkm-{name}-{token}"
        if stateful:  # the chunk's output is also its state: the result takes the partial out
            tasks[final] = (getitem, level[0], 1)
        else:
            tasks[final] = tasks.pop(level[0])
        return final
    while True:
        if len(level) <= split_every:  # the root of the tree is the result
            tasks[combine_name] = (combine, *level)
            return combine_name
        next_level = []
        for j in range(0, len(level), split_every):
            key = (combine_name, depth, j // split_every)
            tasks[key] = (combine, *level[j : j + split_every])
            next_level.append(key)
        level, depth = next_level, depth + 1
