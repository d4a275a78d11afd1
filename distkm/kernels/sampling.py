"""Sampling that merges: counter-based random keys and the top-m rows of a chunk.

Nothing here imports dask. A row's random key is a hash of ``(seed, salt,
global row index)``, so it does not depend on the chunk the row sits in or
on the worker that reads it; keeping the ``m`` rows of smallest key in every
chunk, then the ``m`` smallest of those in a tree reduction, gives the same
rows for any chunking and any number of workers. With uniform keys that is a
uniform sample without replacement; with exponential keys ``-log(u) / w`` a
sample in proportion to the weights ``w`` (an "exponential race").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TopRows(NamedTuple):
    """The ``m`` rows of smallest key in each of ``g`` groups (clusters, or one group).

    Attributes
    ----------
    keys : ndarray of shape (g, m), float64
        Sorted ascending per group; ``inf`` where a group has fewer than ``m`` rows.
    index : ndarray of shape (g, m), int64
        Global row index; ``-1`` for padding. Ties of keys go to the lower index.
    rows : ndarray of shape (g, m, d)
        The rows themselves, in the data's dtype (zeros for padding).
    """

    keys: np.ndarray
    index: np.ndarray
    rows: np.ndarray

    @property
    def counts(self):
        """Number of real (non-padding) rows per group."""
        return (self.index >= 0).sum(axis=1)


def random_keys(index, seed, salt):
    """Uniform floats in [0, 1) from global row indices: splitmix64 of ``(seed, salt, index)``."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def top_rows(X, groups, keys, index, *, n_groups, m):
    """The ``m`` rows of smallest ``(key, index)`` in each group of a chunk."""
    d = X.shape[1]
    out_keys = np.full((n_groups, m), np.inf)
    out_index = np.full((n_groups, m), -1, dtype=np.int64)
    out_rows = np.zeros((n_groups, m, d), dtype=X.dtype)
    if m == 0 or X.shape[0] == 0:
        return TopRows(out_keys, out_index, out_rows)
    if n_groups == 1 and m < keys.shape[0]:
        # One group (a draw over the chunk): only rows with a key up to the m-th smallest can be kept,
        # ties included; sorting those alone gives the same rows as sorting the chunk (~15x less work).
        near = np.flatnonzero(keys <= np.partition(keys, m - 1)[m - 1])
        order = near[np.lexsort((index[near], keys[near]))][:m]
        out_keys[0, :order.shape[0]] = keys[order]
        out_index[0, :order.shape[0]] = index[order]
        out_rows[0, :order.shape[0]] = X[order]
        return TopRows(out_keys, out_index, out_rows)
    order = np.lexsort((index, keys, groups))  # by group, then key, then row index
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, np.arange(n_groups))
    rank = np.arange(order.shape[0]) - starts[sorted_groups]
    keep = rank < m
    g, r, rows = sorted_groups[keep], rank[keep], order[keep]
    out_keys[g, r] = keys[rows]
    out_index[g, r] = index[rows]
    out_rows[g, r] = X[rows]
    return TopRows(out_keys, out_index, out_rows)


def merge_top_rows(*parts):
    """Keep the ``m`` smallest ``(key, index)`` per group of several :class:`TopRows`."""
    m = parts[0].keys.shape[1]
    keys = np.concatenate([p.keys for p in parts], axis=1)
    index = np.concatenate([p.index for p in parts], axis=1)
    rows = np.concatenate([p.rows for p in parts], axis=1)
    # Padding (index -1, key inf) must sort after every real row, whatever its index.
    order = np.lexsort((np.where(index < 0, np.iinfo(np.int64).max, index), keys), axis=-1)[:, :m]
    return TopRows(np.take_along_axis(keys, order, axis=1), np.take_along_axis(index, order, axis=1),
                   np.take_along_axis(rows, order[:, :, None], axis=1))
