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

from distkm.kernels.assign import BLOCK_ROWS, nearest_centers, row_blocks
from distkm.kernels.sampling import TopRows, merge_top_rows, random_keys, top_rows  # noqa: F401 (TopRows: part of the results)

#: Salts that make the member and sample keys independent streams of one seed.
_MEMBERS_SALT = 0x6D656D62
_SAMPLE_SALT = 0x73616D70


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


def evaluate_chunk(X, centers, half_sq_norms, y=None, *, n_classes, n_members, sample_size, seed, row_offset,
                   block_rows=BLOCK_ROWS):
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
    labels, distances = nearest_centers(X, centers, half_sq_norms, block_rows=block_rows)
    return evaluate_assignment(X, labels, distances, y, n_clusters=centers.shape[0], n_classes=n_classes,
                               n_members=n_members, sample_size=sample_size, seed=seed, row_offset=row_offset)


def evaluate_assignment(X, labels, distances, y=None, *, n_clusters, n_classes, n_members, sample_size, seed,
                        row_offset):
    """:func:`evaluate_chunk` of rows already assigned (``labels``) at exact squared distances ``distances``.

    The final pass of a fit calls it beside the exact statistics and the
    labels it writes, from the same assignment: one read of the rows.
    """
    k = n_clusters
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


def silhouette_score(X, labels, *, block_rows=1024):
    """Mean silhouette coefficient of the rows ``X`` under ``labels``, as scikit-learn defines it.

    For each row, ``a`` is its mean distance to the other rows of its cluster,
    ``b`` the smallest mean distance to the rows of another cluster, and its
    coefficient ``(b - a) / max(a, b)`` (0 in a cluster of one).

    The pairwise distances come from ``||u||^2 + ||v||^2 - 2 u.v``: one GEMM
    per block of rows in ``X``'s dtype, on rows centred on their mean (smaller
    norms, less cancellation), and the per-cluster sums from a product with the
    one-hot labels in float64. On 5,000 MNIST rows in float32: 0.46 s against
    scikit-learn's 1.0 s (which upcasts float32 to float64 block by block),
    within ~1e-7 (relative) of scikit-learn's float64 score; in float64 the same to 1e-12.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64
    labels : ndarray of shape (n,), int
        With between 2 and ``n - 1`` distinct values.
    block_rows : int
        Rows per block: the block's distances take ``block_rows * n`` values.

    Returns
    -------
    float
    """
    X = X - X.mean(axis=0, dtype=np.float64).astype(X.dtype)
    n = X.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    one_hot = np.zeros((n, counts.shape[0]))
    one_hot[np.arange(n), labels] = 1.0
    sq_norms = np.einsum("ij,ij->i", X, X)
    sums = np.empty(one_hot.shape)
    for rows in row_blocks(n, block_rows):
        d = X[rows] @ X.T
        d *= -2
        d += sq_norms[rows, None]
        d += sq_norms[None, :]
        np.maximum(d, 0, out=d)
        np.sqrt(d, out=d)
        d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = 0  # a row's own distance, not a rounding error
        sums[rows] = d.astype(np.float64, copy=False) @ one_hot
    own = counts[labels]
    everyone = np.arange(n)
    a = sums[everyone, labels] / np.maximum(own - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty label values: 0/0, never the minimum
        mean_to = sums / counts
    mean_to[everyone, labels] = np.inf
    mean_to[:, counts == 0] = np.inf
    b = mean_to.min(axis=1)
    with np.errstate(invalid="ignore"):  # a = b = 0 (duplicate rows): 0/0, counted as 0 as scikit-learn does
        s = (b - a) / np.maximum(a, b)
    s[own == 1] = 0.0
    return float(np.mean(np.nan_to_num(s)))
