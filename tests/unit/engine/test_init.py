"""k-means|| (distkm.engine.init, distkm.kernels.kmeans_parallel) on a real LocalCluster, against scikit-learn."""

import dask
import numpy as np
import pytest

from distkm.engine.init import init_centers
from distkm.kernels.assign import prepare_centers
from distkm.kernels.kmeans_parallel import kmeans_parallel_round, merge_round_partials


def _brute_sq_distances(X, candidates):
    return ((X[:, None, :].astype(np.float64) - candidates[None]) ** 2).sum(-1)


def test_round_state_is_the_nearest_candidate_and_draws_do_not_depend_on_chunking():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(3000, 40)).astype(np.uint8)
    first, second = X[[5]].astype(np.float64), X[[17, 900, 2500]].astype(np.float64)
    kw = dict(seed=3, round_number=1, n_draws=25)

    def run(rows):
        state, _ = kmeans_parallel_round(X[rows], None, *prepare_centers(first, np.float64), first_candidate=0,
                                         n_candidates=1, n_draws=0, seed=3, round_number=0, row_offset=rows.start)
        return kmeans_parallel_round(X[rows], state, *prepare_centers(second, np.float64), first_candidate=1,
                                     n_candidates=4, row_offset=rows.start, block_rows=700, **kw)

    state, whole = run(slice(0, 3000))
    d2 = _brute_sq_distances(X, np.concatenate([first, second]))
    np.testing.assert_allclose(state.sq_distances, d2.min(1), rtol=1e-5, atol=1.0)
    assert (state.nearest == d2.argmin(1)).mean() > 0.999  # ties and float32 rounding aside
    np.testing.assert_array_equal(whole.weights, np.bincount(state.nearest, minlength=4))
    assert whole.cost == pytest.approx(d2.min(1).sum(), rel=1e-5)
    parts = merge_round_partials(*(run(slice(s, min(s + 700, 3000)))[1] for s in range(0, 3000, 700)))
    np.testing.assert_array_equal(parts.sample.index, whole.sample.index)
    assert parts.sample.index.shape == (1, 25) and (state.sq_distances[parts.sample.index[0]] > 0).all()


def test_kmeans_parallel_is_reproducible_on_any_scheduler(client, mnist_test_store):
    from distkm.io.stores import open_store

    x = open_store(mnist_test_store).images
    settings = {"split_every": 8, "block_rows": 2048}
    on_cluster = init_centers(x, 10, "k-means||", np.random.RandomState(7), **settings)
    with dask.config.set(scheduler="sync"):
        local = init_centers(x.rechunk((1000, 784)), 10, "k-means||", np.random.RandomState(7), **settings)
    one_chunk = init_centers(x.rechunk((x.shape[0], 784)), 10, "k-means||", np.random.RandomState(7), **settings)
    assert on_cluster.tobytes() == local.tobytes() == one_chunk.tobytes()
