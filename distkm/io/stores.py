"""The distkm store: a zarr v3 group of images, opened as dask arrays and written whole or chunk by chunk.

A distkm store is a zarr v3 group::

    images   (n, d) uint8, chunked by rows (``distkm.chunk-rows``), Blosc-compressed
    labels   (n,)   uint8, same row chunks (absent when the data has no labels)
    attrs["distkm"] = {"complete": true, "splits": {"train": [0, 60000], ...},
                       "image_shape": [28, 28], "source": {...}}

Splits are contiguous row ranges, so a split is a cheap slice of ``images``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from distkm import config
from distkm.io import locations
from distkm.io.zarr_chunks import read_whole_chunk

STORE_FORMAT_VERSION = 1


_BLOSC_CNAMES = ("lz4", "lz4hc", "zstd", "blosclz", "zlib")


_BLOSC_SHUFFLES = ("noshuffle", "shuffle", "bitshuffle")


def compressor_settings(spec=None):
    """Blosc settings ``{"cname", "clevel", "shuffle"}`` from a spec like ``"zstd:1"`` or ``"lz4:5:bitshuffle"``.

    ``None`` gives ``distkm.compressor``; a dict is checked and returned.
    """
    if spec is None:
        spec = dict(config.get("compressor"))
    if isinstance(spec, str):
        parts = spec.split(":")
        spec = {"cname": parts[0], "clevel": parts[1] if len(parts) > 1 else 5,
                "shuffle": parts[2] if len(parts) > 2 else "noshuffle"}
    try:
        clevel = int(spec["clevel"])
    except (KeyError, TypeError, ValueError):
        clevel = -1
    if spec.get("cname") not in _BLOSC_CNAMES or not 0 <= clevel <= 9 or spec.get("shuffle") not in _BLOSC_SHUFFLES:
        raise ValueError(f"compressor {spec!r} is not valid: expected CNAME[:LEVEL[:SHUFFLE]] with CNAME in "
                         f"{', '.join(_BLOSC_CNAMES)}, LEVEL 0-9, SHUFFLE in {', '.join(_BLOSC_SHUFFLES)} "
                         "(e.g. zstd:1)")
    return {"cname": spec["cname"], "clevel": clevel, "shuffle": spec["shuffle"]}


def blosc_compressor(spec=None):
    """The Blosc codec for ``spec`` (see :func:`compressor_settings`)."""
    return BloscCodec(**compressor_settings(spec))


def zarr_location(path, *, read_only=True):
    """What zarr opens for ``path``: the local path itself, or a store over the URL (:mod:`distkm.io.locations`)."""
    return locations.zarr_store(path, read_only=read_only) if locations.is_url(path) else locations.local_path(path)


def write_store(path, images, labels, attrs, *, chunk_rows, compressor=None):
    """Write in-memory ``images`` (and ``labels``) as a distkm store at ``path``, then mark it complete."""
    group = zarr.open_group(zarr_location(path, read_only=False), mode="w", zarr_format=3)
    group.attrs["distkm"] = {**attrs, "complete": False}
    # Every chunk is written, even an all-zero one: a missing chunk then always means damage.
    kwargs = dict(compressors=blosc_compressor(compressor), overwrite=True, config={"write_empty_chunks": True})
    x = group.create_array("images", shape=images.shape, chunks=(chunk_rows, images.shape[1]), dtype=images.dtype,
                           dimension_names=["sample", "feature"], **kwargs)
    x[:] = images
    if labels is not None:
        y = group.create_array("labels", shape=labels.shape, chunks=(chunk_rows,), dtype=labels.dtype,
                               dimension_names=["sample"], **kwargs)
        y[:] = labels
    group.attrs["distkm"] = {**attrs, "complete": True}


@dataclass
class ImageStore:
    """A distkm store opened lazily: dask arrays over the zarr arrays."""

    path: Path | str  # a local path, or a URL (see distkm.io.locations)
    images: da.Array
    labels: da.Array | None
    attrs: dict

    def bounds(self, split=None):
        """Rows ``(start, stop)`` of ``split`` (all rows for ``None``); the error names the splits there are."""
        if split is None:
            return 0, self.images.shape[0]
        splits = self.attrs.get("splits", {})
        if split not in splits:
            raise ValueError(f"store {locations.public_url(self.path)!r} has no split {split!r} "
                             f"(it has: {', '.join(map(printable, splits)) or 'none'})")
        start, stop = splits[split]
        return int(start), int(stop)


def printable(text):
    """``text`` safe to print on a terminal: control characters (ANSI escapes...) shown escaped.

    Names and attributes read from a store or a run folder go through it
    before they reach the terminal or a report.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def open_store(path, *, split=None, array="images"):
    """Open a zarr store of images as dask arrays, checking it at the door.

    Parameters
    ----------
    path : str or Path
        A distkm store (a zarr group with ``images``), or any zarr group
        holding a 2-D array named ``array``, or a zarr array itself: a local
        path or a URL (``s3://bucket/data.zarr``; see :mod:`distkm.io.locations`).
    split : str, optional
        Keep only the rows of this split (``"train"``, ``"test"``).
    array : str
        Name of the data array inside the group.

    Returns
    -------
    ImageStore
    """
    path = path if locations.is_url(path) else locations.local_path(path)
    where = locations.public_url(path)
    if not locations.exists(path):
        raise FileNotFoundError(f"no zarr store at {where!r} (create one with `distkm ingest mnist --out {where}`)")
    try:
        node = zarr.open(zarr_location(path), mode="r")
    except Exception as e:
        raise ValueError(f"{where!r} is not a readable zarr store ({e})") from e
    if isinstance(node, zarr.Array):
        group_attrs, images, labels = {}, node, None
    else:
        group_attrs = dict(node.attrs.get("distkm", {}))
        if group_attrs.get("complete") is False:
            # Advice from what distkm knows, never text from the store (it is printed to a terminal).
            how = ("run the `distkm augment` command that was writing it again to resume it" if "augment" in group_attrs
                   else "write it again")
            raise ValueError(f"store {where!r} is incomplete (its writing was interrupted); {how}")
        members = sorted(node.array_keys())
        if array not in members:
            held = ", ".join(map(printable, members)) or "nothing"
            raise ValueError(f"store {where!r} has no {array!r} array (it holds: {held})")
        images = node[array]
        labels = node["labels"] if "labels" in members else None
        if group_attrs.get("complete") is True:
            _check_chunks_present(images, locations.join(path, array), f"store {where!r} ({array})")
            n_declared = max((stop for _, stop in group_attrs.get("splits", {}).values()), default=0)
            if n_declared > images.shape[0]:
                raise ValueError(f"store {where!r} declares splits up to row {n_declared}, "
                                 f"but {array} has {images.shape[0]} rows")
    x = _zarr_to_dask(images, f"{where}/{array}" if group_attrs or labels is not None else where)
    y = None
    if labels is not None:
        if labels.shape != (x.shape[0],):
            raise ValueError(f"store {where!r}: labels have shape {labels.shape}, expected ({x.shape[0]},)")
        y = _read_lazily(labels, f"{where}/labels").rechunk((x.chunks[0],))
    store = ImageStore(path, x, y, group_attrs)
    if split is not None:
        start, stop = store.bounds(split)
        store = ImageStore(path, x[start:stop], None if y is None else y[start:stop], group_attrs)
    if store.images.shape[0] == 0:
        raise ValueError(f"store {where!r} holds no rows")
    return store


def _zarr_to_dask(z, where):
    if z.ndim != 2:
        raise ValueError(f"{where} must be 2-D (n_samples, n_features), got shape {z.shape}")
    _check_dtype(z.dtype, where)
    return _as_numbers(_full_rows(_read_lazily(z, where)))


def _as_numbers(x):
    """Boolean rows as uint8 (0 and 1, exactly): the kernels then treat them as pixels."""
    return x.astype(np.uint8) if x.dtype == bool else x


def _read_lazily(z, where):
    """A dask array over a zarr array, one task per zarr chunk, whose read errors name the chunk."""
    token = dask.base.tokenize(str(z.store_path), z.shape, z.chunks, z.metadata.to_dict())
    return da.from_array(z, chunks=z.chunks, getitem=partial(_read_chunk, where=where), name=f"distkm-read-{token}",
                         meta=np.empty((0,) * z.ndim, dtype=z.dtype), asarray=False, inline_array=False)


def _read_chunk(array, index, asarray=True, lock=None, *, where):
    try:
        values = read_whole_chunk(array, index)  # zarr's values without zarr's event loop (~2x faster)
        return np.asarray(array[index]) if values is None else values
    except Exception as e:
        rows = index[0] if isinstance(index, tuple) else index
        chunk = rows.start // array.chunks[0]
        service = isinstance(e, PermissionError) or locations.is_connection_error(e)  # not the store's fault
        advice = "the storage service refused or could not be reached" if service else \
            "the store is damaged, write it again"
        raise OSError(f"cannot read chunk {chunk} (rows {rows.start}-{rows.stop - 1}) of {where}: "
                      f"{type(e).__name__}: {e}; {advice}") from e


def _check_chunks_present(z, location, where):
    """A distkm store writes every chunk: a missing one means a damaged store (zarr would read zeros)."""
    # Work in proportion to what is stored, never to what the metadata claims: zarr's nchunks_initialized
    # enumerates every chunk key of the shape (10**12 rows: a MemoryError after minutes and 6 GB).
    keys = _chunk_keys(z, location)
    if len(keys) < z.nchunks:
        present = len(keys)
        # The first missing chunk comes at most present + 1 checks in: metadata that claims 10**12 rows
        # costs no more than the chunks that exist (a list of the missing ones took 6 GB and never ended).
        first = next(i for i in range(z.cdata_shape[0])
                     if z.metadata.encode_chunk_key((i,) + (0,) * (z.ndim - 1)) not in keys)
        raise ValueError(f"{where} is damaged: {z.nchunks - present:,} chunk(s) missing, the first is chunk {first}"
                         f" (rows {first * z.chunks[0]}-{min((first + 1) * z.chunks[0], z.shape[0]) - 1}); "
                         "write the store again")


def _chunk_keys(z, location):
    """The keys (``c/<i>/<j>``) of the chunks of the zarr v3 array ``z`` at ``location`` that are stored, by listing."""
    if locations.is_url(location):
        fs, root = locations.filesystem(location)
        root = root.rstrip("/")
        with locations.explained(location):
            return {name[len(root) + 1:] for name in fs.find(f"{root}/c")}
    root = locations.local_path(location)
    return {f.relative_to(root).as_posix() for f in _chunk_files(root / "c", z.ndim)}


def _chunk_files(folder, depth):
    """The chunk files of a local zarr v3 array ("c/<i>/<j>" keys), found by listing, not by the shape."""
    if depth == 0:
        if folder.is_file():
            yield folder
        return
    if folder.is_dir():
        with os.scandir(folder) as entries:
            for entry in entries:
                yield from _chunk_files(Path(entry.path), depth - 1)


def _check_dtype(dtype, where):
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {where} has dtype {dtype}")
    if dtype.kind not in "buif":
        raise TypeError(f"{where} must hold real numbers (uint8, integer, float or bool), got dtype {dtype}")


def _full_rows(x):
    """Rechunk so that every chunk holds whole rows (the kernel works row-wise)."""
    return x if x.numblocks[1] == 1 else x.rechunk({1: -1})


def as_dask_array(X, *, name="X"):
    """Any supported input as a 2-D dask array chunked by rows.

    Accepts a numpy array (or array-like), a dask array, a zarr array or
    group, or the path of a zarr store. Rows are never split across chunks;
    numpy input is chunked by ``distkm.chunk-rows``.
    """
    if isinstance(X, (str, os.PathLike)):  # a local path or a URL
        return open_store(X).images
    if isinstance(X, zarr.Group):
        if "images" not in X.array_keys():
            raise ValueError(f"zarr group has no 'images' array (it holds: {', '.join(sorted(X.array_keys()))})")
        X = X["images"]
    if isinstance(X, zarr.Array):
        return _zarr_to_dask(X, name)
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
        _check_dtype(X.dtype, name)
        return _as_numbers(_full_rows(X))
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"Sparse data is not supported: {name} must be dense (use X.toarray() for small data)")
    try:
        X = np.asarray(X)
        if X.dtype.kind == "O":  # numbers held as Python objects: convert, or say which value is not one
            X = X.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must hold real numbers: {e}") from e
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}. Reshape your data "
                         "with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample.")
    _check_dtype(X.dtype, name)
    if X.dtype.kind == "f" and not np.isfinite(X).all():  # in memory already: checking costs little
        raise ValueError(f"{name} contains NaN or infinite values; k-means needs finite data")
    return _as_numbers(da.from_array(X, chunks=(config.get("chunk-rows"), -1)))


def create_store(path, *, n, n_features, chunk_rows, attrs, labels=True, source_index=False, compressor=None):
    """Create an empty, incomplete distkm store (images n x d uint8, labels, optional source_index)."""
    group = zarr.open_group(zarr_location(path, read_only=False), mode="w", zarr_format=3)
    group.attrs["distkm"] = {"format_version": STORE_FORMAT_VERSION, **attrs, "complete": False}
    common = dict(compressors=compressor or blosc_compressor(), config={"write_empty_chunks": True})
    group.create_array("images", shape=(n, n_features), chunks=(chunk_rows, n_features), dtype="uint8",
                       dimension_names=["sample", "feature"], **common)
    if labels:
        group.create_array("labels", shape=(n,), chunks=(chunk_rows,), dtype="uint8", dimension_names=["sample"],
                           **common)
    if source_index:
        group.create_array("source_index", shape=(n,), chunks=(chunk_rows,), dtype="int64",
                           dimension_names=["sample"], **common)
    return group


def chunks_done(path):
    """Boolean per row chunk: is the chunk completely written?"""
    images = zarr.open_group(zarr_location(path), mode="r")["images"]
    keys = _chunk_keys(images, locations.join(path, "images"))
    return np.array([images.metadata.encode_chunk_key((i, 0)) in keys for i in range(images.cdata_shape[0])],
                    dtype=bool)


def discard_unfinished_writes(path):
    """Remove what killed chunk writes left in a local store: the one debris a resumed store can hold.

    zarr's local store writes each chunk to ``KEY.<hex>.partial`` and renames it into place, so a
    writer killed mid-chunk leaves such a file behind. It is never read, but a resumed store must
    hold the same files as one written in one go. Call it only while no one writes the store.
    """
    if locations.is_url(path):
        return  # an object store's PUT is whole or absent
    for debris in locations.local_path(path).rglob("*.partial"):
        if re.fullmatch(r".*\.[0-9a-f]{32}\.partial", debris.name) and debris.is_file():
            debris.unlink()


def write_chunk(path, i, images, labels=None, source_index=None):
    """Write row chunk ``i`` of a store: labels and source_index first, images last (the completion mark)."""
    group = zarr.open_group(zarr_location(path, read_only=False), mode="r+")
    rows = slice(i * group["images"].chunks[0], i * group["images"].chunks[0] + images.shape[0])
    if labels is not None and "labels" in group:
        group["labels"][rows] = labels
    if source_index is not None and "source_index" in group:
        group["source_index"][rows] = source_index
    group["images"][rows] = images
    return images.shape[0]


def mark_complete(path, **extra):
    """Flag the store complete (after checking that every chunk is there)."""
    done = chunks_done(path)
    if not done.all():
        raise RuntimeError(f"{path}: {int((~done).sum())} chunk(s) missing; the store stays incomplete")
    group = zarr.open_group(zarr_location(path, read_only=False), mode="r+")
    attrs = dict(group.attrs["distkm"])
    group.attrs["distkm"] = {**attrs, **extra, "complete": True}


def as_dask_weights(sample_weight, x):
    """Sample weights as a dask array chunked like ``x``'s rows, or ``None``.

    Raises
    ------
    ValueError
        A weight is not finite or negative, all weights are 0, or their shape is not ``(n_samples,)``.
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, da.Array):
        w = sample_weight.astype(np.float64)
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim == 0:
            w = np.full(x.shape[0], float(w))
    if w.shape != (x.shape[0],):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({x.shape[0]},)")
    w = da.asarray(w).rechunk((x.chunks[0],))
    finite, negative, total = da.compute(da.isfinite(w).all(), (w < 0).any(), w.sum())
    if not finite or negative or total <= 0:
        raise ValueError("sample_weight must be finite and non-negative, with at least one non-zero weight")
    return w
