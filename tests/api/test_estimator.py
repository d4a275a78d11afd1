"""distkm.KMeans against scikit-learn's Lloyd, on MNIST test images, on a real LocalCluster."""

import time

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.utils import key_split
from distributed import Client, LocalCluster
from sklearn.cluster import KMeans as SKMeans

from distkm import KMeans
from distkm.io.stores import open_store
from tests.helpers import partial_stats_passes, random_rows


@pytest.mark.parametrize("k", [10, 64])
@pytest.mark.parametrize("max_iter", [1, 5, 20])
def test_float64_matches_sklearn_lloyd(client, mnist_test_store, mnist_test, k, max_iter):
    X, _ = mnist_test
    init = random_rows(X, k)
    ours = KMeans(k, init=init, max_iter=max_iter, tol=0, dtype="float64").fit(mnist_test_store)
    ref = SKMeans(k, init=init, n_init=1, max_iter=max_iter, tol=0, algorithm="lloyd").fit(X.astype(np.float64))
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours.labels_.compute(), ref.labels_)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)


def test_float32_inertia_matches_sklearn(client, mnist_test_store, mnist_test):
    X, _ = mnist_test
    init = random_rows(X, 10)
    ours = KMeans(10, init=init, max_iter=20, tol=0).fit(mnist_test_store)
    ref = SKMeans(10, init=init, n_init=1, max_iter=20, tol=0, algorithm="lloyd").fit(X.astype(np.float32))
    assert ours.cluster_centers_.dtype == np.float32
    assert abs(ours.inertia_ - ref.inertia_) / ref.inertia_ <= 1e-6


def test_kmeans_plusplus_on_all_rows_is_sklearns(client, mnist_test_store, mnist_test):
    """With fewer rows than init_sample_size, k-means++ sees all rows and draws as sklearn does."""
    X, _ = mnist_test
    ours = KMeans(10, random_state=0, dtype="float64").fit(mnist_test_store)
    ref = SKMeans(10, random_state=0).fit(X.astype(np.float64))
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-9)
    assert ours.n_iter_ == ref.n_iter_


def test_kmeans_parallel_is_as_good_as_kmeans_plusplus(client, mnist_test_store, mnist_test):
    """Converged inertia from k-means|| within 1% of scikit-learn's k-means++ fit, on MNIST test."""
    X, _ = mnist_test
    ours = KMeans(10, init="k-means||", random_state=0, dtype="float64").fit(mnist_test_store)
    ref = min(SKMeans(10, n_init=1, random_state=seed).fit(X.astype(np.float64)).inertia_ for seed in range(3))
    assert ours.inertia_ <= 1.01 * ref


@pytest.mark.parametrize("tol", [1e-1, 1e-2, 1e-4])
def test_tol_stops_where_sklearn_stops(client, mnist_test_store, mnist_test, tol):
    X, _ = mnist_test
    init = random_rows(X, 16, seed=3)
    ours = KMeans(16, init=init, tol=tol, dtype="float64").fit(mnist_test_store)
    ref = SKMeans(16, init=init, n_init=1, tol=tol, algorithm="lloyd").fit(X.astype(np.float64))
    assert ours.n_iter_ == ref.n_iter_
    assert ours.history_[-1]["center_shift"] <= tol * X.astype(np.float64).var(0).mean()
    assert all(h["center_shift"] > tol * X.astype(np.float64).var(0).mean() for h in ours.history_[:-1])
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-9)


def test_max_iter_stops_the_loop(client, mnist_test_store, mnist_test):
    X, _ = mnist_test
    ours = KMeans(10, init=random_rows(X, 10), max_iter=3, dtype="float64").fit(mnist_test_store)
    assert ours.n_iter_ == 3 and len(ours.history_) == 3


def test_empty_cluster_is_relocated_as_sklearn_does(client):
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(10, 1, (300, 2))])
    # The third center is far from every point: its cluster is empty after the first assignment.
    init = np.array([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]])
    # In 64-row chunks the client runs every iteration; in one chunk a task runs them in batches
    # and hands the iteration with the empty cluster back to the client.
    from distributed import get_task_stream

    for rows in (64, 600):
        x = da.from_array(X, chunks=(rows, 2))
        for max_iter in (1, 2, 50):
            with get_task_stream(client) as stream:
                ours = KMeans(3, init=init, max_iter=max_iter, tol=0, dtype="float64").fit(x)
            if rows == 600 and max_iter == 1:  # the batch's pass is the one the client relocates from, not redone
                assert partial_stats_passes(stream) == 1
            ref = SKMeans(3, init=init, n_init=1, max_iter=max_iter, tol=0, algorithm="lloyd").fit(X)
            np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-9)
            assert np.isfinite(ours.cluster_centers_).all()
            assert ours.n_iter_ == ref.n_iter_
        assert ours.history_[0]["relocated"] == [2]


def _fit_centers(store):
    return KMeans(10, random_state=42, max_iter=8, init_sample_size=3000).fit(store).cluster_centers_


def test_seeded_runs_are_bit_identical_on_any_cluster_layout(mnist_test_store):
    """Same seed: identical bits on 1 worker x 2 threads, 2 workers x 1 thread, and the sync scheduler."""
    results = []
    for n_workers, threads in [(1, 2), (2, 1)]:
        with LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster):
            results.append(_fit_centers(mnist_test_store))
    with dask.config.set(scheduler="sync"):
        results.append(_fit_centers(mnist_test_store))
    for other in results[1:]:
        assert other.tobytes() == results[0].tobytes()


def test_cache_keeps_chunks_on_workers_and_changes_nothing(client, mnist_test_store, caplog):
    """cache=True persists the uint8 chunks on the workers; the centers are the same bits as uncached."""
    fits = {}
    for mode in (False, True, "auto"):
        with caplog.at_level("INFO", logger="distkm"):
            caplog.clear()
            fits[mode] = KMeans(10, random_state=1, max_iter=6, cache=mode).fit(mnist_test_store)
            logged = caplog.text
        assert ("data cached on the workers (7.48 MiB)" in logged) == (mode is not False)
    for mode in (True, "auto"):
        assert fits[mode].cluster_centers_.tobytes() == fits[False].cluster_centers_.tobytes()
        assert fits[mode].inertia_ == fits[False].inertia_
    # labels_ is built on the store, not on the cache: once the fit returns, the workers let the chunks go
    deadline = time.monotonic() + 10
    while any(client.has_what().values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(client.has_what().values())


@pytest.mark.parametrize("dtype, split_every, weighted", [("float32", 8, False), ("float64", 2, True),
                                                         ("float32", 3, True)])
def test_cached_blocks_give_the_bits_of_the_uncached_tree(client, mnist_test_store, dtype, split_every, weighted):
    """The cache holds blocks of split_every chunks, one task each per iteration; centers, inertia and
    history are bit for bit those of the uncached pass (a block is a first-level node of the tree)."""
    from distributed import get_task_stream

    weights = np.random.RandomState(0).rand(10_000) * 3 if weighted else None
    fits, tasks = {}, {}
    for cache in (False, True):
        with get_task_stream(client) as stream:
            fits[cache] = KMeans(10, random_state=3, max_iter=5, tol=0, dtype=dtype, cache=cache,
                                 split_every=split_every).fit(mnist_test_store, sample_weight=weights)
        tasks[cache] = sum(1 for t in stream.data if key_split(t["key"]) == "distkm-partial-stats")
    assert tasks == {False: 5 * 10, True: 5 * -(-10 // split_every)}  # 10 chunks of 1,000 rows, 5 iterations
    assert fits[True].cluster_centers_.tobytes() == fits[False].cluster_centers_.tobytes()
    assert fits[True].inertia_ == fits[False].inertia_
    assert [h["inertia"] for h in fits[True].history_] == [h["inertia"] for h in fits[False].history_]


def test_numpy_in_numpy_out_dask_in_lazy_out(client, mnist_test):
    X, _ = mnist_test
    X = X[:3000]
    init = random_rows(X, 5)
    model = KMeans(5, init=init, max_iter=10, dtype="float64").fit(X)
    assert isinstance(model.labels_, np.ndarray)
    lazy = KMeans(5, init=init, max_iter=10, dtype="float64").fit(da.from_array(X, chunks=(700, 784)))
    assert isinstance(lazy.labels_, da.Array) and lazy.labels_.chunks == ((700,) * 4 + (200,),)
    np.testing.assert_array_equal(lazy.labels_.compute(), model.labels_)
    assert isinstance(model.predict(da.from_array(X)), da.Array)
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    ref = SKMeans(5, init=init, n_init=1, max_iter=10, algorithm="lloyd").fit(X.astype(np.float64))
    np.testing.assert_allclose(model.transform(X), ref.transform(X.astype(np.float64)), rtol=1e-9)
    assert model.score(X) == pytest.approx(ref.score(X.astype(np.float64)), rel=1e-12)
    np.testing.assert_array_equal(
        KMeans(5, init=init, max_iter=10, dtype="float64").fit_predict(X), model.labels_)


def test_accepts_zarr_array_group_and_path(client, mnist_test_store, mnist_test):
    X, _ = mnist_test
    init = random_rows(X, 4)
    fits = [KMeans(4, init=init, max_iter=4).fit(source).cluster_centers_ for source in (
        mnist_test_store, str(mnist_test_store), zarr.open_group(mnist_test_store, mode="r"),
        zarr.open_array(mnist_test_store / "images", mode="r"), open_store(mnist_test_store).images)]
    for other in fits[1:]:
        np.testing.assert_array_equal(other, fits[0])


def test_any_number_of_float_features_and_sample_weight(client):
    rng = np.random.RandomState(5)
    X = np.concatenate([rng.normal(c, 0.5, (200, 3)) for c in (0, 4, 8)]).astype(np.float32)
    w = rng.uniform(0.1, 3.0, len(X))
    init = X[[0, 250, 500]].astype(np.float64)
    ours = KMeans(3, init=init, dtype="float64").fit(X, sample_weight=w)
    ref = SKMeans(3, init=init, n_init=1, algorithm="lloyd").fit(X.astype(np.float64), sample_weight=w)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-9)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)
    assert ours.score(X, sample_weight=w) == pytest.approx(ref.score(X.astype(np.float64), sample_weight=w), rel=1e-10)


@pytest.mark.parametrize("kwargs, data, message", [
    ({"n_clusters": 0}, np.zeros((5, 2)), "n_clusters"),
    ({"n_clusters": 10}, np.zeros((5, 2)), "n_samples=5 should be >= n_clusters=10"),
    ({"n_clusters": 2}, np.zeros(5), "must be 2-D"),
    ({"n_clusters": 2}, np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]]), "NaN or infinite"),
    ({"n_clusters": 2}, np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]]), "NaN or infinite"),
    ({"n_clusters": 2}, np.array([["a", "b"], ["c", "d"]]), "real numbers"),
    ({"n_clusters": 2, "init": np.zeros((3, 2))}, np.zeros((5, 2)),
     "The shape of the initial centers (3, 2) does not match the number of clusters 2"),
    ({"n_clusters": 2, "init": np.full((2, 2), np.nan)}, np.zeros((5, 2)), "finite"),
    ({"n_clusters": 2, "max_iter": 0}, np.zeros((5, 2)), "max_iter"),
    ({"n_clusters": 2, "tol": -1.0}, np.zeros((5, 2)), "tol"),
])
def test_bad_input_is_refused_with_a_clear_message(sync_scheduler, kwargs, data, message):
    with pytest.raises((ValueError, TypeError), match=None) as info:
        KMeans(**kwargs).fit(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key, value, words", [
    ("block-rows", 0, "distkm.block-rows must be an integer between 1 and 65536, got 0"),
    ("split-every", 1, "distkm.split-every must be an integer >= 2, got 1"),
    ("cache-fraction", 1.5, "distkm.cache-fraction must be a number in (0, 1], got 1.5"),
])
def test_a_bad_dask_config_value_is_one_line_naming_the_key(sync_scheduler, key, value, words):
    import dask

    with dask.config.set({f"distkm.{key}": value}), pytest.raises(ValueError) as error:
        if key == "cache-fraction":
            from distkm import config

            config.cache_fraction()
        else:
            KMeans(2, random_state=0).fit(np.arange(40, dtype=np.float64).reshape(20, 2))
    assert words in str(error.value) and "\n" not in str(error.value)
