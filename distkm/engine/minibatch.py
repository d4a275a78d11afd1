"""Out-of-core mini-batch k-means: a few chunks per step, a good answer in one or two passes.

scikit-learn's ``MiniBatchKMeans`` updates the centers from small random
batches of rows held in memory. Here a batch is ``batch_chunks`` row chunks of
the store, drawn without replacement in a seeded order that changes every pass;
each step is one small map-reduce (:func:`distkm.kernels.partial_stats` on
those chunks, on the workers that read them) and the centers move by
scikit-learn's rule: every center is the running mean of all the rows ever
assigned to it,

    c_j <- (W_j c_j + s_j) / (W_j + b_j),    W_j <- W_j + b_j,

with ``s_j``/``b_j`` the batch's sum/weight for cluster ``j`` and ``W_j``
the weight seen so far. The run stops after ``max_passes`` passes over the
data, or when a whole pass moved the centers by at most ``tol`` (squared).

The chunk order is drawn on the client and each step's partials are reduced
in a fixed tree, so a seeded run gives the same bits on any cluster.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from distkm import kernels
from distkm.engine.graph import map_reduce
from distkm.engine.lloyd import LloydResult
from distkm.engine.run import compute
from distkm.kernels.assign import prepare_centers


def minibatch(x, centers, *, summary, max_passes, tol, dtype, random_state, batch_chunks=4, weights=None,
              split_every, block_rows, callback=None):
    """Mini-batch k-means over the row chunks of ``x``.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    centers : ndarray of shape (k, d)
        Initial centers.
    summary : DataSummary
        Of all the data: its ``sum w ||x||^2`` turns a batch's score into an
        inertia estimate without computing the batch's norms again.
    max_passes : int
        Passes over the data at most.
    tol : float
        Absolute tolerance on the squared center shift over one pass.
    dtype : numpy dtype
        Compute dtype of the distances.
    random_state : numpy.random.RandomState
        Draws the chunk order of every pass.
    batch_chunks : int
        Row chunks per step.
    weights : dask.array.Array of shape (n,), optional
    split_every, block_rows : int
    callback : callable, optional
        Called with each step's record: ``iteration`` (step), ``pass``, ``rows``,
        ``inertia`` (an estimate for all rows: the data's ``sum w ||x||^2`` plus the batch's
        scaled score; exact in expectation over random batches),
        ``center_shift`` (squared, of this step), ``relocated`` (always empty) and ``seconds``.

    Returns
    -------
    LloydResult
        ``n_iter`` counts passes (as scikit-learn's ``MiniBatchKMeans.n_iter_``); ``history`` has one record per step.
    """
    centers = np.array(centers, dtype=np.float64)
    seen = np.zeros(centers.shape[0])  # W_j: weight of all rows assigned to j so far
    n_chunks, n_rows = x.numblocks[0], x.shape[0]
    chunk_rows = np.asarray(x.chunks[0])
    history, converged, step = [], False, 0
    chunk = partial(kernels.partial_stats, block_rows=block_rows)
    for pass_number in range(1, max_passes + 1):
        at_pass_start = centers.copy()
        order = random_state.permutation(n_chunks)
        for start in range(0, n_chunks, batch_chunks):
            started = time.perf_counter()
            batch = np.sort(order[start:start + batch_chunks])  # sorted: a fixed tree, whatever the draw
            c, half = prepare_centers(centers, dtype)
            job = map_reduce(x.blocks[batch.tolist()], chunk, kernels.merge_partial_stats, name="minibatch-step",
                             constants=(c, half),
                             weights=None if weights is None else weights.blocks[batch.tolist()],
                             split_every=split_every).result
            stats = compute(job)[0]
            rows = int(chunk_rows[batch].sum())
            # The batch's inertia at `centers`, its part beside sum ||x||^2 scaled to the data (an estimate).
            inertia = summary.weighted_sq_norm + kernels.assignment_inertia(stats, centers, 0.0) * n_rows / rows
            new_centers = centers.copy()
            hit = stats.weights > 0
            total = seen[hit] + stats.weights[hit]
            new_centers[hit] = (centers[hit] * seen[hit, None] + stats.sums[hit]) / total[:, None]
            seen[hit] = total
            shift = float(((new_centers - centers) ** 2).sum())
            centers = new_centers
            step += 1
            record = {"iteration": step, "pass": pass_number, "rows": rows,
                      "inertia": inertia, "center_shift": shift,
                      "relocated": [], "seconds": time.perf_counter() - started}
            history.append(record)
            if callback is not None:
                callback(record)
        if float(((centers - at_pass_start) ** 2).sum()) <= tol:
            converged = True
            break
    return LloydResult(centers, pass_number, converged, history)
