"""Lloyd statistics: what one chunk of rows contributes to a k-means iteration.

Nothing here imports dask (numpy, and scipy.sparse for the per-cluster
sums). Every function takes one in-memory chunk (or the small partial
results of chunks) and returns small numpy results that the
orchestration in :mod:`distkm.engine.lloyd` combines with a tree reduction, in the
manner of scikit-learn's ``_update_chunk_dense`` (a chunk's contribution into
buffers its caller adds up) and dask's ``mean_chunk``/``mean_combine``.

Conventions
-----------
* ``X`` is a 2-D chunk of rows, uint8/integer or floating, never modified.
* ``centers`` are already in the compute dtype (float32 or float64); the
  caller prepares them and ``half_sq_norms = 0.5 * ||c||^2`` once per
  iteration, not once per chunk.
* Chunks are processed in blocks of ``block_rows`` rows, so the temporaries
  (the block cast to the compute dtype, the block x k score matrix) are
  bounded whatever the chunk size, and small enough to stay in cache.
* ``||x||^2`` is never computed per iteration: the argmin needs only
  ``0.5||c||^2 - x.c`` (one GEMM per block), and the inertia is the data's
  ``sum ||x||^2``, computed once per fit (:class:`DataSummary`), plus twice
  the summed minima.
* Statistics that are summed are accumulated in float64. For integer pixels
  in float32 mode the per-block sums are computed in float32 (a sparse
  cluster-membership matrix times the block), where every partial sum is an
  integer below 2**24 (``block_rows <= 65536`` and
  values <= 255), hence exact; across blocks and chunks they are added in
  float64, exact too. Sums of integer data therefore do not depend on the
  order of the reduction.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse

from distkm.kernels.assign import BLOCK_ROWS, nearest_centers, row_blocks

#: Largest block for which float32 sums of uint8 values are exact (255 * 65793 < 2**24).
MAX_EXACT_BLOCK_ROWS = 65536


class DataSummary(NamedTuple):
    """Statistics of the data that do not change between iterations.

    Attributes
    ----------
    n : int
        Number of rows.
    mean : ndarray of shape (d,)
        Per-feature mean (unweighted, as scikit-learn's tolerance uses).
    m2 : ndarray of shape (d,)
        Per-feature sum of squared deviations from ``mean``.
    weight_sum : float
        Sum of the sample weights.
    weighted_sq_norm : float
        ``sum_i w_i ||x_i||^2``: with it, inertia needs only ``min_j (||c_j||^2 - 2 x.c_j)``.
    n_nonfinite : int
        Number of NaN or infinite values (0 for integer data).
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray
    weight_sum: float
    weighted_sq_norm: float
    n_nonfinite: int


def summarize_chunk(X, weights=None, *, block_rows=4096):
    """Summary statistics of one chunk, see :class:`DataSummary`.

    Computed block by block and merged, so the float64 temporaries are
    bounded by ``block_rows`` rows, not by the chunk (a 1M-pixel chunk
    would otherwise need ~100 MB of them).
    """
    n, d = X.shape
    if X.dtype.kind in "ui" and X.dtype.itemsize == 1 and n:
        return _summarize_bytes(X, weights)
    if n <= block_rows:
        return _summarize_block(X, weights)
    return merge_summaries(*(_summarize_block(X[rows], None if weights is None else weights[rows])
                             for rows in row_blocks(n, block_rows)))


#: Rows per block in :func:`_summarize_bytes`: float32 sums of up to 256 squared bytes
#: (each <= 255**2 = 65,025) stay below 2**24, hence exact.
BYTE_SUM_ROWS = 256


def _summarize_bytes(X, weights=None):
    """:class:`DataSummary` of uint8 (or int8) rows from exact sums: ~5 ms a 10,000-row chunk, not ~48.

    Per block of :data:`BYTE_SUM_ROWS` rows, a float32 vector of ones times
    the block, then times its square, gives the column sums of ``x`` and
    ``x**2``: integers below 2**24, exact whatever the summation order; they
    are added in float64, exact below 2**53. ``m2 = S2 - S1**2 / n`` is then
    rounded once, where the float path's two-pass mean and deviations work
    through 8-byte temporaries of the whole block.
    """
    n, d = X.shape
    s1, s2 = np.zeros(d), np.zeros(d)
    sq_norms = None if weights is None else np.empty(n)
    ones = np.ones(BYTE_SUM_ROWS, dtype=np.float32)
    for rows in row_blocks(n, BYTE_SUM_ROWS):
        block = X[rows].astype(np.float32)
        m = block.shape[0]
        s1 += ones[:m] @ block
        np.multiply(block, block, out=block)
        s2 += ones[:m] @ block
        if sq_norms is not None:
            sq_norms[rows] = block.sum(axis=1, dtype=np.float64)
    # S1**2 < 2**53 for any chunk below 2**20 rows; the one division may put an exact 0 a hair below.
    m2 = np.maximum(s2 - s1 * s1 / n, 0.0)
    if weights is None:
        weight_sum, weighted_sq_norm = float(n), float(s2.sum())
    else:
        weights = np.asarray(weights, dtype=np.float64)
        weight_sum, weighted_sq_norm = float(weights.sum()), float(sq_norms @ weights)
    return DataSummary(n, s1 / n, m2, weight_sum, weighted_sq_norm, 0)


def _summarize_block(X, weights=None):
    n, d = X.shape
    if n == 0:
        zeros = np.zeros(d)
        return DataSummary(0, zeros, zeros.copy(), 0.0, 0.0, 0)
    n_nonfinite = 0
    if X.dtype.kind == "f":
        n_nonfinite = int(X.size - np.count_nonzero(np.isfinite(X)))
    X64 = X.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite data is counted, then refused
        mean = X64.mean(axis=0)
        m2 = ((X64 - mean) ** 2).sum(axis=0)
        sq_norms = np.einsum("ij,ij->i", X64, X64)
    if weights is None:
        weight_sum, weighted_sq_norm = float(n), float(sq_norms.sum())
    else:
        weight_sum, weighted_sq_norm = float(weights.sum()), float(sq_norms @ weights)
    return DataSummary(n, mean, m2, weight_sum, weighted_sq_norm, n_nonfinite)


def merge_summaries(*parts):
    """Combine chunk summaries (Chan et al.'s parallel variance update)."""
    # Huge or non-finite data overflows here: it is counted or measured, then refused at the door.
    with np.errstate(over="ignore", invalid="ignore"):
        total = parts[0]
        for part in parts[1:]:
            n = total.n + part.n
            if part.n == 0:
                continue
            if total.n == 0:
                total = part
                continue
            delta = part.mean - total.mean
            mean = total.mean + delta * (part.n / n)
            m2 = total.m2 + part.m2 + delta**2 * (total.n * part.n / n)
            total = DataSummary(
                n,
                mean,
                m2,
                total.weight_sum + part.weight_sum,
                total.weighted_sq_norm + part.weighted_sq_norm,
                total.n_nonfinite + part.n_nonfinite,
            )
    return total


class PartialStats(NamedTuple):
    """What a chunk contributes to one Lloyd iteration.

    Attributes
    ----------
    sums : ndarray of shape (k, d), float64
        Per-cluster (weighted) sums of the rows assigned to each cluster.
    weights : ndarray of shape (k,), float64
        Per-cluster sums of sample weights (counts when unweighted).

    The inertia of the assignment follows from these and the data's
    ``sum_i w_i ||x_i||^2`` (:func:`assignment_inertia`): no per-row
    distance is needed, so a pass that proves most rows' assignments without
    computing their distances (:mod:`distkm.kernels.pruned`) gives the same
    statistics to the bit.
    """

    sums: np.ndarray
    weights: np.ndarray


def assignment_inertia(stats, centers, weighted_sq_norm):
    """``sum_i w_i ||x_i - c_{label_i}||^2`` from a pass's :class:`PartialStats` at ``centers``.

    ``sum_i w_i ||x_i||^2 - 2 sum_j c_j . S_j + sum_j W_j ||c_j||^2``, in float64,
    with ``S_j``, ``W_j`` the per-cluster sums and weights.
    """
    centers = np.asarray(centers, dtype=np.float64)
    return float(weighted_sq_norm - 2.0 * np.einsum("ij,ij->", centers, stats.sums)
                 + stats.weights @ np.einsum("ij,ij->i", centers, centers))


def _membership(labels, k, data):
    """Sparse (k, m) matrix with ``data[i]`` at ``(labels[i], i)``: ``_membership(...) @ X`` sums rows per cluster.

    A sparse product adds each row once into its cluster's sum (d additions a
    row), where a dense one-hot GEMM would do k times as much work.
    """
    m = labels.shape[0]
    return scipy.sparse.csc_matrix((data, labels, np.arange(m + 1)), shape=(k, m))


def stats_block_rows(X, dtype, weights, block_rows):
    """Rows per block of :func:`partial_stats` (and of :mod:`distkm.kernels.pruned`, which must cut alike).

    ``block_rows``, capped at the chunk's rows and, for unweighted 8-bit pixels
    in float32, at :data:`MAX_EXACT_BLOCK_ROWS` (the exact-sums limit).
    """
    m = X.shape[0]
    exact_int = weights is None and X.dtype.kind in "uib" and X.dtype.itemsize == 1 and dtype == np.float32
    return max(1, min(block_rows, MAX_EXACT_BLOCK_ROWS if exact_int else block_rows, m))


def block_scores(Xb, centers_t, half_sq_norms, out):
    """``0.5||c||^2 - x.c`` of a block already in the compute dtype, into ``out`` (returned).

    The one GEMM of :func:`partial_stats`: the pruned kernel calls this very
    function, on the same block buffer, when it needs Lloyd's computed argmin
    itself (a near tie), so that both round alike.
    """
    S = np.matmul(Xb, centers_t, out=out)
    np.subtract(half_sq_norms, S, out=S)
    return S


def accumulate_block(sums, cluster_weights, labels, Xb, ones, weights=None):
    """Add a block's rows, assigned to ``labels``, to the per-cluster ``sums`` and ``cluster_weights`` in place.

    Shared by :func:`partial_stats` and :mod:`distkm.kernels.pruned`: the same
    labels on the same block give the same sums to the bit.

    Parameters
    ----------
    sums : ndarray of shape (k, d), float64
    cluster_weights : ndarray of shape (k,), float64
    labels : ndarray of shape (n,), int
    Xb : ndarray of shape (n, d)
        The block in the compute dtype.
    ones : ndarray
        At least ``n`` ones in the compute dtype (a reused buffer).
    weights : ndarray of shape (n,), optional
        The block's sample weights.
    """
    k, n = sums.shape[0], Xb.shape[0]
    labels = labels.astype(np.intp, copy=False)  # one index dtype for the sparse matrix, whoever calls
    if weights is None:
        cluster_weights += np.bincount(labels, minlength=k)
        # Exact for integer pixels in float32 (see module notes); float64 otherwise.
        sums += _membership(labels, k, ones[:n]) @ Xb
    else:
        wb = np.asarray(weights, dtype=np.float64)
        cluster_weights += np.bincount(labels, weights=wb, minlength=k)
        sums += _membership(labels, k, wb) @ Xb.astype(np.float64, copy=False)


def partial_stats(X, centers, half_sq_norms, weights=None, *, block_rows=BLOCK_ROWS):
    """Partial per-cluster sums and weights of one chunk for one Lloyd iteration.

    Parameters
    ----------
    X : ndarray of shape (m, d)
        One chunk of rows (any real dtype). Not modified.
    centers : ndarray of shape (k, d)
        Current centers, in the compute dtype (float32 or float64).
    half_sq_norms : ndarray of shape (k,)
        ``0.5 * (centers**2).sum(axis=1)`` in the compute dtype.
    weights : ndarray of shape (m,), optional
        Sample weights of the rows; ``None`` means all ones.
    block_rows : int
        Rows processed at a time. A block, its scores and the cast of the
        next one stay in the CPU caches at the default 2,048 rows of 784
        features (measured: a 10,000-row MNIST chunk takes 7.5 ms with
        2,048-row blocks, 19 ms with 8,192).

    Returns
    -------
    PartialStats
    """
    k, d = centers.shape
    m = X.shape[0]
    dtype = centers.dtype
    sums = np.zeros((k, d), dtype=np.float64)
    cluster_weights = np.zeros(k, dtype=np.float64)
    block_rows = stats_block_rows(X, dtype, weights, block_rows)
    # Buffers reused by every block: no allocation per block, and the same memory stays in cache.
    block = np.empty((block_rows, d), dtype=dtype)
    scores = np.empty((block_rows, k), dtype=dtype)
    centers_t = np.ascontiguousarray(centers.T)
    ones = np.ones(block_rows, dtype=dtype)
    for rows in row_blocks(m, block_rows):
        n = rows.stop - rows.start
        Xb = block[:n]
        np.copyto(Xb, X[rows], casting="unsafe")  # uint8 -> compute dtype, into the reused buffer
        labels = block_scores(Xb, centers_t, half_sq_norms, scores[:n]).argmin(axis=1)
        accumulate_block(sums, cluster_weights, labels, Xb, ones, None if weights is None else weights[rows])
    return PartialStats(sums, cluster_weights)


def merge_partial_stats(*parts):
    """Add up :class:`PartialStats` (a combine step of the tree reduction)."""
    sums = parts[0].sums.copy()
    weights = parts[0].weights.copy()
    for part in parts[1:]:
        sums += part.sums
        weights += part.weights
    return PartialStats(sums, weights)


class FinalStats(NamedTuple):
    """Inertia and cluster sizes of a chunk under fixed centers.

    Attributes
    ----------
    inertia : float
        ``sum_i w_i ||x_i - c_{label_i}||^2`` computed from the differences.
    sizes : ndarray of shape (k,), int64
        Number of rows assigned to each cluster.
    """

    inertia: float
    sizes: np.ndarray


def final_stats(X, centers, half_sq_norms, weights=None, *, block_rows=BLOCK_ROWS):
    """Labels of a chunk with its exact inertia and cluster sizes.

    Returns
    -------
    labels : ndarray of shape (m,), int32
    stats : FinalStats
    """
    labels, sq_distances = nearest_centers(X, centers, half_sq_norms, block_rows=block_rows)
    return labels, assignment_stats(labels, sq_distances, weights, centers.shape[0])


def assignment_stats(labels, sq_distances, weights, n_clusters):
    """:class:`FinalStats` of rows already assigned (``labels``) at exact squared distances ``sq_distances``."""
    inertia = float(sq_distances.sum() if weights is None else sq_distances @ np.asarray(weights, np.float64))
    return FinalStats(inertia, np.bincount(labels, minlength=n_clusters).astype(np.int64))


def merge_final_stats(*parts):
    """Add up :class:`FinalStats`."""
    return FinalStats(sum(p.inertia for p in parts), np.sum([p.sizes for p in parts], axis=0))


class FarPoints(NamedTuple):
    """The rows of a chunk farthest from their assigned center, farthest first.

    Within a chunk they are the rows scikit-learn picks,
    ``np.argpartition(distances, -n)[:-n - 1:-1]`` (on data in one chunk,
    scikit-learn's choice among tied rows); across chunks, ties go to the
    lower global row index.
    """

    distances: np.ndarray  # (m,) float64
    index: np.ndarray  # (m,) int64, global row index
    rows: np.ndarray  # (m, d) float64
    weights: np.ndarray  # (m,) float64
    labels: np.ndarray  # (m,) int32


def farthest_points(X, centers, half_sq_norms, weights=None, *, n_points, row_offset, block_rows=BLOCK_ROWS):
    """The ``n_points`` rows of a chunk farthest from their nearest center.

    Used only when a cluster went empty, mirroring scikit-learn's
    ``_relocate_empty_clusters_dense``, which looks at the distance of every
    point to the center it was assigned to in this iteration.
    """
    # Distances summed in the compute dtype, as scikit-learn's relocation ranks them.
    labels, dist = nearest_centers(X, centers, half_sq_norms, block_rows=block_rows, sum_dtype=centers.dtype)
    index = np.arange(row_offset, row_offset + X.shape[0], dtype=np.int64)
    n = min(n_points, X.shape[0])
    top = np.argpartition(dist, -n)[:-n - 1:-1]  # scikit-learn's pick (_relocate_empty_clusters_dense)
    w = np.ones(top.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)[top]
    return FarPoints(dist[top], index[top], X[top].astype(np.float64), w, labels[top])


def _farthest_first(distances, index):
    return np.lexsort((index, -distances))


def merge_farthest_points(*parts, n_points):
    """Keep the ``n_points`` farthest of several :class:`FarPoints`."""
    merged = FarPoints(*(np.concatenate(arrays) for arrays in zip(*parts)))
    top = _farthest_first(merged.distances, merged.index)[:n_points]
    return FarPoints(*(a[top] for a in merged))


def relocate_empty_clusters(sums, cluster_weights, far):
    """Move each empty cluster onto one of the farthest points, in place.

    Same rule as scikit-learn's ``_relocate_empty_clusters_dense``: the
    point leaves its old cluster's sums and becomes the empty cluster's only
    member. ``far`` holds at least as many points as there are empty
    clusters, farthest first. When every row sits on its center (more
    clusters than distinct rows), nothing moves, as in scikit-learn.

    Returns
    -------
    ndarray of int
        The indices of the clusters that were empty and were given a point.
    """
    empty = np.flatnonzero(cluster_weights == 0)
    if len(far.distances) == 0 or far.distances.max() == 0:
        return empty[:0]
    for cluster, x, w, old in zip(empty, far.rows, far.weights, far.labels):
        sums[old] -= x * w
        sums[cluster] = x * w
        cluster_weights[cluster] = w
        cluster_weights[old] -= w
    return empty


def update_centers(sums, cluster_weights):
    """New centers: sums divided by weights, as scikit-learn's ``_average_centers``.

    A cluster still empty (when no row could be moved to it, see
    :func:`relocate_empty_clusters`) goes to the center of the heaviest
    cluster, as scikit-learn means to place it. (scikit-learn's loop copies
    that cluster's row before dividing it when it comes after the empty one;
    distkm always copies the center.)
    """
    nonempty = cluster_weights > 0
    centers = np.asarray(sums, dtype=np.float64) / np.where(nonempty, cluster_weights, 1.0)[:, None]
    if not nonempty.all():
        centers[~nonempty] = centers[np.argmax(cluster_weights)]
    return centers
