"""Initial centers: k-means|| over all rows, k-means++ on a sample gathered chunk by chunk, random rows, or given.

All randomness comes from one ``numpy.random.RandomState`` on the client (for
k-means||, a seed drawn from it feeds counter-based keys computed where the
rows are), so a seeded initialisation does not depend on the cluster. Rows
are picked by global index and gathered chunk by chunk, so only samples and
candidates, never the data, reach the client.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import numpy as np
from sklearn.cluster import KMeans as _SKLearnKMeans
from sklearn.cluster import kmeans_plusplus
from sklearn.utils.random import sample_without_replacement
from threadpoolctl import threadpool_limits

from distkm import kernels
from distkm.engine.graph import map_reduce, row_offsets
from distkm.engine.run import compute_keeping_states
from distkm.kernels.assign import prepare_centers

logger = logging.getLogger("distkm")


def init_centers(x, n_clusters, init, random_state, *, weights=None, sample_size=20000, dtype=np.float32,
                 oversampling=2.0, rounds=5, split_every, block_rows):
    """Initial centers for one run.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    n_clusters : int
    init : {"k-means++", "k-means||", "random"} or ndarray of shape (n_clusters, d)
        An array is returned as float64 (it was validated at the door).
    random_state : numpy.random.RandomState
        Consumed in the same way scikit-learn's ``KMeans`` consumes it.
    weights : array of shape (n,), optional
        Sample weights (numpy or dask); only the sampled ones are gathered.
    sample_size : int
        Rows on which k-means++ runs. When ``n <= sample_size`` all rows are
        used, nothing extra is drawn, and the result is scikit-learn's.

    Returns
    -------
    ndarray of shape (n_clusters, d), float64
    """
    if not isinstance(init, str):
        return np.array(init, dtype=np.float64)
    n = x.shape[0]
    if init == "random":
        # scikit-learn: random_state.choice(n, k, replace=False, p=w / w.sum()), its unit weights in the
        # dtype it computes in. On one chunk, the same; on more, unweighted rows are drawn without
        # probabilities (no array of n of them on the client).
        sklearn_dtype = np.float32 if x.dtype == np.float32 else np.float64
        if weights is not None:
            w = np.asarray(weights, dtype=sklearn_dtype)
            p = w / w.sum()
        elif x.numblocks[0] == 1:
            ones = np.ones(n, dtype=sklearn_dtype)
            p = ones / ones.sum()
        else:
            p = None
        seeds = random_state.choice(n, size=n_clusters, replace=False, p=p)
        return take_rows(x, seeds)
    if init == "k-means++":
        size = max(sample_size, n_clusters)
        if n <= size:
            sample = x.compute().astype(np.float64)
            sample_weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        else:
            # Not random_state.choice(n, size, replace=False): it permutes all n indices (2.5 s and
            # 200 MB for 24M rows); this draws only the sample, from the same RandomState.
            index = np.sort(sample_without_replacement(n, size, random_state=random_state))
            sample = take_rows(x, index)
            sample_weights = None if weights is None else np.asarray(weights[index], dtype=np.float64)
        centers, _ = kmeans_plusplus(sample, n_clusters, sample_weight=sample_weights, random_state=random_state)
        return centers
    if init == "k-means||":
        return kmeans_parallel(x, n_clusters, random_state, weights=weights, dtype=dtype, oversampling=oversampling,
                               rounds=rounds, split_every=split_every, block_rows=block_rows)
    raise ValueError(f"init must be 'k-means++', 'k-means||', 'random' or an array, got {init!r}")


def kmeans_parallel(x, n_clusters, random_state, *, weights=None, dtype=np.float32, oversampling=2.0, rounds=5,
                    split_every, block_rows):
    """k-means|| (scalable k-means++): ``rounds + 1`` passes over all rows, then k-means++ on the candidates.

    The first candidate is a row drawn at random; each round draws
    ``l = oversampling * n_clusters`` more rows with probability proportional
    to their (weighted) squared distance to the candidates so far; a last
    pass counts the rows nearest each candidate; scikit-learn's k-means++
    and Lloyd on the weighted candidates then give the centers. Each chunk
    keeps the distance to its rows' nearest candidate between passes (on the
    worker), so a pass measures distances to the new candidates only. See
    :mod:`distkm.kernels.kmeans_parallel`.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    n_clusters : int
    random_state : numpy.random.RandomState
    weights : dask.array.Array of shape (n,), optional
    dtype : numpy dtype
        Compute dtype of the distances.
    oversampling : float
        ``l / n_clusters``; Bahmani et al. find 2 and 5 rounds as good as k-means++.
    rounds : int
        Sampling passes.
    split_every, block_rows : int
        Fan-in of the reduction tree; rows per block in the kernel.

    Returns
    -------
    ndarray of shape (n_clusters, d), float64
    """
    started = time.perf_counter()
    n = x.shape[0]
    n_draws = max(1, int(round(oversampling * n_clusters)))
    seed = int(random_state.randint(np.iinfo(np.int32).max))
    if weights is None:
        first = random_state.randint(n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        first = random_state.choice(n, p=w / w.sum())
    candidates = take_rows(x, [first])
    offsets = row_offsets(x)
    states, new, cost = [None] * x.numblocks[0], candidates, None
    for round_number in range(rounds + 1):
        draws = n_draws if round_number < rounds else 0  # the last pass only counts
        chunk = partial(kernels.kmeans_parallel_round, first_candidate=len(candidates) - len(new),
                        n_candidates=len(candidates), n_draws=draws, seed=seed, round_number=round_number,
                        block_rows=block_rows)
        job = map_reduce(x, chunk, kernels.merge_round_partials, name="kmeans-parallel", states=states,
                         constants=prepare_centers(new, dtype), weights=weights, split_every=split_every,
                         per_chunk=lambda i: {"row_offset": int(offsets[i])})
        states, result = compute_keeping_states(job)  # each chunk's distances stay on its worker
        cost = result.cost
        drawn = result.sample.index[0] >= 0
        drawn &= np.isfinite(result.sample.keys[0])  # rows at distance 0 are never drawn
        if round_number == rounds or not drawn.any():
            break
        new = result.sample.rows[0][drawn].astype(np.float64)
        candidates = np.concatenate([candidates, new])
    del states  # releases the per-chunk distances on the workers
    # The last pass counted the rows nearest every candidate (also when a round drew nothing new).
    centers = _recluster(candidates, result.weights, n_clusters, random_state)
    logger.debug("k-means||: %d candidates in %d passes, cost %.6g, %.2f s", len(candidates), round_number + 1,
                 cost, time.perf_counter() - started)
    return centers


def _recluster(candidates, weights, n_clusters, random_state):
    """``n_clusters`` centers from the weighted candidates: k-means++ then Lloyd, in memory (they are few)."""
    keep = weights > 0
    candidates, weights = candidates[keep], weights[keep]
    if len(candidates) <= n_clusters:  # fewer distinct rows than clusters: pad with copies, as sklearn would
        return np.concatenate([candidates, candidates[np.arange(n_clusters - len(candidates)) % len(candidates)]])
    # One thread: the result must not depend on the client machine's core count.
    with threadpool_limits(limits=1):
        model = _SKLearnKMeans(n_clusters, n_init=1, random_state=random_state, algorithm="lloyd")
        model.fit(candidates, sample_weight=weights)
    return model.cluster_centers_.astype(np.float64)


def take_rows(x, index):
    """Rows ``index`` of ``x`` (in that order) as float64, gathered chunk by chunk."""
    index = np.asarray(index)
    order = np.argsort(index, kind="stable")
    rows = x[index[order]].compute()
    out = np.empty((index.shape[0], x.shape[1]), dtype=np.float64)
    out[order] = rows
    return out
