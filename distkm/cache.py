"""Keep a store's chunks in the workers' memory when they fit.

Every Lloyd iteration re-reads and re-decodes the whole store. When the
raw (uint8) chunks fit comfortably in the cluster's memory, persisting them
once turns every later pass into pure compute, and several fits on the same
data (a sweep of k) share that single read. The data stays distributed: each
worker holds the chunks it read, nothing is gathered.
"""

from __future__ import annotations

import logging

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


def cache_arrays(client, arrays, mode="auto", *, log=True):
    """Persist dask arrays on the workers if they fit (see :func:`should_cache`).

    ``log=False`` leaves the "cached" line to the caller (the estimator logs
    it once the first pass has shown the data is usable).

    Returns
    -------
    list
        The arrays, persisted or as given.
    """
    arrays = list(arrays)
    nbytes = sum(a.nbytes for a in arrays if a is not None)
    if not should_cache(nbytes, client, mode):
        if mode == "auto":
            logger.info("data (%s) not cached: more than %d%% of the workers' memory (%s); "
                        "every pass reads the store", format_bytes(nbytes), AUTO_FRACTION * 100,
                        format_bytes(cluster_memory(client)))
        return arrays
    persisted = client.persist([a for a in arrays if a is not None])
    it = iter(persisted)
    if log:
        logger.info("data cached on the workers (%s)", format_bytes(nbytes))
    return [None if a is None else next(it) for a in arrays]
