"""Out-of-core mini-batch k-means (distkm.engine.minibatch) against scikit-learn's update rule."""

import dask
import numpy as np
from sklearn.cluster import KMeans as SKMeans

from distkm import KMeans
from distkm.io.stores import open_store
from tests.helpers import random_rows


def test_one_step_over_every_chunk_is_one_lloyd_iteration(client, mnist_test_store, mnist_test):
    X, _ = mnist_test
    init = random_rows(X, 8)
    model = KMeans(8, init=init, algorithm="minibatch", batch_chunks=10, max_iter=1, dtype="float64",
                   cache=False).fit(mnist_test_store)
    ref = SKMeans(8, init=init, n_init=1, max_iter=1, algorithm="lloyd").fit(X.astype(np.float64))
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert len(model.history_) == 1


def test_steps_follow_the_running_mean_rule(client, mnist_test_store, mnist_test):
    """Three steps over random chunk batches equal a numpy replay of scikit-learn's rule on the same batches."""
    X, _ = mnist_test
    init = random_rows(X, 6)
    model = KMeans(6, init=init, algorithm="minibatch", batch_chunks=4, max_iter=1, dtype="float64",
                   random_state=np.random.RandomState(0), cache=False)
    model.fit(mnist_test_store)
    order = np.random.RandomState(0).permutation(10)  # init is an array: the state draws only the order
    centers, seen = init.copy(), np.zeros(6)
    for start in range(0, 10, 4):
        rows = np.concatenate([np.arange(c * 1000, (c + 1) * 1000) for c in np.sort(order[start:start + 4])])
        batch = X[rows].astype(np.float64)
        labels = ((batch[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        for j in range(6):
            if (labels == j).any():
                total = seen[j] + (labels == j).sum()
                centers[j] = (centers[j] * seen[j] + batch[labels == j].sum(0)) / total
                seen[j] = total
    np.testing.assert_allclose(model.cluster_centers_, centers, rtol=1e-9, atol=1e-9)
    assert [h["rows"] for h in model.history_] == [4000, 4000, 2000]


def test_two_passes_come_close_to_lloyd_and_are_reproducible(client, mnist_test_store):
    fast = KMeans(10, algorithm="minibatch", batch_chunks=2, max_iter=2, random_state=0).fit(mnist_test_store)
    full = KMeans(10, random_state=0).fit(mnist_test_store)
    assert full.inertia_ <= fast.inertia_ <= 1.05 * full.inertia_
    x = open_store(mnist_test_store).images
    with dask.config.set(scheduler="sync"):
        again = KMeans(10, algorithm="minibatch", batch_chunks=2, max_iter=2, random_state=0).fit(x)
    assert again.cluster_centers_.tobytes() == fast.cluster_centers_.tobytes()
