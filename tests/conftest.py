"""Shared fixtures: real MNIST stores on disk and a real multi-process LocalCluster.

No mocks: every test reads zarr stores written by distkm's own ingest and
computes on a `distributed` cluster of worker processes (or on dask's
synchronous scheduler where a test compares schedulers).
"""


import dask
import pytest
from distributed import Client, LocalCluster

from distkm.io.datasets import ingest_idx
from distkm.io.stores import open_store
from tests.helpers import MNIST_DIR, distkm


@pytest.fixture(scope="session")
def mnist_store(tmp_path_factory):
    """MNIST train + test (70,000 rows) ingested into a zarr store, chunks of 10,000 rows."""
    path = tmp_path_factory.mktemp("data") / "mnist.zarr"
    ingest_idx("mnist", path, source=MNIST_DIR)
    return path


@pytest.fixture(scope="session")
def mnist_test_store(tmp_path_factory, mnist_store):
    """MNIST test (10,000 rows) alone, in chunks of 1,000 rows: ten tasks per pass."""
    x, y = (open_store(mnist_store, split="test").images.compute(),
            open_store(mnist_store, split="test").labels.compute())
    path = tmp_path_factory.mktemp("data") / "mnist-test.zarr"
    from distkm.io.stores import write_store

    write_store(path, x, y, {"splits": {"test": [0, len(x)]}, "image_shape": [28, 28]}, chunk_rows=1000)
    return path


@pytest.fixture(scope="session")
def mnist_test(mnist_test_store):
    """MNIST test images (10000, 784) uint8 and labels, in memory, for reference computations."""
    store = open_store(mnist_test_store)
    return store.images.compute(), store.labels.compute()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, mnist_test_store):
    """`distkm fit` of the MNIST test rows, k=10, seed 0, at most 20 iterations: ``(run folder, its output)``.

    Shared by the tests that read a run folder; a test that changes one copies it first.
    """
    out = tmp_path_factory.mktemp("runs") / "k10"
    result = distkm("fit", mnist_test_store, "--k", 10, "--out", out, "--seed", 0, "--max-iter", 20,
                    "--n-workers", 2, check=True)
    return out, result


@pytest.fixture(scope="session")
def cluster():
    """A LocalCluster of 2 worker processes x 1 thread on 127.0.0.1."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    """A client of the session's LocalCluster, the default scheduler for the test."""
    with Client(cluster) as client:
        yield client


@pytest.fixture
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(autouse=True)
def dask_config_left_as_found():
    """Every test leaves dask's default scheduler as it found it (a Client left open would change it).

    A distributed Client sets ``scheduler: dask.distributed`` while it is the
    default; one that is not closed in order leaves it behind, and every later
    ``.compute()`` without a client then fails. Restored here, and reported as
    this test's error rather than as later tests' failures.
    """
    before = dask.config.get("scheduler", None)
    yield
    after = dask.config.get("scheduler", None)
    if after != before:
        dask.config.set(scheduler=before)
        pytest.fail(f"the test left dask's default scheduler set to {after!r} (was {before!r})")
