"""Assignment of rows to their nearest center: the arithmetic every pass shares.

Nothing here imports dask, distributed or zarr (numpy only); the engine maps
these functions over row blocks.

Conventions
-----------
* ``X`` is a 2-D chunk of rows, uint8/integer or floating, never modified.
* ``centers`` are already in the compute dtype (float32 or float64), with
  ``half_sq_norms = 0.5 * ||c||^2`` (:func:`prepare_centers`), computed once
  per pass, not once per chunk.
* Chunks are processed in blocks of ``block_rows`` rows, so the temporaries
  (the block cast to the compute dtype, the block x k score matrix) are
  bounded whatever the chunk size, and small enough to stay in cache.
* ``||x||^2`` is never computed for the argmin: it needs only
  ``0.5||c||^2 - x.c`` (one GEMM per block).
"""

from __future__ import annotations

import numpy as np

#: Rows cast to the compute dtype at a time when a caller gives no ``block_rows`` (the engine passes
#: ``distkm.block-rows``, whose default this is): bounds the temporaries whatever the chunk size.
BLOCK_ROWS = 2048


def prepare_centers(centers, dtype):
    """Centers in the compute dtype with ``0.5 * ||c||^2``, computed once per iteration."""
    c = np.ascontiguousarray(centers, dtype=dtype)
    # From the cast centers, so that every pass using the same centers assigns alike.
    half_sq_norms = (0.5 * np.einsum("ij,ij->i", c, c, dtype=np.float64)).astype(dtype)
    return c, half_sq_norms


def row_blocks(n, block_rows):
    """Slices of ``block_rows`` consecutive rows covering ``range(n)``."""
    for start in range(0, n, block_rows):
        yield slice(start, min(start + block_rows, n))


def assign_block(Xb, centers, half_sq_norms):
    """Labels and ``min_j (0.5||c_j||^2 - x.c_j)`` for a block already in the compute dtype.

    ``||x||^2`` does not change the argmin, so it is never computed here.
    """
    scores = Xb @ centers.T
    np.subtract(half_sq_norms, scores, out=scores)
    labels = scores.argmin(axis=1)
    best = np.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
    return labels.astype(np.int32, copy=False), best


def assign_labels(X, centers, half_sq_norms, *, block_rows=BLOCK_ROWS):
    """Index of the nearest center for every row of a chunk (int32)."""
    labels = np.empty(X.shape[0], dtype=np.int32)
    for rows in row_blocks(X.shape[0], block_rows):
        labels[rows] = assign_block(X[rows].astype(centers.dtype, copy=False), centers, half_sq_norms)[0]
    return labels


def squared_distances(X, centers, *, block_rows=BLOCK_ROWS):
    """Squared euclidean distances of every row to every center, (m, k) in the centers' dtype.

    Computed as ``(x - c)**2`` summed, not through the GEMM expansion, so the
    values are accurate even in float32.
    """
    out = np.empty((X.shape[0], centers.shape[0]), dtype=centers.dtype)
    for rows in row_blocks(X.shape[0], block_rows):
        Xb = X[rows].astype(centers.dtype, copy=False)
        for j, c in enumerate(centers):
            diff = Xb - c
            out[rows, j] = np.einsum("ij,ij->i", diff, diff)
    return out


def nearest_centers(X, centers, half_sq_norms, *, block_rows=BLOCK_ROWS, sum_dtype=np.float64):
    """Index of the nearest center of every row, and the exact squared distance to it.

    The distance is ``||x - c||^2`` summed from the differences (in
    ``sum_dtype``), not the GEMM expansion the assignment uses, so it has no
    cancellation error.

    Returns
    -------
    labels : ndarray of shape (m,), int32
    sq_distances : ndarray of shape (m,), float64
    """
    m, d = X.shape[0], centers.shape[1]
    labels = np.empty(m, dtype=np.int32)
    sq_distances = np.empty(m, dtype=np.float64)
    # One buffer for the blocks in the compute dtype, reused as in partial_stats: fresh 6 MB
    # temporaries per block cost 25 % more (in a worker, 270-300 ms per cached 8-chunk block, now ~205).
    block = np.empty((max(1, min(block_rows, m)), d), dtype=centers.dtype)
    for rows in row_blocks(m, block_rows):
        Xb = block[:rows.stop - rows.start]
        np.copyto(Xb, X[rows], casting="unsafe")
        labels[rows] = lb = assign_block(Xb, centers, half_sq_norms)[0]
        diff = centers[lb]
        np.subtract(Xb, diff, out=diff)
        sq_distances[rows] = np.einsum("ij,ij->i", diff, diff, dtype=sum_dtype)
    return labels, sq_distances


def palette_lookup(labels, palette):
    """Colour of every pixel from its cluster label (colour quantisation)."""
    return palette[labels]
