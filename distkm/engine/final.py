"""The pass after convergence, and the labels: what needs the final assignment, in one read of the rows.

:func:`final_pass` assigns every row once under the final centers and, from
that one assignment, derives the exact inertia and cluster sizes, writes the
rows' labels into a zarr array and tabulates the evaluation. The lazy
:func:`assign_lazy` and :func:`distances_lazy` serve ``predict`` and
``transform``; :func:`write_labels` writes lazy labels chunk by chunk.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import dask
import dask.array as da
import numpy as np
import zarr

from distkm import kernels
from distkm.engine.cache import over_rows
from distkm.engine.graph import map_reduce
from distkm.engine.run import compute
from distkm.kernels.assign import prepare_centers


class FinalPass(NamedTuple):
    """What the pass after convergence finds: exact statistics, and the evaluation tables when asked."""

    stats: kernels.FinalStats
    evaluation: kernels.ChunkEvaluation | None = None


def final_pass(x, centers, dtype, *, weights=None, split_every, block_rows, cached=None, labels_to=None,
               classes=None, evaluation=None, row_offset=0):
    """Exact inertia and cluster sizes under fixed centers, in one read of the rows; also labels and evaluation.

    One pass after convergence does everything that needs the final
    assignment: every task assigns its rows once and from that assignment
    derives the statistics, writes the rows' labels into ``labels_to`` and
    tabulates the evaluation (:func:`~distkm.kernels.evaluate_assignment`).

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    centers : ndarray of shape (k, d)
    dtype : numpy dtype
        Compute dtype.
    weights : dask.array.Array of shape (n,), optional
        Sample weights (not with ``classes``).
    split_every, block_rows : int
    cached : distkm.engine.cache.CachedRows, optional
        Read the rows from the blocks held in memory.
    labels_to : zarr.Array of shape (n,), optional
        Where every task writes the labels of its rows. Its chunks must hold
        whole chunks of ``x`` (see :func:`labels_array_for`), so that no two
        tasks write into one zarr chunk.
    classes : dask.array.Array of shape (n,), optional
        True classes for the evaluation tables.
    evaluation : dict, optional
        Keyword arguments of :func:`~distkm.kernels.evaluate_assignment`
        (``n_classes``, ``n_members``, ``sample_size``, ``seed``): tabulate them too.
    row_offset : int
        Global index of the first row of ``x`` (the evaluation's keys depend on it).

    Returns
    -------
    FinalPass
    """
    if weights is not None and classes is not None:
        raise ValueError("final_pass: weights and classes cannot both be given")
    c, half = prepare_centers(centers, dtype)
    chunk = partial(_final_chunk, block_rows=block_rows, evaluation=evaluation, labels_to=labels_to,
                    first_row=row_offset)
    data, per_row, chunk, per_chunk = over_rows(x, weights, chunk, _merge_final, cached, row_offset=row_offset,
                                            per_row=classes)
    job = map_reduce(data, chunk, _merge_final, name="final-pass", constants=(c, half), weights=per_row,
                     split_every=split_every, per_chunk=per_chunk).result
    label = "final pass" + (" (labels, statistics, evaluation)" if labels_to is not None or evaluation else "")
    return compute(job, label=label)[0]


def final_stats(x, centers, dtype, *, weights=None, split_every, block_rows, cached=None):
    """Exact inertia and cluster sizes of the data under fixed centers (one pass; over the blocks when ``cached``)."""
    return final_pass(x, centers, dtype, weights=weights, split_every=split_every, block_rows=block_rows,
                      cached=cached).stats


def _final_chunk(X, centers, half_sq_norms, per_row=None, *, block_rows, evaluation, labels_to, first_row,
                 row_offset):
    """One chunk of :func:`final_pass` (``per_row``: the classes when evaluating, else the sample weights)."""
    labels, sq_distances = kernels.nearest_centers(X, centers, half_sq_norms, block_rows=block_rows)
    if labels_to is not None:
        labels_to[row_offset - first_row:row_offset - first_row + X.shape[0]] = labels
    weights = None if evaluation else per_row
    stats = kernels.assignment_stats(labels, sq_distances, weights, centers.shape[0])
    if not evaluation:
        return FinalPass(stats)
    tables = kernels.evaluate_assignment(X, labels, sq_distances, per_row, n_clusters=centers.shape[0],
                                         row_offset=row_offset, **evaluation)
    return FinalPass(stats, tables)


def _merge_final(*parts):
    evaluations = [p.evaluation for p in parts]
    return FinalPass(kernels.merge_final_stats(*(p.stats for p in parts)),
                     None if evaluations[0] is None else kernels.merge_evaluations(*evaluations))


def labels_array_for(path, x, *, attrs=None):
    """An empty int32 zarr array for the labels of ``x``'s rows whose chunks hold whole chunks of ``x``.

    Returns ``None`` when ``x``'s row chunks are irregular (a split that
    starts inside a store chunk): zarr chunks are regular, so the labels
    are then written by their own pass (:func:`write_labels`).
    """
    rows = x.chunks[0]
    if len(set(rows[:-1])) > 1 or rows[-1] > rows[0]:
        return None
    return zarr.create_array(path, shape=(x.shape[0],), chunks=(rows[0],),
                             dtype=np.int32,
                             dimension_names=["sample"], attributes={"distkm": "labels", **(attrs or {})})


def assign_lazy(x, centers, dtype, *, block_rows):
    """Lazy labels of every row: a dask array chunked like ``x``'s rows (tasks ``distkm-labels``)."""
    c, half = prepare_centers(centers, dtype)
    token = dask.base.tokenize(x, c, block_rows)
    return x.map_blocks(kernels.assign_labels, dask.delayed(c), dask.delayed(half), block_rows=block_rows,
                        drop_axis=1, dtype=np.int32, name=f"distkm-labels-{token}", meta=np.empty((0,), np.int32))


def distances_lazy(x, centers, dtype, *, block_rows):
    """Lazy euclidean distances of every row to every center, (n, k) (tasks ``distkm-distances``)."""
    c = np.ascontiguousarray(centers, dtype=dtype)
    token = dask.base.tokenize(x, c, block_rows)
    sq = x.map_blocks(kernels.squared_distances, dask.delayed(c), block_rows=block_rows,
                      chunks=(x.chunks[0], (c.shape[0],)), dtype=c.dtype, name=f"distkm-distances-{token}",
                      meta=np.empty((0, 0), c.dtype))
    return da.sqrt(sq)


def write_labels(path, labels, *, attrs=None):
    """Write lazy labels (a 1-D dask array) to a zarr array, chunk by chunk on the workers."""
    chunk = max(labels.chunks[0])
    z = zarr.create_array(path, shape=labels.shape, chunks=(chunk,),
                          dtype=labels.dtype,
                          dimension_names=["sample"], attributes={"distkm": "labels", **(attrs or {})})
    job = da.store(labels.rechunk(chunk), z, lock=False, compute=False)
    # optimize_graph=False: dask would otherwise fuse the labels tasks into the reads, and the
    # dashboard would show neither distkm-labels nor the progress of that pass.
    compute(job, label="labels pass", optimize_graph=False)
    return z
