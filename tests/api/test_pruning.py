"""The exact pruned Lloyd in the engine: bit-identical to plain passes, cached or not, on any layout.

The kernel's own identity is tested in test_pruned.py; here the whole fit:
bounds kept on the workers between passes (out of core, cached in blocks,
in batches inside one task), empty clusters relocated, weights, both dtypes.
"""

import dask
import numpy as np
import pytest

from distkm import KMeans
from tests.helpers import random_rows


def fit_pair(X, init, **params):
    """The same fit with plain passes and with pruned ones."""
    fits = {}
    for algorithm in ("lloyd", "elkan"):
        fits[algorithm] = KMeans(n_clusters=len(init), init=init, n_init=1, algorithm=algorithm,
                                 **params).fit(X)
    return fits["lloyd"], fits["elkan"]


def assert_same_fit(plain, pruned):
    assert pruned.n_iter_ == plain.n_iter_
    np.testing.assert_array_equal(pruned.cluster_centers_, plain.cluster_centers_)
    np.testing.assert_array_equal(np.asarray(pruned.labels_), np.asarray(plain.labels_))
    assert pruned.inertia_ == plain.inertia_
    assert [h["center_shift"] for h in pruned.history_] == [h["center_shift"] for h in plain.history_]
    assert [h["inertia"] for h in pruned.history_] == [h["inertia"] for h in plain.history_]
    assert all(h["skipped"] == 0 for h in plain.history_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cache", [False, True])
def test_pruned_fit_is_plain_lloyd_to_the_bit(client, mnist_test_store, mnist_test, dtype, cache):
    x, _ = mnist_test
    init = random_rows(x, 16, seed=1)
    plain, pruned = fit_pair(str(mnist_test_store), init, dtype=dtype, cache=cache, max_iter=40, tol=1e-5)
    assert_same_fit(plain, pruned)
    skipped = [h["skipped"] for h in pruned.history_]
    assert skipped[0] == 0 and max(skipped) > 0.5  # the first pass builds the bounds; later ones skip


def test_pruned_fit_with_weights_and_empty_clusters(client, mnist_test):
    """Duplicate initial centers leave clusters empty: relocation moves centers far, the bounds follow."""
    x, _ = mnist_test
    X = dask.array.from_array(x[:6000], chunks=(1000, -1))
    init = random_rows(x, 12, seed=2)
    init[6:] = init[:6]  # six clusters start empty
    w = np.random.RandomState(0).uniform(0.1, 3.0, 6000)
    fits = {a: KMeans(12, init=init, n_init=1, algorithm=a, max_iter=30).fit(X, sample_weight=w)
            for a in ("lloyd", "elkan")}
    assert any(h["relocated"] for h in fits["lloyd"].history_)
    assert_same_fit(fits["lloyd"], fits["elkan"])


def test_pruned_batches_in_one_task_match(client, mnist_test):
    """A one-chunk store runs its iterations in batches inside one task: the bounds go in and out of it."""
    x, _ = mnist_test
    X = dask.array.from_array(x[:3000], chunks=(3000, -1))
    init = random_rows(x, 8, seed=4)
    with dask.config.set({"distkm.iteration-batch-seconds": 0.05}):
        plain, pruned = fit_pair(X, init, max_iter=60, tol=0)
    assert_same_fit(plain, pruned)


def test_pruned_fit_on_one_worker_equals_two(mnist_test, sync_scheduler):
    """No distributed client at all (dask's synchronous scheduler): the same centers as on the cluster."""
    x, _ = mnist_test
    init = random_rows(x, 10, seed=5)
    X = dask.array.from_array(x, chunks=(2000, -1))
    plain, pruned = fit_pair(X, init, max_iter=25)
    assert_same_fit(plain, pruned)


def test_default_is_pruned_and_scikit_learn_exact(client, mnist_test):
    from sklearn.cluster import KMeans as SKLearnKMeans

    x, _ = mnist_test
    X = x[:5000].astype(np.float64)
    init = random_rows(X, 10, seed=6)
    ours = KMeans(10, init=init, n_init=1, max_iter=50).fit(X)
    assert ours.algorithm == "auto" and ours.history_[-1]["skipped"] > 0.5
    ref = SKLearnKMeans(10, init=init, n_init=1, max_iter=50, algorithm="lloyd").fit(X)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(ours.labels_), ref.labels_)
