"""Image data: IDX files, ingest into zarr v3 stores, and opening data as dask arrays.

A distkm store is a zarr v3 group::

    images   (n, d) uint8, chunked by rows (``distkm.chunk-rows``), Blosc-compressed
    labels   (n,)   uint8, same row chunks (absent when the data has no labels)
    attrs["distkm"] = {"complete": true, "splits": {"train": [0, 60000], ...},
                       "image_shape": [28, 28], "source": {...}}

Splits are contiguous row ranges, so a split is a cheap slice of ``images``.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from . import config
from .outputs import atomic_output
from .zarr_chunks import read_whole_chunk

STORE_FORMAT_VERSION = 1

# --------------------------------------------------------------------------- #
# IDX files
# --------------------------------------------------------------------------- #
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Raises
    ------
    ValueError
        The file is not IDX, is truncated, or is a corrupt gzip stream.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: corrupt or truncated file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX data holds {len(raw) - header} bytes, header says {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def md5sum(path, block_size=1 << 20):
    """MD5 hex digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def read_checksums(path):
    """Parse an ``md5sum`` listing into ``{file name: md5}`` (paths reduced to names)."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[Path(parts[1].lstrip("*")).name] = parts[0].lower()
    return sums


# --------------------------------------------------------------------------- #
# Known IDX datasets
# --------------------------------------------------------------------------- #
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class IdxDataset:
    """Where an IDX dataset is found and how its files are checked."""

    name: str
    #: Folders searched in order when no source folder is given.
    search_dirs: tuple
    #: Checksum listing used when the folder has no MD5SUMS of its own.
    fallback_checksums: str | None = None
    #: split -> (images file, labels file), in the order the splits are stored.
    splits: dict = field(
        default_factory=lambda: {
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        }
    )
    #: What to tell a user whose machine lacks the files.
    hint: str = ""


DATASETS = {
    "mnist": IdxDataset(
        "mnist",
        search_dirs=(Path("../shared/data/mnist"), _PACKAGE_ROOT.parent / "shared" / "data" / "mnist"),
        hint="pass --source DIR with the four MNIST IDX .gz files and their MD5SUMS",
    ),
    "fashion-mnist": IdxDataset(
        "fashion-mnist",
        search_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
        # Debian recompresses the upstream .gz files; dpkg's own list checks them.
        fallback_checksums="/var/lib/dpkg/info/dataset-fashion-mnist.md5sums",
        hint="install it with `apt-get install dataset-fashion-mnist`, or pass --source DIR",
    ),
}


def find_idx_source(dataset, source=None):
    """Folder holding ``dataset``'s IDX files, and the splits present there.

    Returns
    -------
    folder : Path
    splits : list of str
        Splits whose image and label files both exist.
    """
    spec = DATASETS[dataset]
    candidates = [Path(source)] if source is not None else [Path(p) for p in spec.search_dirs]
    for folder in candidates:
        present = [s for s, files in spec.splits.items() if all((folder / f).is_file() for f in files)]
        if present:
            return folder, present
    looked = ", ".join(repr(str(c.absolute())) for c in candidates)
    wanted = ", ".join(f for files in spec.splits.values() for f in files)
    raise FileNotFoundError(f"{dataset} IDX files not found (looked in {looked} for {wanted}); {spec.hint}")


def _verify(folder, names, fallback):
    listing = folder / "MD5SUMS"
    if not listing.is_file() and fallback and Path(fallback).is_file():
        listing = Path(fallback)
    if not listing.is_file():
        raise FileNotFoundError(f"no checksum list for {folder} (looked for {folder / 'MD5SUMS'}"
                                f"{' and ' + fallback if fallback else ''})")
    expected = read_checksums(listing)
    verified = {}
    for name in names:
        if name not in expected:
            raise ValueError(f"{listing} has no checksum for {name}")
        actual = md5sum(folder / name)
        if actual != expected[name]:
            raise ValueError(f"checksum mismatch for {folder / name}: MD5 {actual}, expected {expected[name]} "
                             f"(from {listing}); the file is corrupt or truncated")
        verified[name] = actual
    return str(listing), verified


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


def ingest_idx(dataset, out, *, source=None, chunk_rows=None, compressor=None, overwrite=False):
    """Write an IDX dataset (MNIST, Fashion-MNIST) into a distkm zarr store.

    Every split present in the source folder is stored, one after the other,
    in ``images``/``labels``; their row ranges go in the store's attributes.
    Checksums are verified first; the store appears at ``out`` only once
    complete.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    out : str or Path
        The zarr store to create.
    source : str or Path, optional
        Folder with the IDX ``.gz`` files (default: the dataset's known places).
    chunk_rows : int, optional
        Rows per chunk (default ``distkm.chunk-rows``).
    compressor : str or dict, optional
        Blosc settings such as ``"lz4hc:5"`` (default ``distkm.compressor``).
    overwrite : bool
        Replace an existing store at ``out``.

    Returns
    -------
    dict
        The store's ``distkm`` attributes.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    chunk_rows = _positive_int(chunk_rows or config.get("chunk-rows"), "chunk_rows")
    spec = DATASETS[dataset]
    compressor = compressor_settings(compressor)
    folder, present = find_idx_source(dataset, source)
    names = [f for s in present for f in spec.splits[s]]
    with atomic_output(out, overwrite=overwrite, inputs=[folder]) as tmp:
        listing, verified = _verify(folder, names, spec.fallback_checksums)
        images, labels, splits = [], [], {}
        start = 0
        for split in present:
            image_file, label_file = spec.splits[split]
            x, y = read_idx(folder / image_file), read_idx(folder / label_file)
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{folder}: {image_file} {x.shape} and {label_file} {y.shape} do not match")
            images.append(x.reshape(x.shape[0], -1))
            labels.append(y)
            splits[split] = [start, start + x.shape[0]]
            start += x.shape[0]
        image_shape = list(x.shape[1:])
        attrs = {
            "format_version": STORE_FORMAT_VERSION,
            "image_shape": image_shape,
            "splits": splits,
            "source": {"dataset": dataset, "folder": str(folder.resolve()), "checksums": listing, "md5": verified},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_store(tmp, np.concatenate(images), np.concatenate(labels), attrs, chunk_rows=chunk_rows,
                    compressor=compressor)
    return attrs


def write_store(path, images, labels, attrs, *, chunk_rows, compressor=None):
    """Write in-memory ``images`` (and ``labels``) as a distkm store at ``path``, then mark it complete."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
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


# --------------------------------------------------------------------------- #
# Opening data
# --------------------------------------------------------------------------- #
@dataclass
class ImageStore:
    """A distkm store opened lazily: dask arrays over the zarr arrays."""

    path: Path
    images: da.Array
    labels: da.Array | None
    attrs: dict


def open_store(path, *, split=None, array="images"):
    """Open a zarr store of images as dask arrays, checking it at the door.

    Parameters
    ----------
    path : str or Path
        A distkm store (a zarr group with ``images``), or any zarr group
        holding a 2-D array named ``array``, or a zarr array itself.
    split : str, optional
        Keep only the rows of this split (``"train"``, ``"test"``).
    array : str
        Name of the data array inside the group.

    Returns
    -------
    ImageStore
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no zarr store at {str(path)!r} (create one with `distkm ingest mnist --out {path}`)")
    try:
        node = zarr.open(path, mode="r")
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable zarr store ({e})") from e
    if isinstance(node, zarr.Array):
        group_attrs, images, labels = {}, node, None
    else:
        group_attrs = dict(node.attrs.get("distkm", {}))
        if group_attrs.get("complete") is False:
            how = (f"resume it with: {group_attrs['resume_command']}" if "resume_command" in group_attrs
                   else "write it again")
            raise ValueError(f"store {str(path)!r} is incomplete (its writing was interrupted); {how}")
        members = sorted(node.array_keys())
        if array not in members:
            held = ", ".join(members) or "nothing"
            raise ValueError(f"store {str(path)!r} has no {array!r} array (it holds: {held})")
        images = node[array]
        labels = node["labels"] if "labels" in members else None
        if group_attrs.get("complete") is True:
            _check_chunks_present(images, f"store {str(path)!r} ({array})")
            n_declared = max((stop for _, stop in group_attrs.get("splits", {}).values()), default=0)
            if n_declared > images.shape[0]:
                raise ValueError(f"store {str(path)!r} declares splits up to row {n_declared}, "
                                 f"but {array} has {images.shape[0]} rows")
    x = _zarr_to_dask(images, f"{path}/{array}" if group_attrs or labels is not None else str(path))
    y = None
    if labels is not None:
        if labels.shape != (x.shape[0],):
            raise ValueError(f"store {str(path)!r}: labels have shape {labels.shape}, expected ({x.shape[0]},)")
        y = _read_lazily(labels, f"{path}/labels").rechunk((x.chunks[0],))
    if split is not None:
        splits = group_attrs.get("splits", {})
        if split not in splits:
            raise ValueError(f"store {str(path)!r} has no split {split!r} (it has: {', '.join(splits) or 'none'})")
        start, stop = splits[split]
        x = x[start:stop]
        y = None if y is None else y[start:stop]
    if x.shape[0] == 0:
        raise ValueError(f"store {str(path)!r} holds no rows")
    return ImageStore(path, x, y, group_attrs)


def _zarr_to_dask(z, where):
    if z.ndim != 2:
        raise ValueError(f"{where} must be 2-D (n_samples, n_features), got shape {z.shape}")
    _check_dtype(z.dtype, where)
    return _full_rows(_read_lazily(z, where))


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
        raise OSError(f"cannot read chunk {chunk} (rows {rows.start}-{rows.stop - 1}) of {where}: "
                      f"{type(e).__name__}: {e}; the store is damaged, write it again") from e


def _check_chunks_present(z, where):
    """A distkm store writes every chunk: a missing one means a damaged store (zarr would read zeros)."""
    present = z.nchunks_initialized
    if present < z.nchunks:
        root = Path(str(z.store_path).removeprefix("file://"))
        missing = [i for i in range(z.cdata_shape[0])
                   if not (root / z.metadata.encode_chunk_key((i,) + (0,) * (z.ndim - 1))).exists()]
        first = missing[0] if missing else "?"
        raise ValueError(f"{where} is damaged: {z.nchunks - present} chunk(s) missing, the first is chunk {first}"
                         f" (rows {first * z.chunks[0]}-{min((first + 1) * z.chunks[0], z.shape[0]) - 1}); "
                         "write the store again" if missing else f"{where} is damaged: chunks are missing")


def _check_dtype(dtype, where):
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {where} has dtype {dtype}")
    if dtype.kind not in "uif":
        raise TypeError(f"{where} must hold real numbers (uint8, integer or float), got dtype {dtype}")


def _full_rows(x):
    """Rechunk so that every chunk holds whole rows (the kernel works row-wise)."""
    return x if x.numblocks[1] == 1 else x.rechunk({1: -1})


def as_dask_array(X, *, name="X"):
    """Any supported input as a 2-D dask array chunked by rows.

    Accepts a numpy array (or array-like), a dask array, a zarr array or
    group, or the path of a zarr store. Rows are never split across chunks;
    numpy input is chunked by ``distkm.chunk-rows``.
    """
    if isinstance(X, (str, os.PathLike)):
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
        return _full_rows(X)
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
    return da.from_array(X, chunks=(config.get("chunk-rows"), -1))


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
