"""IDX datasets: reading IDX files, MNIST and Fashion-MNIST with their checksums, downloads, and ingest into a store."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dask.utils import parse_timedelta

from distkm import config
from distkm.io import locations
from distkm.io.outputs import atomic_output
from distkm.io.stores import STORE_FORMAT_VERSION, compressor_settings, write_store

#: The official MNIST files that come with distkm's repository (see its README.md for the licence).
SHIPPED_MNIST = Path(__file__).resolve().with_name("mnist")

logger = logging.getLogger("distkm")


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
    #: Folders searched in order when no source folder is given (``distkm.data-dirs.<name>`` replaces them).
    search_dirs: tuple
    #: The official MD5 of every file, built in: files are checked against them wherever they come from.
    md5: dict = field(default_factory=dict)
    #: The official MD5 of the upstream files, for a dataset whose local copies may differ from them
    #: (Debian recompresses Fashion-MNIST): downloads are checked against these.
    upstream_md5: dict = field(default_factory=dict)
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

    @property
    def download_md5(self):
        """``{file name: md5}`` that downloaded files must match."""
        return self.md5 or self.upstream_md5


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
        # Zalando's published checksums (github.com/zalandoresearch/fashion-mnist), those of the mirror's files.
        upstream_md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
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
    candidates = [locations.local_path(source)] if source is not None else search_dirs(dataset)
    for folder in candidates:
        present = [s for s, files in spec.splits.items() if all((folder / f).is_file() for f in files)]
        if present:
            return folder, present
    looked = ", ".join(repr(str(c.absolute())) for c in candidates)
    looked = looked or f"no folder (distkm.data-dirs.{dataset} is empty)"
    wanted = ", ".join(f for files in spec.splits.values() for f in files)
    raise FileNotFoundError(f"{dataset} IDX files not found (looked in {looked} for {wanted}); {spec.hint}")


def search_dirs(dataset):
    """Folders searched for ``dataset``'s files when no source folder is given.

    ``distkm.data-dirs.<dataset>`` when set (a list of folders; ``[]`` searches
    nowhere, so that the files always come from the cache or a mirror), else
    the built-in places: the files that come with distkm's repository for
    MNIST, Debian's ``dataset-fashion-mnist`` for Fashion-MNIST.
    """
    configured = config.get_list(f"data-dirs.{dataset}")
    dirs = DATASETS[dataset].search_dirs if configured is None else configured
    return [Path(os.path.expanduser(d)) for d in dirs]


def data_cache(dataset):
    """Folder that holds ``dataset``'s downloaded files.

    ``<distkm.data-cache>/<dataset>`` when that key is set, else
    ``$XDG_CACHE_HOME/distkm/<dataset>``, else ``~/.cache/distkm/<dataset>``.
    """
    base = config.get("data-cache")
    if base is None:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        # The XDG spec says a relative value is invalid and must be ignored.
        base = Path(xdg) / "distkm" if os.path.isabs(xdg) else Path.home() / ".cache" / "distkm"
    return Path(os.path.expanduser(str(base))) / dataset


def mirrors(dataset):
    """Base URLs that ``dataset``'s files are downloaded from, tried in order (``distkm.mirrors.<dataset>``)."""
    return config.get_list(f"mirrors.{dataset}") or []


class DownloadError(OSError):
    """No mirror gave a file with the official checksum (an OSError: the network or the mirrors failed)."""


def download_idx(dataset, *, cache=None, urls=None, timeout=None):
    """Make sure a cache folder holds all of ``dataset``'s files, downloading those missing.

    A file already there with the official MD5 is used as it is. A missing
    one is fetched from each mirror in turn, streamed into a temporary file
    beside its final place, checked against the built-in MD5, and only then
    renamed into place: an interrupted, truncated or corrupt download never
    takes a file's name, and the next mirror is tried. The cached copy of a
    file that fails its checksum is replaced.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    cache : str or Path, optional
        The folder (default :func:`data_cache`).
    urls : list of str, optional
        Base URLs of the mirrors (default ``distkm.mirrors.<dataset>``).
    timeout : float or str, optional
        Seconds (or a dask duration such as ``"30s"``) to wait for a connection or
        for the next bytes of an answer (default ``distkm.download-timeout``).

    Returns
    -------
    Path
        The cache folder.

    Raises
    ------
    DownloadError
        A file failed on every mirror: names the file and each mirror's reason.
    """
    spec = DATASETS[dataset]
    folder = Path(cache) if cache is not None else data_cache(dataset)
    urls = list(urls) if urls is not None else mirrors(dataset)
    timeout = parse_timedelta(timeout if timeout is not None else config.get("download-timeout"))
    expected = spec.download_md5
    names = [f for files in spec.splits.values() for f in files]
    missing = []
    for name in names:
        path = folder / name
        if path.is_file():
            if md5sum(path) == expected[name]:
                continue
            logger.info(f"{path} does not have the official checksum; downloading it again")
        missing.append(name)
    if not missing:
        return folder
    if not urls:
        raise DownloadError(f"{dataset}: {', '.join(missing)} not in {folder} and no mirror to download them from "
                            f"(distkm.mirrors.{dataset} is empty); {spec.hint}")
    folder.mkdir(parents=True, exist_ok=True)
    logger.info(f"{dataset}: {len(missing)} of its {len(names)} files not found locally; "
                f"downloading them into {folder}")
    for name in missing:
        failures = []
        for base in urls:
            url = f"{base.rstrip('/')}/{name}"
            try:
                size = _download(url, folder / name, expected[name], timeout)
            except _Failed as e:
                failures.append(f"{locations.public_url(url)}: {e}")
                continue
            earlier = f" (after {'; '.join(failures)})" if failures else ""
            logger.info(f"downloaded {name} ({_size(size)}) from {locations.public_url(base)} into {folder}{earlier}")
            # The mirror that answered goes first for the other files: a dead one costs its timeout once, not 4 times.
            urls.remove(base)
            urls.insert(0, base)
            break
        else:
            raise DownloadError(f"could not download {name} of {dataset}: {'; '.join(failures)}; {spec.hint}")
    return folder


class _Failed(Exception):
    """One mirror's failure to give one file, with its reason."""


def _download(url, target, md5, timeout):
    """Stream ``url`` into ``target`` atomically, checked against ``md5``; return its size in bytes.

    Raises
    ------
    _Failed
        The reason (HTTP status, connection error, timeout, truncation, checksum); nothing is left behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        digest, size = hashlib.md5(), 0
        with os.fdopen(fd, "wb") as f:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as e:
                raise _Failed(f"HTTP {e.code} {e.reason}") from e
            except urllib.error.URLError as e:  # no answer: refused, unknown host, timed out connecting
                raise _Failed(_reason(e.reason, timeout)) from e
            except (OSError, http.client.HTTPException) as e:  # a garbled or cut-off status line or header
                raise _Failed(_reason(e, timeout)) from e
            with response:
                announced = response.headers.get("Content-Length")
                # Only reading fails over to the next mirror; a write error (a full disk) is raised as it is.
                while block := _read(response, size, timeout):
                    f.write(block)
                    digest.update(block)
                    size += len(block)
        # http.client ends a body that breaks off before its Content-Length quietly, as if complete.
        if announced is not None and announced.isdigit() and size != int(announced):
            raise _Failed(f"truncated ({size:,} of {int(announced):,} bytes)")
        if digest.hexdigest() != md5:
            raise _Failed(f"checksum mismatch (MD5 {digest.hexdigest()}, expected {md5})")
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600; a cache is meant to be readable like any download
        os.replace(tmp, target)
        return size
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read(response, size, timeout):
    try:
        return response.read(1 << 20)
    except (OSError, http.client.HTTPException) as e:  # the answer broke off: reset, timed out, incomplete
        raise _Failed(f"truncated ({_reason(e, timeout)} after {size:,} bytes)") from e


def _size(n):
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _reason(error, timeout):
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def _verify(folder, names, spec, downloaded=False):
    """Check the files against the dataset's built-in checksums, else the folder's MD5SUMS (or the fallback list).

    Downloaded files are checked against the upstream checksums.

    Returns
    -------
    listing : str
        Where the expected checksums came from.
    verified : dict
        ``{file name: md5}`` of the files checked.
    """
    if spec.md5 or downloaded:
        listing, expected = "distkm's built-in official MD5 checksums", spec.download_md5 if downloaded else spec.md5
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
        Folder with the IDX ``.gz`` files (default: the dataset's known places,
        see :func:`search_dirs`; when none has them, the files are downloaded
        into :func:`data_cache` by :func:`download_idx`).
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
    download = False
    try:
        folder, present = find_idx_source(dataset, source)
    except FileNotFoundError:
        # A folder the user names is used as it is; downloads are for when the known places lack the files.
        if source is not None or not mirrors(dataset):
            raise
        folder, present, download = data_cache(dataset), list(spec.splits), True
    names = [f for s in present for f in spec.splits[s]]
    with atomic_output(out, overwrite=overwrite, inputs=[folder]) as tmp:
        if download:  # inside: a store that cannot be written is refused before minutes of downloading
            download_idx(dataset, cache=folder)
        listing, verified = _verify(folder, names, spec, downloaded=download)
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
