"""Map-reduce Lloyd iterations on a dask array: the orchestration around :mod:`distkm.kernels`.

One iteration is one pass over the data: every chunk, on the worker that
reads it, turns the current centers into partial per-cluster sums, weights
and a score (:func:`distkm.kernels.partial_stats`); a fixed tree adds the
partials up (:func:`distkm.engine.graph.map_reduce`); the client divides, relocates
empty clusters and checks convergence. Only the k x d partials ever travel.
When a pass is a single task anyway (small data), that task runs a batch of
iterations itself (``batch_seconds``), with the same steps.

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

import numpy as np
from dask.utils import format_bytes

from distkm import kernels
from distkm.engine.cache import cluster_memory, over_rows
from distkm.engine.graph import map_reduce, row_offsets
from distkm.engine.run import active_client, compute, compute_keeping_states
from distkm.kernels import margins, pruned
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
    data, data_weights, chunk, per_chunk = over_rows(x, weights, kernels.summarize_chunk, kernels.merge_summaries,
                                                     cached)
    job = map_reduce(data, chunk, kernels.merge_summaries, name="summary", weights=data_weights,
                     split_every=split_every, per_chunk=per_chunk)
    return compute(job.result, label="data summary pass")[0]


def bounds_fit(x, n_clusters, cached=None, *, cache_fraction):
    """Whether the pruning bounds of every row of ``x`` fit the workers' memory beside the rows they hold.

    The bounds take ``FIXED_ROW_BYTES + 4 G`` bytes a row (at most a quarter
    of a uint8 row, see :func:`~distkm.kernels.n_groups`). They may take the
    share of the workers' memory that cached rows may (``cache_fraction``),
    less what the cache holds; otherwise the fit runs plain Lloyd passes and says so.
    """
    client = active_client()
    memory = 0 if client is None else cluster_memory(client)
    if not memory:  # threads in this process, or workers without a limit: the machine's memory is the limit
        return True
    groups = margins.n_groups(n_clusters, x.shape[1], x.dtype.itemsize)
    need = x.shape[0] * (margins.FIXED_ROW_BYTES + 4 * groups)
    held = 0 if cached is None else cached.blocks.nbytes
    if need + held <= cache_fraction * memory:
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
          callback=None, history=None, converged=False, on_iteration=None, cached=None, pruning=False,
          batch_seconds=0.0):
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
    batch_seconds : float
        When a pass is one task, it runs iterations in batches of about this long (0: one per pass).

    Returns
    -------
    LloydResult

    Notes
    -----
    When a pass is one task (one chunk, or one cached block), iterations run
    in batches inside that task (``batch_seconds``), with
    the same :func:`lloyd_step`: ``callback`` gets the same records either
    way (a record's ``seconds`` is its own compute time plus its share of the
    batch's round trip), and ``on_iteration`` (the checkpoint) sees the state
    after each batch.
    """
    centers = np.array(centers, dtype=np.float64)
    history = list(history or [])
    if converged or len(history) >= max_iter:
        return LloydResult(centers, len(history), converged, history)
    groups = None
    if pruning:
        groups = margins.center_groups(prepare_centers(centers, dtype)[0],
                                       margins.n_groups(centers.shape[0], x.shape[1], x.dtype.itemsize))
    passes = _LloydPasses(x, weights, cached, groups=groups, block_rows=block_rows, split_every=split_every)
    batch_seconds = batch_seconds if passes.data.numblocks[0] == 1 else 0.0
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


class _LloydPasses:
    """Lloyd passes over the rows: ``run`` one pass, or a ``batch`` of iterations in the pass's one task.

    With ``groups`` (pruning), every chunk keeps per-row bounds on the worker
    that computed them (:mod:`distkm.kernels.pruned`): each pass persists the
    chunks' new bounds there and hands them to the next; the client keeps
    only the cast centers they refer to (``ref``) and sends how far each
    center moved since. Bounds only save work: a pass given none computes
    every distance and rebuilds them, with the same results. So when a worker
    leaves with the bounds it held (the pass fails on them), the pass runs
    again without bounds. Without ``groups``, a pass is a plain one: its
    state is ``None``, and every distance is computed.
    """

    def __init__(self, x, weights, cached, *, groups=None, block_rows, split_every):
        self.pruning = groups is not None
        kernel = partial(_pruned_stats if self.pruning else _counted_stats, block_rows=block_rows)
        self.data, self.weights, self.chunk, self.per_chunk = over_rows(x, weights, kernel, _merge_counted, cached,
                                                                        stateful=self.pruning)
        self.split_every, self.groups = split_every, groups
        self.states = [None] * self.data.numblocks[0] if self.pruning else None
        self.ref = None

    def run(self, c, half):
        """``(PartialStats, distances computed)`` of one pass at the prepared centers ``c``."""
        if not self.pruning:
            return self._pass(self.chunk, _merge_counted, (c, half))
        shifts = np.zeros(c.shape[0]) if self.ref is None else margins.center_shifts(self.ref, c)
        result = self._pass(self.chunk, _merge_counted, (c, half, shifts, self.groups))
        self.ref = c
        return result

    def batch(self, centers, **settings):
        """Iterations in the pass's one task (:func:`_iterations_in_task`): ``(centers, records, stats)``."""
        batch = partial(_iterations_in_task, pass_stats=self.chunk, stateful=self.pruning, **settings)
        constants = (centers, self.ref, self.groups) if self.pruning else (centers,)
        centers, records, stats, self.ref = self._pass(batch, None, constants)
        return centers, records, stats

    def _pass(self, chunk, combine, constants):
        for attempt in range(2):
            job = map_reduce(self.data, chunk, combine, name="partial-stats", constants=constants,
                             weights=self.weights, split_every=self.split_every, per_chunk=self.per_chunk,
                             states=self.states)
            if not self.pruning:
                return compute(job.result)[0]
            try:
                states, result = compute_keeping_states(job)
            except Exception as e:
                if all(state is None for state in self.states) or attempt:
                    raise
                logger.warning("the pruning bounds were lost (%s: %s; did a worker leave?): this pass computes "
                               "every distance and rebuilds them", type(e).__name__, e)
                self.states = [None] * len(self.states)
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


def _iterations_in_task(X, *args, pass_stats, stateful, dtype, weighted_sq_norm, tol, max_iter, seconds,
                        **pass_kwargs):
    """Lloyd iterations inside one task, for data that a pass reads in one task anyway.

    They run as the client would run them (same kernel, same :func:`lloyd_step`,
    hence the same centers to the bit) for up to ``seconds``, then report:
    a round trip per batch instead of one per iteration, which is most of a
    small job's iteration. An iteration that finds an empty cluster is left
    to the client, which needs a pass to relocate it: its statistics go back
    with the batch, so the client does not compute them again.

    ``args`` are ``(centers, weights)``, or for pruned passes (``stateful``)
    ``(bounds, centers, ref, groups, weights)``: the bounds are carried in and
    out of the task, and ``ref`` is the cast centers they refer to.

    Returns
    -------
    result : tuple
        ``(centers, records, empty, ref)``: the centers; one record per
        iteration run, with its ``seconds`` in the task (``iteration`` is
        left to the client); ``(PartialStats, distances)`` of ``centers``
        when they left a cluster empty (the batch stopped there), else
        ``None``; the cast centers the bounds now refer to (``None`` when plain).
        Pruned passes return ``(bounds, result)``, the bounds staying on the worker.
    """
    if stateful:
        bounds, centers, ref, groups, weights = args
    else:
        (centers, weights), bounds, ref, groups = args, None, None, None
    state = {"bounds": bounds, "ref": ref}

    def one_pass(c, half):
        if not stateful:
            return pass_stats(X, c, half, weights, **pass_kwargs)
        shifts = np.zeros(c.shape[0]) if state["ref"] is None else margins.center_shifts(state["ref"], c)
        state["bounds"], result = pass_stats(X, state["bounds"], c, half, shifts, groups, weights, **pass_kwargs)
        state["ref"] = c
        return result

    centers, records, empty = _batch(one_pass, centers, dtype=dtype, weighted_sq_norm=weighted_sq_norm, tol=tol,
                                     max_iter=max_iter, seconds=seconds)
    result = (centers, records, empty, state["ref"])
    return (state["bounds"], result) if stateful else result


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
    return compute(job.result, label="farthest points pass")[0]
