"""What a fit costs in tasks: the contracts on passes and tasks, in one place.

Every pass is a graph of tasks whose names the dashboard shows
(``distkm-<name>``); its partials are combined in a tree fixed by the chunk
order (tests/unit/engine/test_graph.py checks that order on the graph itself).
These tests hold the counts that keep a fit cheap: one task per chunk and no
read task apart out of core, one task per cached block, a batch of iterations
in one task for data in one block, one cache and one summary pass for every
k of a sweep.
"""

from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.utils import key_split
from distributed import get_task_stream

from distkm import KMeans
from distkm.apps.fit import FitJob
from distkm.apps.sweep import sweep
from distkm.estimator import load_model
from distkm.evaluation.evaluate import evaluate_store
from distkm.evaluation.report import evaluation_plan_for
from distkm.io.stores import open_store, write_store
from tests.helpers import partial_stats_passes, random_rows


def test_out_of_core_chunks_are_read_inside_their_own_tasks(client, mnist_test_store, mnist_test):
    """Out of core, each pass is one task per chunk that reads and computes (no read task apart), and
    the result is the cached fit's to the bit."""
    init = random_rows(mnist_test[0], 10)
    with get_task_stream(client) as stream:
        uncached = KMeans(10, init=init, max_iter=3, tol=0, cache=False).fit(mnist_test_store)
    tasks = Counter(key_split(t["key"]) for t in stream.data)
    # 10 chunks of 1,000 rows: the summary pass, 3 iterations, the final statistics
    assert tasks["distkm-read"] == 0, tasks
    assert (tasks["distkm-summary"], tasks["distkm-partial-stats"], tasks["distkm-final-pass"]) == (10, 30, 10)
    cached = KMeans(10, init=init, max_iter=3, tol=0, cache=True).fit(mnist_test_store)
    assert uncached.cluster_centers_.tobytes() == cached.cluster_centers_.tobytes()


@pytest.mark.parametrize("dtype, weighted, cache", [("float32", False, True), ("float64", True, True),
                                                    ("float32", True, False)])
def test_iterations_batched_in_one_task_give_the_bits_of_one_task_each(client, tmp_path, mnist_test, dtype,
                                                                       weighted, cache):
    """Data that a pass reads in one task (one cached block, one chunk) runs its iterations in batches
    inside that task: same centers, inertia and history as one iteration a task (batch-seconds 0)."""
    X, _ = mnist_test
    if cache:
        data = da.from_array(X[:3000], chunks=(500, 784))  # 6 chunks: one block of the cache
    else:
        data = tmp_path / "one-chunk.zarr"
        write_store(data, X[:3000], None, {}, chunk_rows=3000)
    weights = np.random.RandomState(0).rand(3000) * 3 if weighted else None
    init = random_rows(X, 10, seed=5)
    fits, tasks = {}, {}
    for seconds in (0, 1e-9, 60):  # one a task, one a task through the batch path, all in one task
        with dask.config.set({"distkm.iteration-batch-seconds": seconds}), get_task_stream(client) as stream:
            fits[seconds] = KMeans(10, init=init, max_iter=12, tol=0, dtype=dtype, cache=cache).fit(
                data, sample_weight=weights)
        tasks[seconds] = partial_stats_passes(stream)
    assert tasks == {0: 12, 1e-9: 12, 60: 1}
    for seconds in (1e-9, 60):
        assert fits[seconds].cluster_centers_.tobytes() == fits[0].cluster_centers_.tobytes()
        assert fits[seconds].inertia_ == fits[0].inertia_
        assert ([(h["iteration"], h["inertia"], h["center_shift"]) for h in fits[seconds].history_]
                == [(h["iteration"], h["inertia"], h["center_shift"]) for h in fits[0].history_])


def test_sweep_caches_its_rows_once_in_blocks_for_every_k(client, mnist_test_store):
    """The rows are persisted once, in blocks; every fit's passes run one task per block; same fits as alone."""


    params = {"random_state": 0, "max_iter": 5}
    with get_task_stream() as stream:
        rows = sweep(open_store(mnist_test_store), [3, 5], fit_params=params, silhouette_sample=0)
    names = [key_split(task["key"]) for task in stream.data]
    n_blocks = 2  # 10 chunks of 1,000 rows in blocks of split-every = 8
    assert names.count("distkm-cache") == n_blocks
    assert names.count("distkm-summary") == n_blocks  # one summary pass of the rows for every k
    passes = sum(row["n_iter"] for row in rows)
    assert names.count("distkm-partial-stats") == n_blocks * passes
    for row in rows:
        alone = KMeans(row["k"], cache=False, **params).fit(mnist_test_store)
        assert row["inertia"] == alone.inertia_ and row["n_iter"] == alone.n_iter_
        assert row["cluster_sizes"] == alone.cluster_sizes_.tolist()


def test_one_pass_after_convergence_gives_what_separate_passes_give(client, mnist_test, tmp_path):
    """`distkm fit` reads its rows once after convergence (labels, exact statistics, evaluation tables) and
    gets what the separate passes get: the labels of predict, the inertia of score, the evaluation of evaluate."""
    x, y = mnist_test
    path = tmp_path / "split.zarr"
    write_store(path, x, y, {"image_shape": [28, 28], "splits": {"train": [0, 8000], "test": [8000, 10000]}},
                chunk_rows=1000)
    out = tmp_path / "run"
    job = FitJob(path, out, params={"n_clusters": 6, "random_state": 0, "cache": False}, split="train")
    with get_task_stream(client) as stream, job.working():
        meta, evaluation = job.run(pictures=True)
    job.publish()
    tasks = Counter(key_split(t["key"]) for t in stream.data)
    # After convergence: the 8 training chunks once (final pass), the 2 test chunks for their evaluation.
    assert (tasks["distkm-final-pass"], tasks["distkm-evaluation"], tasks["distkm-labels"]) == (8, 2, 0), tasks

    model, _ = load_model(out)
    store = open_store(path)
    train = store.images[:8000]
    np.testing.assert_array_equal(zarr.open_array(out / "labels.zarr", mode="r")[...], model.predict(train).compute())
    assert -model.score(train) == meta["inertia"] == model.inertia_
    separate = evaluate_store(model, store, plan=evaluation_plan_for(store, "train", pictures=True))
    for name in ("train", "test"):
        ours, theirs = evaluation.splits[name], separate.splits[name]
        np.testing.assert_array_equal(ours.table, theirs.table)
        assert (ours.inertia, ours.scores, ours.silhouette) == (theirs.inertia, theirs.scores, theirs.silhouette)
    for part in ("nearest", "random"):
        np.testing.assert_array_equal(getattr(evaluation.splits["train"], part).index,
                                      getattr(separate.splits["train"], part).index)
    assert evaluation.splits["train"].scores["accuracy"] > 0.4  # six clusters of digits: far above chance
