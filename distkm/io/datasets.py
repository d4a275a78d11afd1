"""IDX datasets: reading IDX files, MNIST and Fashion-MNIST with their checksums, and ingest into a store."""

from __future__ import annotations

import datetime
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distkm import config
from distkm.io.outputs import atomic_output
from distkm.io.stores import STORE_FORMAT_VERSION, compressor_settings, write_store

#: The official MNIST files that come with distkm's repository (see its README.md for the licence).
SHIPPED_MNIST = Path(__file__).resolve().with_name("mnist")


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


@dataclass(frozen=True)
class IdxDataset:
    """Where an IDX dataset is found and how its files are checked."""

    name: str
    #: Folders searched in order when no source folder is given.
    search_dirs: tuple
    #: The official MD5 of every file, built in: files are checked against them wherever they come from.
    md5: dict = field(default_factory=dict)
    #: Without built-in checksums: the listing used when the folder has no MD5SUMS of its own.
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
        search_dirs=(SHIPPED_MNIST,),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        hint="pass source=DIR, a folder with the official MNIST IDX .gz files",
    ),
    "fashion-mnist": IdxDataset(
        "fashion-mnist",
        search_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
        # Debian recompresses the upstream .gz files; dpkg's own list checks them.
        fallback_checksums="/var/lib/dpkg/info/dataset-fashion-mnist.md5sums",
        hint="install it with `apt-get install dataset-fashion-mnist`, or pass source=DIR",
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


def _verify(folder, names, spec):
    """Check the files against the dataset's built-in checksums, else the folder's MD5SUMS (or the fallback list).

    Returns
    -------
    listing : str
        Where the expected checksums came from.
    verified : dict
        ``{file name: md5}`` of the files checked.
    """
    if spec.md5:
        listing, expected = "distkm's built-in official MD5 checksums", spec.md5
    else:
        path = folder / "MD5SUMS"
        fallback = spec.fallback_checksums
        if not path.is_file() and fallback and Path(fallback).is_file():
            path = Path(fallback)
        if not path.is_file():
            raise FileNotFoundError(f"no checksum list for {folder} (looked for {folder / 'MD5SUMS'}"
                                    f"{' and ' + fallback if fallback else ''})")
        listing, expected = str(path), read_checksums(path)
    verified = {}
    for name in names:
        if name not in expected:
            raise ValueError(f"{listing} has no checksum for {name}")
        actual = md5sum(folder / name)
        if actual != expected[name]:
            raise ValueError(f"checksum mismatch for {folder / name}: MD5 {actual}, expected {expected[name]} "
                             f"(from {listing}); the file is corrupt or truncated")
        verified[name] = actual
    return listing, verified


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
        listing, verified = _verify(folder, names, spec)
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


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
