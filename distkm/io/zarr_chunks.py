"""Whole chunks of a local zarr v3 array, decoded in the calling thread.

zarr-python 3.1 (the last release for Python 3.11) sends every read through
its asyncio event loop: the calling thread hands the read to the loop's
thread, which hands the file read to a thread pool, then the decode to the
pool again, then copies the decoded chunk into a new output array. For one
10,000 x 784 uint8 chunk (Blosc lz4hc) that takes 5-6.5 ms in a quiet
process, 12-14 ms in a worker while the other worker reads too, where reading
the file and decoding it take 2.9 ms. zarr 3.3 added an opt-in synchronous
pipeline for this reason (``FusedCodecPipeline``, zarr-python#3885).

:func:`read_whole_chunk` does the same for the one read distkm makes over and
over: a whole stored chunk of an array in a :class:`zarr.storage.LocalStore`
whose codecs all decode synchronously (``zarr.abc.codec.SupportsSyncCodec``:
bytes, blosc, zstd, gzip, crc32c, transpose). It runs zarr's own codec
objects in zarr's own order, so it gives zarr's values; for anything else
(sharding, a remote store, zarr v2, a selection that is not one whole chunk,
a chunk never written) it returns ``None`` and the caller reads through zarr.
"""

from __future__ import annotations

import numpy as np
from zarr.abc.codec import SupportsSyncCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.codec_pipeline import codecs_from_list
from zarr.storage import LocalStore


def read_whole_chunk(array, index):
    """The values of ``array[index]`` if ``index`` selects one whole stored chunk, read synchronously.

    Parameters
    ----------
    array : zarr.Array
    index : tuple of slice
        One slice per dimension, as dask's ``from_array`` passes them.

    Returns
    -------
    numpy.ndarray or None
        A read-only array (the decoded buffer itself, not a copy), or ``None``
        when the fast path does not apply and ``array[index]`` must be used.
    """
    if not _decodes_synchronously(array):
        return None
    coords = _chunk_coords(array, index)
    if coords is None:
        return None
    metadata = array.metadata
    key = metadata.encode_chunk_key(coords)
    path = array.store.root / array.path / key if array.path else array.store.root / key
    try:
        raw = path.read_bytes()
    except FileNotFoundError:  # never written: zarr supplies the fill value
        return None
    prototype = default_buffer_prototype()
    # The specs each codec sees, resolved front to back as zarr's BatchedCodecPipeline does.
    array_array, array_bytes, bytes_bytes = codecs_from_list(metadata.codecs)
    spec = metadata.get_chunk_spec(coords, array.config, prototype)
    array_specs = []
    for codec in array_array:
        array_specs.append(spec)
        spec = codec.resolve_metadata(spec)
    array_bytes_spec = spec
    spec = array_bytes.resolve_metadata(spec)
    bytes_specs = []
    for codec in bytes_bytes:
        bytes_specs.append(spec)
        spec = codec.resolve_metadata(spec)
    # ... then decoded back to front.
    data = prototype.buffer.from_bytes(raw)
    for codec, codec_spec in zip(reversed(bytes_bytes), reversed(bytes_specs)):
        data = codec._decode_sync(data, codec_spec)
    chunk = array_bytes._decode_sync(data, array_bytes_spec)
    for codec, codec_spec in zip(reversed(array_array), reversed(array_specs)):
        chunk = codec._decode_sync(chunk, codec_spec)
    values = np.asarray(chunk.as_ndarray_like())
    # An edge chunk is stored at the full chunk shape: keep the part inside the array.
    return values[tuple(slice(0, s.stop - s.start) for s in index)]


def _chunk_coords(array, index):
    """Grid coordinates of the chunk ``index`` covers exactly, or None."""
    if not isinstance(index, tuple) or len(index) != array.ndim:
        return None
    coords = []
    for s, size, chunk in zip(index, array.shape, array.chunks):
        if not isinstance(s, slice) or s.step not in (None, 1) or s.start is None or s.start % chunk:
            return None
        if s.stop != min(s.start + chunk, size):
            return None
        coords.append(s.start // chunk)
    return tuple(coords)


def _decodes_synchronously(array):
    metadata = array.metadata
    return (metadata.zarr_format == 3 and isinstance(array.store, LocalStore)
            and all(isinstance(codec, SupportsSyncCodec) for codec in metadata.codecs))
