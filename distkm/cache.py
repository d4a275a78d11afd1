"""Keep a store's chunks in the workers' memory when they fit.

Every Lloyd iteration re-reads and re-decodes the whole store. When the
raw (uint8) chunks fit comfortably in the cluster's memory, persisting them
once turns every later pass into pure compute, and several fits on the same
data (a sweep of k, :func:`held_for_fits`) share that single read. The data
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
from contextlib import contextmanager
from typing import NamedTuple

from dask.utils import format_bytes

logger = logging.getLogger("distkm")

#: Share of the workers' total memory limit the cached chunks may take in "auto" mode.
#: The rest is for the kernels' temporaries and dask's own bookkeeping.
AUTO_FRACTION = 0.4


def cluster_memory(client):
    """Sum of the workers' memory limits, in bytes (0 when any worker has none)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    limits = [w.get("memory_limit") or 0 for w in workers]
    return 0 if not limits or min(limits) == 0 else int(sum(limits))


def should_cache(nbytes, client, mode="auto"):
    """Decide whether to persist ``nbytes`` of data on the workers.

    Parameters
    ----------
    nbytes : int
        Size of the data in memory.
    client : distributed.Client
    mode : {"auto", True, False}
        ``True``/``False`` force it; ``"auto"`` caches when the data takes at
        most :data:`AUTO_FRACTION` of the workers' memory.

    Returns
    -------
    bool
    """
    if mode is True or mode is False:
        return mode
    if mode != "auto":
        raise ValueError(f"cache must be 'auto', True or False, got {mode!r}")
    memory = cluster_memory(client)
    return memory > 0 and nbytes <= AUTO_FRACTION * memory


class CachedBlocks(NamedTuple):
    """Rows (and their weights) persisted in blocks of consecutive row chunks.

    Attributes
    ----------
    blocks : dask.array.Array
        Persisted; block ``i`` holds the row chunks ``chunk_rows[i]``.
    chunk_rows : tuple of tuple of int
        Rows of every row chunk of every block, in order.
    weights : dask.array.Array or None
        The sample weights in the same blocks, persisted too.
    """

    blocks: object
    chunk_rows: tuple
    weights: object = None


def group_chunks(chunks, split_every):
    """Consecutive row chunks in groups of ``split_every``: the first level of the reduction tree."""
    chunks = tuple(int(c) for c in chunks)
    return tuple(chunks[i:i + split_every] for i in range(0, len(chunks), split_every))


def cache_in_blocks(client, x, split_every, mode="auto", *, weights=None):
    """Persist ``x`` (and ``weights``) in blocks of ``split_every`` row chunks if it fits (see :func:`should_cache`).

    Returns
    -------
    x : dask.array.Array
        Chunked as given; when cached, read from the blocks in memory (a
        slice of a block is a view, not a copy).
    cached : CachedBlocks or None
        ``None`` when not cached, or when ``x`` was already persisted (by
        the caller): it is used as it is, never held twice. Blocks held for
        ``x`` by :func:`held_for_fits` are returned as they are.
    """
    held = _HELD.get(x.name)
    if held is not None and weights is None and held.chunk_rows == group_chunks(x.chunks[0], split_every):
        return x, held
    if _persisted(x) or not _cache_or_say_why(x.nbytes, client, mode):
        return x, None
    from .graph import concatenate_chunks

    groups = group_chunks(x.chunks[0], split_every)
    blocks = client.persist(concatenate_chunks(x, groups, "cache"))
    block_weights = None if weights is None else client.persist(concatenate_chunks(weights, groups, "cache-weights"))
    return blocks.rechunk({0: x.chunks[0]}), CachedBlocks(blocks, groups, block_weights)


def cache_on_client(x, mode, split_every, weights=None):
    """:func:`cache_in_blocks` on the workers of the active distributed client, when ``mode`` asks for it.

    Returns
    -------
    x, cached
        As :func:`cache_in_blocks`; ``cached`` is ``None`` when ``mode`` is
        False, without a distributed client, or when another scheduler was chosen.
    """
    if mode is False:
        return x, None
    try:
        from distributed import default_client

        client = default_client()
    except ValueError:  # no distributed client: local threads read numpy or zarr directly
        return x, None
    from dask.base import get_scheduler

    if get_scheduler() != client.get:  # another scheduler was chosen (e.g. "sync") while a client exists
        return x, None
    return cache_in_blocks(client, x, split_every, mode=mode, weights=weights)


#: Blocks that a caller holds for several fits (:func:`held_for_fits`), by the dask name of the array they cache.
_HELD = {}


@contextmanager
def held_for_fits(x, cached):
    """While in the block, fits of ``x`` (the array :func:`cache_in_blocks` returned) use ``cached`` as they are.

    ``distkm sweep`` caches its rows once and fits every k on them: each fit
    then runs one task per block, as a fit that cached the rows itself, and
    the rows are held once. ``cached=None`` (not cached) does nothing.
    """
    if cached is None:
        yield
        return
    _HELD[x.name] = cached
    try:
        yield
    finally:
        del _HELD[x.name]


def is_held(x):
    """Whether ``x`` is in blocks that a caller holds (:func:`held_for_fits`)."""
    return x.name in _HELD


def _cache_or_say_why(nbytes, client, mode):
    """:func:`should_cache`, logging why not when ``mode`` left the choice to it."""
    if should_cache(nbytes, client, mode):
        return True
    if mode == "auto":
        logger.info("data (%s) not cached: more than %d%% of the workers' memory (%s); "
                    "every pass reads the store", format_bytes(nbytes), AUTO_FRACTION * 100,
                    format_bytes(cluster_memory(client)))
    return False


def _persisted(x):
    from distributed import Future

    return all(isinstance(v, Future) for v in dict(x.__dask_graph__()).values())
