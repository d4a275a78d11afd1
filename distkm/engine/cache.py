"""Keep a store's chunks in the workers' memory when they fit.

Every Lloyd iteration re-reads and re-decodes the whole store. When the
raw (uint8) chunks fit comfortably in the cluster's memory, persisting them
once turns every later pass into pure compute, and several fits on the same
data (a sweep of k) share that single read: the caller hands the
:class:`CachedRows` to each fit explicitly (``KMeans().fit(cached)``). The data
stays distributed: each worker holds the chunks it read, nothing is gathered.

A fit caches its rows in blocks of ``split_every`` row chunks
(:func:`cache_in_blocks`): a cached Lloyd iteration is then one task per block
instead of one per chunk. On 2 cores a task costs ~9 ms of scheduling beside a
6 ms kernel (measured on aug1m: 0.76-0.81 s an iteration with 100 tasks,
0.50-0.54 s with 20 or 8). Each block is one first-level node of the
reduction tree, so the sums, hence the centers, stay bit-identical to the
uncached pass.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import numpy as np
from dask.utils import format_bytes, parse_timedelta
from distributed import Future

from distkm import config
from distkm.engine.graph import concatenate_chunks, row_offsets
from distkm.engine.run import active_client, cluster_threads, no_workers_message

logger = logging.getLogger("distkm")


def cluster_memory(client):
    """Sum of the workers' memory limits, in bytes (0 when any worker has none)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    limits = [w.get("memory_limit") or 0 for w in workers]
    return 0 if not limits or min(limits) == 0 else int(sum(limits))


def should_cache(nbytes, client, mode="auto", *, cache_fraction):
    """Decide whether to persist ``nbytes`` of data on the workers.

    Parameters
    ----------
    nbytes : int
        Size of the data in memory.
    client : distributed.Client
    mode : {"auto", True, False}
        ``True``/``False`` force it; ``"auto"`` caches when the data takes at
        most ``cache_fraction`` of the workers' memory.
    cache_fraction : float
        ``distkm.cache-fraction``, read by the caller.

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        ``mode`` is True and the data cannot fit the workers' memory.
    """
    if mode is False:
        return False
    if mode not in (True, "auto"):
        raise ValueError(f"cache must be 'auto', True or False, got {mode!r}")
    memory = cluster_memory(client)
    if mode is True:
        # Asked for, but held beside the kernels' temporaries it would make the workers die one after
        # another (KilledWorker after four deaths, without a word of memory): refused up front instead.
        if memory and nbytes > 0.9 * memory:
            raise ValueError(f"cache=True: the data ({format_bytes(nbytes)}) cannot be held in the workers' memory "
                             f"({format_bytes(memory)} in all); use cache='auto' or False, or more workers")
        return True
    return memory > 0 and nbytes <= cache_fraction * memory


class CachedRows(NamedTuple):
    """Rows (and their weights) held in the workers' memory in blocks of consecutive row chunks.

    Made by :func:`cache_in_blocks`; hand it to :meth:`distkm.KMeans.fit` in
    place of the array to fit on rows that are already held (a sweep caches
    once for every k). The passes then run one task per block.

    Attributes
    ----------
    array : dask.array.Array
        The rows, chunked as ``source``, read from the blocks in memory (a
        slice of a block is a view, not a copy).
    blocks : dask.array.Array
        Persisted; block ``i`` holds the row chunks ``chunk_rows[i]``.
    chunk_rows : tuple of tuple of int
        Rows of every row chunk of every block, in order.
    source : dask.array.Array
        The rows as they were given (lazy results built on it do not pin the cache).
    weights : dask.array.Array or None
        The sample weights in the same blocks, persisted too.
    """

    array: object
    blocks: object
    chunk_rows: tuple
    source: object
    weights: object = None

    def fits(self, split_every):
        """Whether a fit with this fan-in can use the blocks as they are (one block, one first-level node)."""
        return self.chunk_rows == group_chunks(self.source.chunks[0], split_every)


def group_chunks(chunks, split_every):
    """Consecutive row chunks in groups of ``split_every``: the first level of the reduction tree."""
    chunks = tuple(int(c) for c in chunks)
    return tuple(chunks[i:i + split_every] for i in range(0, len(chunks), split_every))


def cache_in_blocks(client, x, split_every, mode="auto", *, weights=None, cache_fraction):
    """Persist ``x`` (and ``weights``) in blocks of ``split_every`` row chunks if it fits (see :func:`should_cache`).

    Returns
    -------
    CachedRows or None
        ``None`` when not cached, or when ``x`` was already persisted (by
        the caller): it is used as it is, never held twice.
    """
    if _persisted(x) or not _cache_or_say_why(x.nbytes, client, mode, cache_fraction):
        return None
    groups = group_chunks(x.chunks[0], split_every)
    blocks = client.persist(concatenate_chunks(x, groups, "cache"))
    block_weights = None if weights is None else client.persist(concatenate_chunks(weights, groups, "cache-weights"))
    return CachedRows(blocks.rechunk({0: x.chunks[0]}), blocks, groups, x, block_weights)


def cache_on_client(x, mode, split_every, weights=None, *, cache_fraction):
    """:func:`cache_in_blocks` on the workers of the active distributed client, when ``mode`` asks for it.

    Returns
    -------
    CachedRows or None
        ``None`` when ``mode`` is False, without a distributed client, when
        another scheduler was chosen, or when :func:`cache_in_blocks` declines.
    """
    client = None if mode is False else active_client()
    if client is None:  # no distributed client (local threads read numpy or zarr directly), or not asked
        return None
    if not client.scheduler_info(n_workers=-1)["workers"]:
        # Never decide from a cluster of 0 B: a fit resumed while the workers restart waits for one.
        timeout = parse_timedelta(config.get("no-workers-timeout"))
        logger.warning("no workers yet: waiting up to %.0f s for one before deciding what to cache", timeout)
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(no_workers_message(timeout)) from None
    return cache_in_blocks(client, x, split_every, mode=mode, weights=weights, cache_fraction=cache_fraction)


def _cache_or_say_why(nbytes, client, mode, cache_fraction):
    """:func:`should_cache`, logging why not when ``mode`` left the choice to it."""
    if should_cache(nbytes, client, mode, cache_fraction=cache_fraction):
        return True
    if mode == "auto":
        logger.info("data (%s) not cached: more than %d%% of the workers' memory (%s); "
                    "every pass reads the store", format_bytes(nbytes), round(cache_fraction * 100),
                    format_bytes(cluster_memory(client)))
    return False


def _persisted(x):
    return all(isinstance(v, Future) for v in dict(x.__dask_graph__()).values())


def over_rows(x, weights, chunk, combine, cached, *, row_offset=None, per_row=None, stateful=False):
    """What a pass maps over: the chunks of ``x``, or, when ``cached``, its blocks in memory.

    A cached block is one task that applies ``chunk`` to its row chunks one
    by one and merges them in chunk order: what the first level of the
    reduction tree computes from the chunks, so both agree to the bit, with
    a task per block instead of one per chunk (~9 ms of scheduling each on 2 cores).

    Parameters
    ----------
    row_offset : int, optional
        Global index of ``x``'s first row: each chunk then also gets the
        ``row_offset`` of its own first row.
    per_row : dask.array.Array, optional
        A per-row array chunked like ``x`` to pass in the weights' place (the
        true classes of the final pass); cached, it is cut in the blocks' rows.
    stateful : bool
        ``chunk(X, state, ...)`` returns ``(state, partial)`` (a pass with
        ``states``, see :func:`distkm.engine.graph.map_reduce`); a cached
        block's state is the tuple of its chunks' states.

    Returns
    -------
    data, weights, chunk, per_chunk
        Arguments of :func:`distkm.engine.graph.map_reduce`.
    """
    offsets = None if row_offset is None else row_offsets(x) + row_offset
    if cached is None:
        per_chunk = None if offsets is None else (lambda i: {"row_offset": int(offsets[i])})
        return x, weights if per_row is None else per_row, chunk, per_chunk
    first_chunks = np.cumsum([0] + [len(rows) for rows in cached.chunk_rows])
    threads = max(1, -(-cluster_threads() // len(cached.chunk_rows)))  # the cluster's threads, shared by the blocks

    def per_chunk(i):
        extra = {} if offsets is None else {"row_offset": int(offsets[first_chunks[i]])}
        return {"chunk_rows": cached.chunk_rows[i], "threads": threads, **extra}

    if per_row is not None:
        per_row = per_row.rechunk((tuple(sum(rows) for rows in cached.chunk_rows),))
    return (cached.blocks, cached.weights if per_row is None else per_row,
            partial(_chunk_by_chunk, chunk=chunk, combine=combine, stateful=stateful), per_chunk)


def _chunk_by_chunk(X, *args, chunk, combine, chunk_rows, stateful, row_offset=None, threads=1):
    """``chunk`` over the row chunks of a cached block, merged in chunk order.

    ``args`` are the constants, then the weights; first the block's states
    (one per row chunk, or ``None``) when ``stateful``: it then returns the
    tuple of the new states beside the merged partial.
    """
    states, *constants, weights = args if stateful else (None, *args)
    starts = np.cumsum([0, *chunk_rows[:-1]])

    def one(i):
        part = slice(starts[i], starts[i] + chunk_rows[i])
        where = {} if row_offset is None else {"row_offset": row_offset + int(starts[i])}
        rows_weights = None if weights is None else weights[part]
        if not stateful:
            return chunk(X[part], *constants, rows_weights, **where)
        return chunk(X[part], None if states is None else states[i], *constants, rows_weights, **where)

    outputs = _in_order(one, len(chunk_rows), threads)
    new_states, parts = zip(*outputs) if stateful else (None, outputs)
    merged = parts[0] if len(parts) == 1 else combine(*parts)
    return (tuple(new_states), merged) if stateful else merged


def _in_order(one, n, threads):
    """``[one(i) for i in range(n)]``, on up to ``threads`` threads of this process (the kernels release the GIL).

    A pass of fewer blocks than the cluster has threads (MNIST's 6 chunks
    cached in one block) would otherwise leave all but one core idle while
    k=256's products dominate. The results are combined in chunk order
    whatever thread computed them, so the sums are those of one thread.
    """
    threads = min(threads, n, os.cpu_count() or 1)
    if threads <= 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(threads, thread_name_prefix="distkm-block") as pool:
        return list(pool.map(one, range(n)))
