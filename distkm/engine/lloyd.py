"""Map-reduce Lloyd iterations on a dask array: the orchestration around :mod:`distkm.kernels`.

One iteration is one pass over the data: every chunk, on the worker that
reads it, turns the current centers into partial per-cluster sums, weights
and a score (:func:`distkm.kernels.partial_stats`); a fixed tree adds the
partials up (:func:`distkm.engine.passes.map_reduce`); the client divides, relocates
empty clusters and checks convergence. Only the k x d partials ever travel.
When a pass is a single task anyway (small data), that task runs a batch of
iterations itself (``distkm.iteration-batch-seconds``), with the same steps.

The stopping rule is scikit-learn's: stop when the squared center shift
``sum((c_new - c_old)**2) <= tol``, with ``tol`` scaled by the mean feature
variance; unchanged labels give a zero shift, so scikit-learn's "strict
convergence" stops at the same iteration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import dask
import dask.array as da
import numpy as np
import zarr

from distkm import config, kernels
from distkm.engine.passes import compute, map_reduce, row_offsets
from distkm.io.stores import zarr_location
from distkm.kernels.assign import prepare_centers

logger = logging.getLogger("distkm")


@dataclass
class LloydResult:
    """Outcome of :func:`lloyd`.

    Attributes
    ----------
    centers : ndarray of shape (k, d), float64
    n_iter : int
        Iterations run (as scikit-learn's ``n_iter_``).
    converged : bool
        Whether the tolerance was reached before ``max_iter``.
    history : list of dict
        Per iteration: ``iteration``, ``inertia`` (of the assignment to the
        centers the iteration started from), ``center_shift`` (squared, as
        compared with ``tol``), ``relocated`` (clusters that were empty) and ``seconds``.
    """

    centers: np.ndarray
    n_iter: int
    converged: bool
    history: list = field(default_factory=list)


def summarize(x, weights=None, *, split_every, cached=None):
    """The :class:`~distkm.kernels.DataSummary` of the data (one pass; over the blocks when ``cached``)."""
    data, data_weights, chunk, per_chunk = _over(x, weights, kernels.summarize_chunk, kernels.merge_summaries, cached)
    job = map_reduce(data, chunk, kernels.merge_summaries, name="summary", weights=data_weights,
                     split_every=split_every, per_chunk=per_chunk)
    return compute(job, label="data summary pass")[0]


def _over(x, weights, chunk, combine, cached, *, row_offset=None, per_row=None):
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

    Returns
    -------
    data, weights, chunk, per_chunk
        Arguments of :func:`distkm.engine.passes.map_reduce`.
    """
    offsets = None if row_offset is None else row_offsets(x) + row_offset
    if cached is None:
        per_chunk = None if offsets is None else (lambda i: {"row_offset": int(offsets[i])})
        return x, weights if per_row is None else per_row, chunk, per_chunk
    first_chunks = np.cumsum([0] + [len(rows) for rows in cached.chunk_rows])

    def per_chunk(i):
        extra = {} if offsets is None else {"row_offset": int(offsets[first_chunks[i]])}
        return {"chunk_rows": cached.chunk_rows[i], **extra}

    if per_row is not None:
        per_row = per_row.rechunk((tuple(sum(rows) for rows in cached.chunk_rows),))
    return (cached.blocks, cached.weights if per_row is None else per_row,
            partial(_chunk_by_chunk, chunk=chunk, combine=combine), per_chunk)


def _chunk_by_chunk(X, *args, chunk, combine, chunk_rows, row_offset=None):
    """``chunk`` over the row chunks of a cached block (``args``: the constants, then the weights), merged in order."""
    *constants, weights = args
    parts, start = [], 0
    for rows in chunk_rows:
        part = slice(start, start + rows)
        where = {} if row_offset is None else {"row_offset": row_offset + start}
        parts.append(chunk(X[part], *constants, None if weights is None else weights[part], **where))
        start += rows
    return parts[0] if len(parts) == 1 else combine(*parts)


def tolerance(summary, tol):
    """Absolute tolerance from the relative ``tol``, as scikit-learn's ``_tolerance``."""
    if tol == 0:
        return 0.0
    return float(np.mean(summary.m2 / summary.n) * tol)


def lloyd(x, centers, *, summary, max_iter, tol, dtype, weights=None, split_every, block_rows,
          callback=None, history=None, converged=False, on_iteration=None, cached=None):
    """Run Lloyd iterations from ``centers`` until the tolerance or ``max_iter``.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
        Row-chunked data; read once per iteration.
    centers : ndarray of shape (k, d)
        Initial centers.
    summary : DataSummary
        From :func:`summarize` (gives the inertia without per-row norms).
    max_iter : int
    tol : float
        Absolute tolerance on the squared center shift (see :func:`tolerance`).
    dtype : numpy dtype
        Compute dtype of the distances (float32 or float64).
    weights : dask.array.Array of shape (n,), optional
    split_every : int
        Fan-in of the reduction tree.
    block_rows : int
        Rows per block inside the kernel.
    callback : callable, optional
        Called with each iteration's history record.
    history : list of dict, optional
        Records of iterations already run from ``centers`` (a resumed fit
        continues the count from there).
    converged : bool
        The loop had already ended: return at once.
    on_iteration : callable, optional
        ``on_iteration(centers, history, converged)`` after every iteration
        (the checkpoint is written there).
    cached : distkm.engine.cache.CachedRows, optional
        ``x`` and ``weights`` held in memory in blocks of ``split_every``
        chunks: the iterations then run one task per block (same results to the bit, see :func:`_over`).

    Returns
    -------
    LloydResult

    Notes
    -----
    When a pass is one task (one chunk, or one cached block), iterations run
    in batches inside that task (``distkm.iteration-batch-seconds``), with
    the same :func:`lloyd_step`: ``callback`` gets the same records either
    way (a record's ``seconds`` is its own compute time plus its share of the
    batch's round trip), and ``on_iteration`` (the checkpoint) sees the state
    after each batch.
    """
    centers = np.array(centers, dtype=np.float64)
    data, data_weights, chunk, per_chunk = _over(x, weights, partial(kernels.partial_stats, block_rows=block_rows),
                                                 kernels.merge_partial_stats, cached)
    history = list(history or [])
    if converged or len(history) >= max_iter:
        return LloydResult(centers, len(history), converged, history)
    batch_seconds = config.get("iteration-batch-seconds", 0.0) if data.numblocks[0] == 1 else 0.0
    while len(history) < max_iter and not converged:
        started = time.perf_counter()
        records, stats = [], None
        if batch_seconds > 0:  # stats: the pass at `centers` that found an empty cluster, if the batch stopped there
            batch = partial(_iterations_in_task, pass_stats=chunk, dtype=dtype, tol=tol, seconds=batch_seconds,
                            weighted_sq_norm=summary.weighted_sq_norm, max_iter=max_iter - len(history))
            job = map_reduce(data, batch, None, name="partial-stats", constants=(centers,), weights=data_weights,
                             split_every=split_every, per_chunk=per_chunk)
            centers, records, stats = compute(job)[0]
        if batch_seconds == 0 or stats is not None:  # an iteration on the client (relocating empty clusters)
            c, half = prepare_centers(centers, dtype)
            if stats is None:
                job = map_reduce(data, chunk, kernels.merge_partial_stats, name="partial-stats", constants=(c, half),
                                 weights=data_weights, split_every=split_every, per_chunk=per_chunk)
                stats = compute(job)[0]
            n_empty = int(np.count_nonzero(stats.weights == 0))
            far = farthest_points(x, c, half, n_empty, weights=weights, split_every=split_every,
                                  block_rows=block_rows) if n_empty else None
            centers, record = lloyd_step(centers, stats, summary.weighted_sq_norm, far)
            if n_empty:
                logger.info("iteration %d: %d empty cluster(s) %s moved to the farthest points",
                            len(history) + len(records) + 1, n_empty, record["relocated"])
            record["seconds"] = 0.0
            records.append(record)
        # What the task did not measure (the round trip; the client's whole iteration) is shared by the records.
        overhead = (time.perf_counter() - started - sum(r["seconds"] for r in records)) / len(records)
        for record in records:
            record.update(iteration=len(history) + 1, seconds=record["seconds"] + overhead)
            history.append(record)
        converged = has_converged(history[-1], tol)
        if on_iteration is not None:
            on_iteration(centers, history, converged or len(history) == max_iter)
        if callback is not None:
            for record in records:
                callback(record)
    return LloydResult(centers, len(history), converged, history)


def lloyd_step(centers, stats, weighted_sq_norm, far=None):
    """One Lloyd iteration: the next centers from a pass's :class:`~distkm.kernels.PartialStats`, and its record.

    The one place where an iteration's arithmetic is written: the client loop
    and the iterations batched inside a task both call it, so both give the
    same centers to the bit. ``far`` (:func:`farthest_points`) gives the
    points that empty clusters move to; without it, empty clusters keep
    their centers.

    Returns
    -------
    centers : ndarray of shape (k, d), float64
    record : dict
        ``inertia`` (of the assignment to ``centers``), ``center_shift``
        (squared), ``relocated``; ``iteration`` and ``seconds`` are left to the loop.
    """
    relocated = []
    if far is not None:
        relocated = kernels.relocate_empty_clusters(stats.sums, stats.weights, far).tolist()
    new_centers = kernels.update_centers(stats.sums, stats.weights)
    record = {"iteration": None, "inertia": kernels.assignment_inertia(stats, centers, weighted_sq_norm),
              "center_shift": float(((new_centers - centers) ** 2).sum()), "relocated": relocated, "seconds": None}
    return new_centers, record


def has_converged(record, tol):
    """scikit-learn's rule: the squared center shift is at most ``tol`` (unchanged labels give 0)."""
    return record["center_shift"] <= tol


def _iterations_in_task(X, centers, weights, *, pass_stats, dtype, weighted_sq_norm, tol, max_iter, seconds,
                        **pass_kwargs):
    """Lloyd iterations inside one task, for data that a pass reads in one task anyway.

    They run as the client would run them (same kernel, same :func:`lloyd_step`,
    hence the same centers to the bit) for up to ``seconds``, then report:
    a round trip per batch instead of one per iteration, which is most of a
    small job's iteration. An iteration that finds an empty cluster is left
    to the client, which needs a pass to relocate it: its statistics go back
    with the batch, so the client does not compute them again.

    Returns
    -------
    centers : ndarray of shape (k, d)
    records : list of dict
        One per iteration run, with its ``seconds`` in the task (``iteration`` is left to the client).
    empty : PartialStats or None
        The statistics of ``centers`` when they left a cluster empty (the batch stopped there).
    """
    records = []
    deadline = time.perf_counter() + seconds
    while len(records) < max_iter:
        started = time.perf_counter()
        c, half = prepare_centers(centers, dtype)
        stats = pass_stats(X, c, half, weights, **pass_kwargs)
        if not stats.weights.all():
            return centers, records, stats
        centers, record = lloyd_step(centers, stats, weighted_sq_norm)
        record["seconds"] = time.perf_counter() - started
        records.append(record)
        if has_converged(record, tol) or time.perf_counter() >= deadline:
            break
    return centers, records, None


def farthest_points(x, centers, half_sq_norms, n_points, *, weights=None, split_every, block_rows):
    """The ``n_points`` rows farthest from their nearest center (one pass; used for empty clusters)."""
    offsets = row_offsets(x)
    chunk = partial(kernels.farthest_points, n_points=n_points, block_rows=block_rows)
    job = map_reduce(x, chunk, partial(kernels.merge_farthest_points, n_points=n_points), name="farthest-points",
                     constants=(centers, half_sq_norms), weights=weights, split_every=split_every,
                     per_chunk=lambda i: {"row_offset": int(offsets[i])})
    return compute(job, label="farthest points pass")[0]


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
    data, per_row, chunk, per_chunk = _over(x, weights, chunk, _merge_final, cached, row_offset=row_offset,
                                            per_row=classes)
    job = map_reduce(data, chunk, _merge_final, name="final-pass", constants=(c, half), weights=per_row,
                     split_every=split_every, per_chunk=per_chunk)
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
    return zarr.create_array(zarr_location(path, read_only=False), shape=(x.shape[0],), chunks=(rows[0],),
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
    z = zarr.create_array(zarr_location(path, read_only=False), shape=labels.shape, chunks=(chunk,),
                          dtype=labels.dtype,
                          dimension_names=["sample"], attributes={"distkm": "labels", **(attrs or {})})
    job = da.store(labels.rechunk(chunk), z, lock=False, compute=False)
    # optimize_graph=False: dask would otherwise fuse the labels tasks into the reads, and the
    # dashboard would show neither distkm-labels nor the progress of that pass.
    compute(job, label="labels pass", optimize_graph=False)
    return z
