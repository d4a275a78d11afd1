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
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import dask
import dask.array as da
from dask.utils import format_bytes
import numpy as np
import zarr

from distkm import config, kernels
from distkm.kernels import pruned
from distkm.engine.passes import compute, map_reduce, map_reduce_with_state, row_offsets
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
        compared with ``tol``), ``relocated`` (clusters that were empty),
        ``distances`` (row-center distances computed: ``n * k`` but where
        pruning skipped some), ``skipped`` (the share of the ``n * k`` not
        computed) and ``seconds``.
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


def _over(x, weights, chunk, combine, cached, *, row_offset=None, per_row=None, stateful=False):
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
        ``chunk(X, state, ...)`` returns ``(state, partial)`` (a pass of
        :func:`distkm.engine.passes.map_reduce_with_state`); a cached block's
        state is the tuple of its chunks' states.

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
    threads = _threads_per_block(len(cached.chunk_rows))

    def per_chunk(i):
        extra = {} if offsets is None else {"row_offset": int(offsets[first_chunks[i]])}
        return {"chunk_rows": cached.chunk_rows[i], "threads": threads, **extra}

    if per_row is not None:
        per_row = per_row.rechunk((tuple(sum(rows) for rows in cached.chunk_rows),))
    by_chunk = _states_chunk_by_chunk if stateful else _chunk_by_chunk
    return (cached.blocks, cached.weights if per_row is None else per_row,
            partial(by_chunk, chunk=chunk, combine=combine), per_chunk)


def _chunk_by_chunk(X, *args, chunk, combine, chunk_rows, row_offset=None, threads=1):
    """``chunk`` over the row chunks of a cached block (``args``: the constants, then the weights), merged in order."""
    *constants, weights = args
    starts = np.cumsum([0, *chunk_rows[:-1]])

    def one(i):
        part = slice(starts[i], starts[i] + chunk_rows[i])
        where = {} if row_offset is None else {"row_offset": row_offset + int(starts[i])}
        return chunk(X[part], *constants, None if weights is None else weights[part], **where)

    parts = _in_order(one, len(chunk_rows), threads)
    return parts[0] if len(parts) == 1 else combine(*parts)


def _threads_per_block(n_blocks):
    """Threads a cached block's task may use: the cluster's threads shared among the pass's blocks."""
    from distkm.engine.passes import active_client

    client = active_client()
    if client is None:
        return 1
    total = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
    return max(1, -(-total // n_blocks))


def _states_chunk_by_chunk(X, states, *args, chunk, combine, chunk_rows, threads=1):
    """:func:`_chunk_by_chunk` for a pass whose chunks carry states: one state per row chunk of the block."""
    *constants, weights = args
    starts = np.cumsum([0, *chunk_rows[:-1]])

    def one(i):
        part = slice(starts[i], starts[i] + chunk_rows[i])
        return chunk(X[part], None if states is None else states[i], *constants,
                     None if weights is None else weights[part])

    new_states, parts = zip(*_in_order(one, len(chunk_rows), threads))
    return tuple(new_states), parts[0] if len(parts) == 1 else combine(*parts)


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


def bounds_fit(x, n_clusters, cached=None):
    """Whether the pruning bounds of every row of ``x`` fit the workers' memory beside the rows they hold.

    The bounds take ``FIXED_ROW_BYTES + 4 G`` bytes a row (at most a quarter
    of a uint8 row, see :func:`~distkm.kernels.n_groups`). They may take the
    share of the workers' memory that cached rows may (``distkm.cache-fraction``),
    less what the cache holds; otherwise the fit runs plain Lloyd passes and says so.
    """
    from distkm.engine.cache import cluster_memory
    from distkm.engine.passes import active_client

    client = active_client()
    memory = 0 if client is None else cluster_memory(client)
    if not memory:  # threads in this process, or workers without a limit: the machine's memory is the limit
        return True
    groups = pruned.n_groups(n_clusters, x.shape[1], x.dtype.itemsize)
    need = x.shape[0] * (pruned.FIXED_ROW_BYTES + 4 * groups)
    held = 0 if cached is None else cached.blocks.nbytes
    if need + held <= config.cache_fraction() * memory:
        return True
    logger.info("pruning bounds (%s) do not fit the workers' memory (%s, %s of it cached rows): plain Lloyd "
                "passes, every distance computed", format_bytes(need), format_bytes(memory), format_bytes(held))
    return False


def tolerance(summary, tol):
    """Absolute tolerance from the relative ``tol``, as scikit-learn's ``_tolerance``."""
    if tol == 0:
        return 0.0
    return float(np.mean(summary.m2 / summary.n) * tol)


def lloyd(x, centers, *, summary, max_iter, tol, dtype, weights=None, split_every, block_rows,
          callback=None, history=None, converged=False, on_iteration=None, cached=None, pruning=False):
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
    pruning : bool
        Compute only the distances that per-row bounds, kept on the workers
        between passes, do not settle (:mod:`distkm.kernels.pruned`): the
        same assignments, hence the same results to the bit, with fewer FLOPs.

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
    history = list(history or [])
    if converged or len(history) >= max_iter:
        return LloydResult(centers, len(history), converged, history)
    common = dict(block_rows=block_rows, split_every=split_every)
    if pruning:
        groups = pruned.center_groups(prepare_centers(centers, dtype)[0],
                                       pruned.n_groups(centers.shape[0], x.shape[1], x.dtype.itemsize))
        passes = _PrunedPasses(x, weights, cached, groups=groups, **common)
    else:
        passes = _PlainPasses(x, weights, cached, **common)
    batch_seconds = config.get("iteration-batch-seconds", 0.0) if passes.data.numblocks[0] == 1 else 0.0
    while len(history) < max_iter and not converged:
        started = time.perf_counter()
        records, stats = [], None
        if batch_seconds > 0:  # stats: the pass at `centers` that found an empty cluster, if the batch stopped there
            centers, records, stats = passes.batch(centers, dtype=dtype, tol=tol, seconds=batch_seconds,
                                                   weighted_sq_norm=summary.weighted_sq_norm,
                                                   max_iter=max_iter - len(history))
        if batch_seconds == 0 or stats is not None:  # an iteration on the client (relocating empty clusters)
            c, half = prepare_centers(centers, dtype)
            if stats is None:
                stats = passes.run(c, half)
            stats, distances = stats
            n_empty = int(np.count_nonzero(stats.weights == 0))
            far = farthest_points(x, c, half, n_empty, weights=weights, split_every=split_every,
                                  block_rows=block_rows) if n_empty else None
            centers, record = lloyd_step(centers, stats, summary.weighted_sq_norm, far)
            record["distances"] = distances
            if n_empty:
                logger.info("iteration %d: %d empty cluster(s) %s moved to the farthest points",
                            len(history) + len(records) + 1, n_empty, record["relocated"])
            record["seconds"] = 0.0
            records.append(record)
        # What the task did not measure (the round trip; the client's whole iteration) is shared by the records.
        overhead = (time.perf_counter() - started - sum(r["seconds"] for r in records)) / len(records)
        for record in records:
            record.update(iteration=len(history) + 1, seconds=record["seconds"] + overhead,
                          skipped=1.0 - record["distances"] / (x.shape[0] * centers.shape[0]))
            history.append(record)
        converged = has_converged(history[-1], tol)
        if on_iteration is not None:
            on_iteration(centers, history, converged or len(history) == max_iter)
        if callback is not None:
            for record in records:
                callback(record)
    return LloydResult(centers, len(history), converged, history)


class _PlainPasses:
    """Lloyd passes that compute every distance: ``run`` one pass, or a ``batch`` of iterations in one task."""

    def __init__(self, x, weights, cached, *, block_rows, split_every):
        self.data, self.weights, self.chunk, self.per_chunk = _over(
            x, weights, partial(_counted_stats, block_rows=block_rows), _merge_counted, cached)
        self.split_every = split_every

    def run(self, c, half):
        """``(PartialStats, distances computed)`` of one pass at the prepared centers ``c``."""
        job = map_reduce(self.data, self.chunk, _merge_counted, name="partial-stats", constants=(c, half),
                         weights=self.weights, split_every=self.split_every, per_chunk=self.per_chunk)
        return compute(job)[0]

    def batch(self, centers, **settings):
        """Iterations in the pass's one task (:func:`_iterations_in_task`): ``(centers, records, stats)``."""
        batch = partial(_iterations_in_task, pass_stats=self.chunk, **settings)
        job = map_reduce(self.data, batch, None, name="partial-stats", constants=(centers,), weights=self.weights,
                         split_every=self.split_every, per_chunk=self.per_chunk)
        return compute(job)[0]


class _PrunedPasses(_PlainPasses):
    """Lloyd passes whose chunks keep per-row bounds on the workers (:mod:`distkm.kernels.pruned`).

    Each pass persists the chunks' new bounds where they were computed and
    hands them to the next; the client keeps only the cast centers they refer
    to (``ref``) and sends how far each center moved since. Bounds only save
    work: a pass given none computes every distance and rebuilds them, with
    the same results. So when a worker leaves with the bounds it held (the
    pass fails on them), the pass runs again without bounds.
    """

    def __init__(self, x, weights, cached, *, groups, block_rows, split_every):
        self.data, self.weights, self.chunk, self.per_chunk = _over(
            x, weights, partial(_pruned_stats, block_rows=block_rows), _merge_counted, cached, stateful=True)
        self.split_every, self.groups = split_every, groups
        self.states = self.ref = None

    def run(self, c, half):
        shifts = np.zeros(c.shape[0]) if self.ref is None else pruned.center_shifts(self.ref, c)
        result = self._pass(self.chunk, _merge_counted, (c, half, shifts, self.groups))
        self.ref = c
        return result

    def batch(self, centers, **settings):
        batch = partial(_pruned_iterations_in_task, pass_stats=self.chunk, **settings)
        centers, records, stats, self.ref = self._pass(batch, None, (centers, self.ref, self.groups))
        return centers, records, stats

    def _pass(self, chunk, combine, constants):
        for attempt in range(2):
            states, result = map_reduce_with_state(self.data, chunk, combine, name="partial-stats", state=self.states,
                                                   constants=constants, weights=self.weights,
                                                   split_every=self.split_every, per_chunk=self.per_chunk)
            try:
                # The states stay on the workers. Unoptimised: fusing would rename the read tasks.
                *states, result = dask.persist(*states, result, optimize_graph=False)
                result = compute(result)[0]
            except Exception as e:
                if self.states is None or attempt:
                    raise
                logger.warning("the pruning bounds were lost (%s: %s; did a worker leave?): this pass computes "
                               "every distance and rebuilds them", type(e).__name__, e)
                self.states = None
                continue
            self.states = states
            return result


def _counted_stats(X, c, half, weights, *, block_rows):
    """:func:`~distkm.kernels.partial_stats` with the number of distances it computed (all of them)."""
    return kernels.partial_stats(X, c, half, weights, block_rows=block_rows), X.shape[0] * c.shape[0]


def _pruned_stats(X, bounds, c, half, shifts, groups, weights, *, block_rows):
    """A chunk's ``(bounds, (PartialStats, distances computed))`` (:func:`~distkm.kernels.pruned_partial_stats`)."""
    bounds, stats, distances = pruned.pruned_partial_stats(X, bounds, c, half, shifts, groups, weights,
                                                            block_rows=block_rows)
    return bounds, (stats, distances)


def _merge_counted(*parts):
    return kernels.merge_partial_stats(*(p[0] for p in parts)), sum(p[1] for p in parts)


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
    empty : tuple or None
        ``(PartialStats, distances)`` of ``centers`` when they left a cluster empty (the batch stopped there).
    """
    def one_pass(c, half):
        return pass_stats(X, c, half, weights, **pass_kwargs)

    return _batch(one_pass, centers, dtype=dtype, weighted_sq_norm=weighted_sq_norm, tol=tol, max_iter=max_iter,
                  seconds=seconds)


def _pruned_iterations_in_task(X, bounds, centers, ref, groups, weights, *, pass_stats, dtype, weighted_sq_norm, tol,
                               max_iter, seconds, **pass_kwargs):
    """:func:`_iterations_in_task` with the bounds of pruned passes, carried in and out of the task.

    Returns
    -------
    bounds
        The block's bounds after the last pass (they stay on the worker).
    result : tuple
        ``(centers, records, empty, ref)``: as :func:`_iterations_in_task`, and the cast centers the bounds refer to.
    """
    state = {"bounds": bounds, "ref": ref}

    def one_pass(c, half):
        shifts = np.zeros(c.shape[0]) if state["ref"] is None else pruned.center_shifts(state["ref"], c)
        state["bounds"], result = pass_stats(X, state["bounds"], c, half, shifts, groups, weights, **pass_kwargs)
        state["ref"] = c
        return result

    centers, records, empty = _batch(one_pass, centers, dtype=dtype, weighted_sq_norm=weighted_sq_norm, tol=tol,
                                     max_iter=max_iter, seconds=seconds)
    return state["bounds"], (centers, records, empty, state["ref"])


def _batch(one_pass, centers, *, dtype, weighted_sq_norm, tol, max_iter, seconds):
    """Iterations of ``one_pass(c, half) -> (PartialStats, distances)`` until converged, empty, or ``seconds``."""
    records = []
    deadline = time.perf_counter() + seconds
    while len(records) < max_iter:
        started = time.perf_counter()
        c, half = prepare_centers(centers, dtype)
        stats, distances = counted = one_pass(c, half)
        if not stats.weights.all():
            return centers, records, counted
        centers, record = lloyd_step(centers, stats, weighted_sq_norm)
        record.update(distances=distances, seconds=time.perf_counter() - started)
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
