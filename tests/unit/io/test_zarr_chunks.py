"""Whole zarr chunks decoded in the calling thread give zarr's values, or step aside."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, TransposeCodec, ZstdCodec

from distkm.io.stores import open_store
from distkm.io.zarr_chunks import read_whole_chunk


def _chunk_slices(array):
    """The selection of every stored chunk, as dask's from_array passes it."""
    grid = [range(0, size, chunk) for size, chunk in zip(array.shape, array.chunks)]
    for starts in np.ndindex(*(len(g) for g in grid)):
        yield tuple(slice(g[i], min(g[i] + c, s)) for g, i, c, s in zip(grid, starts, array.chunks, array.shape))


@pytest.mark.parametrize("dtype, chunks, compressors, filters", [
    (np.uint8, (7, 12), BloscCodec(cname="lz4hc", clevel=5), None),  # distkm's stores: row chunks
    (np.float32, (6, 5), ZstdCodec(level=1), None),  # edge chunks in both dimensions
    (np.int16, (8, 12), GzipCodec(level=1), TransposeCodec(order=(1, 0))),  # an array->array codec
    (np.float64, (20, 12), None, None),  # no compressor
], ids=["uint8-blosc", "float32-zstd-2d", "int16-gzip-transpose", "float64-raw"])
def test_every_chunk_equals_zarrs_read(tmp_path, dtype, chunks, compressors, filters):
    values = np.random.default_rng(0).integers(0, 200, size=(20, 12)).astype(dtype)
    array = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, chunks=chunks, dtype=dtype,
                              compressors=compressors, filters=filters)
    array[...] = values
    array = zarr.open_array(tmp_path / "a.zarr", mode="r")
    for index in _chunk_slices(array):
        chunk = read_whole_chunk(array, index)
        assert chunk is not None, index
        assert chunk.dtype == dtype and chunk.shape == array[index].shape
        np.testing.assert_array_equal(chunk, values[index])


def test_array_inside_a_group(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    images = group.create_array("images", shape=(10, 4), chunks=(4, 4), dtype=np.uint8)
    images[...] = np.arange(40, dtype=np.uint8).reshape(10, 4)
    images = zarr.open_group(tmp_path / "g.zarr", mode="r")["images"]
    np.testing.assert_array_equal(read_whole_chunk(images, (slice(8, 10), slice(0, 4))), [[32, 33, 34, 35],
                                                                                          [36, 37, 38, 39]])


def test_other_reads_are_left_to_zarr(tmp_path):
    values = np.arange(200, dtype=np.uint8).reshape(20, 10)
    array = zarr.create_array(tmp_path / "a.zarr", shape=(30, 10), chunks=(10, 10), dtype=np.uint8,
                              fill_value=7)
    array[:20] = values
    array = zarr.open_array(tmp_path / "a.zarr", mode="r")
    assert read_whole_chunk(array, (slice(0, 10), slice(0, 10))) is not None
    assert read_whole_chunk(array, (slice(0, 5), slice(0, 10))) is None  # part of a chunk
    assert read_whole_chunk(array, (slice(0, 20), slice(0, 10))) is None  # two chunks
    assert read_whole_chunk(array, (slice(0, 10, 2), slice(0, 10))) is None  # strided
    assert read_whole_chunk(array, (slice(20, 30), slice(0, 10))) is None  # never written: zarr's fill value
    sharded = zarr.create_array(tmp_path / "s.zarr", shape=(20, 10), chunks=(5, 10), shards=(10, 10),
                                dtype=np.uint8)
    sharded[...] = values
    assert read_whole_chunk(sharded, (slice(0, 5), slice(0, 10))) is None
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(20, 10), chunks=(10, 10), dtype=np.uint8)
    in_memory[...] = values
    assert read_whole_chunk(in_memory, (slice(0, 10), slice(0, 10))) is None
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=(20, 10), chunks=(10, 10), dtype=np.uint8, zarr_format=2)
    v2[...] = values
    assert read_whole_chunk(v2, (slice(0, 10), slice(0, 10))) is None


def test_open_store_reads_the_same_values_either_way(tmp_path):
    """An array with an unwritten chunk: the fast path reads the others, zarr supplies the fill value."""
    array = zarr.create_array(tmp_path / "a.zarr", shape=(25, 6), chunks=(10, 6), dtype=np.uint8, fill_value=3)
    array[:10] = 1
    array[20:] = 2
    expected = np.concatenate([np.full((10, 6), 1), np.full((10, 6), 3), np.full((5, 6), 2)])
    np.testing.assert_array_equal(open_store(tmp_path / "a.zarr").images.compute(scheduler="sync"), expected)


def test_a_corrupt_chunk_names_the_chunk(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(20, 6), chunks=(10, 6), dtype=np.uint8)
    array[...] = 5
    (tmp_path / "a.zarr" / "c" / "1" / "0").write_bytes(b"not blosc")
    x = open_store(tmp_path / "a.zarr").images
    with pytest.raises(OSError, match=r"cannot read chunk 1 \(rows 10-19\)"):
        x.compute(scheduler="sync")
