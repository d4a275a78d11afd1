"""Pure-numpy kernels of the evaluation pass: what one chunk contributes.

Nothing here imports dask. One pass over the data, under fixed centers,
gathers everything ``distkm evaluate`` and the pictures need:

* the contingency table (cluster x true class) and the exact inertia;
* per cluster, the ``m`` members nearest its centre and ``m`` random members;
* a uniform random sample of rows (for the silhouette score).

"Random" is a counter-based hash of ``(seed, global row index)``: a row's key
does not depend on the chunk it sits in, so the picks are the same for any
chunking and any number of workers, and keeping the ``m`` smallest keys is a
uniform sample without replacement that merges like any other top-m.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .kernels import _assign_block, _blocks

#: Salts that make the member and sample keys independent streams of one seed.
_MEMBERS_SALT = 0x6D656D62
_SAMPLE_SALT = 0x73616D70


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


class ChunkEvaluation(NamedTuple):
    """What a chunk contributes to the evaluation of a clustering.

    Attributes
    ----------
    table : ndarray of shape (k, n_classes), int64
        Rows of each cluster per true class (one column when there are no labels).
    inertia : float
        Sum of squared distances to the assigned centers.
    nearest : TopRows
        Per cluster, the members nearest its center (key: squared distance).
    random : TopRows
        Per cluster, random members.
    sample : TopRows
        One group: a uniform random sample of all rows.
    """

    table: np.ndarray
    inertia: float
    nearest: TopRows
    random: TopRows
    sample: TopRows


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


def evaluate_chunk(X, centers, half_sq_norms, y=None, *, n_classes, n_members, sample_size, seed, row_offset,
                   block_rows=8192):
    """Evaluation statistics of one chunk under fixed centers, see :class:`ChunkEvaluation`.

    Parameters
    ----------
    X : ndarray of shape (m, d)
        One chunk of rows. Not modified.
    centers, half_sq_norms : ndarray
        As for :func:`distkm.kernels.partial_stats`.
    y : ndarray of shape (m,), optional
        True class of every row, in ``[0, n_classes)``.
    n_classes : int
        Columns of the contingency table (1 when ``y`` is None).
    n_members : int
        Nearest and random members kept per cluster.
    sample_size : int
        Rows kept in the uniform sample.
    seed : int
        Seed of the random members and the sample.
    row_offset : int
        Global index of the chunk's first row.
    block_rows : int
        Rows processed at a time.

    Returns
    -------
    ChunkEvaluation
    """
    k = centers.shape[0]
    labels = np.empty(X.shape[0], dtype=np.int32)
    distances = np.empty(X.shape[0], dtype=np.float64)
    for rows in _blocks(X.shape[0], block_rows):
        Xb = X[rows].astype(centers.dtype, copy=False)
        labels[rows] = lb = _assign_block(Xb, centers, half_sq_norms)[0]
        diff = Xb - centers[lb]  # exact distances, as in final_stats, not the GEMM expansion
        distances[rows] = np.einsum("ij,ij->i", diff, diff, dtype=np.float64)
    classes = np.zeros(X.shape[0], dtype=np.int64) if y is None else np.asarray(y, dtype=np.int64)
    table = np.bincount(labels.astype(np.int64) * n_classes + classes, minlength=k * n_classes)
    index = np.arange(row_offset, row_offset + X.shape[0], dtype=np.int64)
    return ChunkEvaluation(
        table.reshape(k, n_classes),
        float(distances.sum()),
        top_rows(X, labels, distances, index, n_groups=k, m=n_members),
        top_rows(X, labels, random_keys(index, seed, _MEMBERS_SALT), index, n_groups=k, m=n_members),
        top_rows(X, np.zeros_like(labels), random_keys(index, seed, _SAMPLE_SALT), index, n_groups=1, m=sample_size),
    )


def merge_evaluations(*parts):
    """Combine :class:`ChunkEvaluation` results (a combine step of the tree reduction)."""
    return ChunkEvaluation(
        np.sum([p.table for p in parts], axis=0),
        sum(p.inertia for p in parts),
        merge_top_rows(*(p.nearest for p in parts)),
        merge_top_rows(*(p.random for p in parts)),
        merge_top_rows(*(p.sample for p in parts)),
    )
