"""The pass graphs of distkm.engine.graph, against the dask they are built with.

distkm writes its pass graphs by hand (shared constants, per-chunk states, the
read of a chunk run inside the task that uses it), which dask's public
``reduction`` cannot express. These tests fail if a dask release changes what
that construction relies on: raise the ``dask<`` bound in pyproject.toml only
once they pass on the new release.
"""

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, get_task_stream
from distributed.utils import key_split

from distkm.engine.graph import chunk_tasks, concatenate_chunks, map_reduce
from distkm.engine.run import compute, compute_keeping_states


def _zarr_rows(tmp_path, n=100, d=3, chunk=10):
    z = zarr.create_array(tmp_path / "x.zarr", shape=(n, d), chunks=(chunk, d), dtype=np.float64)
    z[:] = np.random.RandomState(0).rand(n, d)
    return da.from_zarr(z, inline_array=True), z[:]  # as distkm opens a store


def _sum(block, weights):
    return block.sum(axis=0)


def _add(*parts):
    return np.sum(parts, axis=0)


def _record_order(*parts):
    """A combine that keeps the order it was given its partials in (lists of chunk indices)."""
    return [i for part in parts for i in part]


def _index(block, weights, *, i):
    return [i]


@pytest.mark.parametrize("split_every", [2, 3, 16])
def test_partials_are_combined_in_chunk_order_whatever_the_fan_in(tmp_path, split_every, sync_scheduler):
    x, _ = _zarr_rows(tmp_path)
    job = map_reduce(x, _index, _record_order, name="order", split_every=split_every, per_chunk=lambda i: {"i": i})
    assert compute(job.result)[0] == list(range(10))


def test_a_pass_sums_like_numpy_and_runs_the_reads_inside_its_chunk_tasks(tmp_path):
    """No read task of its own: each chunk's zarr read runs in the chunk task (chunk_tasks inlines it)."""
    x, rows = _zarr_rows(tmp_path)
    keys = set(dask.core.flatten(x.__dask_keys__()))
    assert not keys & {task for task in chunk_tasks(x) if isinstance(task, tuple) and len(task) == 3 and
                       isinstance(task[0], str)}  # tasks, not keys: a key would mean a read task of its own
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster), get_task_stream() as stream:
        job = map_reduce(x, _sum, _add, name="sum", split_every=4)
        total = compute(job.result)[0]
    np.testing.assert_allclose(total, rows.sum(axis=0))
    names = {key_split(t["key"]) for t in stream.data}
    assert names == {"distkm-sum", "distkm-sum-combine"}, names
    assert sum(key_split(t["key"]) == "distkm-sum" for t in stream.data) == 10


def _count(block, state, weights):
    """A stateful chunk: its state counts the passes it has seen; the partial is that count."""
    state = 1 if state is None else state + 1
    return state, state


def test_states_stay_with_their_chunks_from_pass_to_pass(tmp_path):
    x, _ = _zarr_rows(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        states = [None] * x.numblocks[0]
        for expected in (10, 20, 30):
            job = map_reduce(x, _count, lambda *parts: sum(parts), name="count", split_every=3, states=states)
            states, total = compute_keeping_states(job)
            assert total == expected
    one = map_reduce(x[:10], _count, None, name="count", split_every=2, states=[None])  # one chunk: one task
    with dask.config.set(scheduler="sync"):
        assert compute_keeping_states(one)[1] == 1


def test_constants_travel_once_under_one_key_when_copies_would_be_big(tmp_path, sync_scheduler):
    x, rows = _zarr_rows(tmp_path)
    big = np.ones(1 << 17)  # 1 MiB: ten copies exceed EMBED_BYTES
    job = map_reduce(x, lambda block, c, w: block.sum() * c[0], lambda *p: sum(p), name="const", split_every=4,
                     constants=(big,))
    graph = dict(job.result.__dask_graph__())
    assert sum(key_split(k) == "distkm-const-args" for k in graph) == 1
    assert compute(job.result)[0] == pytest.approx(rows.sum())


def test_blocks_of_chunks_are_one_task_each(tmp_path, sync_scheduler):
    x, rows = _zarr_rows(tmp_path)
    blocks = concatenate_chunks(x, ((10, 10, 10), (10, 10, 10), (10, 10, 10), (10,)), "blocks")
    assert blocks.chunks[0] == (30, 30, 30, 10)
    np.testing.assert_array_equal(blocks.compute(), rows)
