"""Where stores live: a local path, or a URL that fsspec can open (``s3://bucket/data.zarr``, ``gs://``...).

A store on object storage is read by every worker straight from there, so a
cluster of several hosts needs no shared filesystem. Settings come from the
standard places of each service (for S3: the AWS environment variables,
``~/.aws/config`` and ``credentials``, profiles, ``AWS_ENDPOINT_URL`` for an
S3-compatible service such as MinIO or Ceph), plus ``distkm.storage-options``
for what those places cannot say. distkm records only the URL, never a
credential: :func:`public_url` strips anything in the URL's user part.

Object stores have no rename: an output on one is made complete beside its
final name, then copied into place on the server (:mod:`distkm.io.publish`).
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import fsspec
from fsspec.registry import known_implementations
from zarr.storage import FsspecStore

from distkm import config

def _scheme(path):
    """The protocol ``path`` is spelled with (lower case), or ``None`` for a plain path."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", path) if isinstance(path, str) else None
    return match[1].lower() if match else None


def _implementation(scheme):
    """The fsspec class that serves ``scheme``, by name (its package need not be installed).

    Aliases share one: ``s3``/``s3a``, ``gs``/``gcs``, ``abfs``/``az``, ``file``/``local``.
    """
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError):  # not installed (then named as fsspec knows it), or unknown
        return known_implementations.get(scheme, {}).get("class", scheme)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_local_scheme(scheme):
    return _implementation(scheme) == "fsspec.implementations.local.LocalFileSystem"


def is_url(path):
    """Whether ``path`` names a location through a protocol (``s3://...``), not a local path.

    ``file://`` and fsspec's other names of the local filesystem (``local://``) are local paths.
    """
    if not isinstance(path, str) or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) is None:
        return False
    return not _is_local_scheme(_scheme(path))


def local_path(path):
    """A local path as :class:`~pathlib.Path`: ``file:///abs``, ``file:rel`` and ``local://...`` lose their
    protocol, as fsspec reads them (``file://rel`` is the relative path ``rel``)."""
    text = str(path)
    scheme = _scheme(text)
    if scheme is not None and len(scheme) > 1 and _is_local_scheme(scheme):  # len 1: a Windows drive letter
        text = re.sub(r"^[^:]+:(//)?", "", text)
    return Path(text)


def location(path):
    """``path`` as distkm handles it everywhere: a URL string (``s3://...``) or a local :class:`~pathlib.Path`.

    The one door for every path a user gives, input or output, so that
    ``file:///abs/run`` lands in ``/abs/run`` and not in ``./file:/abs/run``.
    """
    return str(path) if is_url(path) else local_path(path)


def canonical(path):
    """What ``path`` names, however it is spelled: a :class:`~pathlib.PurePosixPath` to compare locations by.

    Its first part names the filesystem (the fsspec class serving the protocol,
    so aliases such as ``s3``/``s3a`` or ``gs``/``gcs`` are one), the rest the
    path inside it: a local path (also ``file://`` or relative) resolved with
    its links followed; a URL without credentials, through its filesystem's own
    protocol stripping, with empty and ``.`` parts dropped. Two spellings of one
    place compare equal, and one place inside another has it among its parents.
    """
    if not is_url(path):
        return PurePosixPath("/", "file", *local_path(path).resolve().parts[1:])
    url = public_url(path)
    scheme = _scheme(url)
    implementation = _implementation(scheme)
    try:
        inner = fsspec.get_filesystem_class(scheme)._strip_protocol(url)
    except (ImportError, ValueError):  # its package is missing: the URL cannot be opened, only compared
        inner = url.split("://", 1)[1]
    if "://" in inner:  # filesystems that keep the whole URL as their path (http): compare what follows
        inner = inner.split("://", 1)[1]
    return PurePosixPath("/", implementation, *(part for part in inner.split("/") if part not in ("", ".")))


def storage_options(url):
    """fsspec options for ``url``'s protocol: ``distkm.storage-options.<protocol>``, empty by default.

    For S3, credentials and the endpoint come from botocore's usual sources;
    this mapping is for the rest (timeouts, retries, ``anon: true``).
    """
    protocol = urlsplit(url).scheme
    options = config.get("storage-options", {}) or {}
    return dict(options.get(protocol, {}) or {})


#: Object stores whose credentials come from their own places, never from the URL (where they would be
#: logged, recorded and shown in process lists); an ``http://user:password@`` URL is basic auth, and works.
_CREDENTIALS_ELSEWHERE = {"s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
                          "s3a": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
                          "gs": "GOOGLE_APPLICATION_CREDENTIALS or gcloud's default credentials",
                          "gcs": "GOOGLE_APPLICATION_CREDENTIALS or gcloud's default credentials",
                          "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a connection string)",
                          "abfs": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a connection string)"}


def filesystem(url):
    """The fsspec filesystem of ``url`` and the path inside it.

    Raises
    ------
    ValueError
        ``url`` is an object store's and carries credentials (refused without repeating them).
    ImportError
        The protocol's package is not installed (named, with the pip command).
    """
    scheme = urlsplit(url).scheme
    where = _CREDENTIALS_ELSEWHERE.get(scheme.lower())
    if where and _without_userinfo(url)[1]:
        raise ValueError(f"{public_url(url)!r}: credentials inside a {scheme}:// URL are not used (nor kept); "
                         f"give them as {where}")
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as e:
        protocol = urlsplit(url).scheme
        extra = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        hint = f"pip install {extra}" if extra else "install the fsspec package for it"
        raise ImportError(f"cannot open {public_url(url)!r}: the {protocol}:// protocol needs a package that is not "
                          f"installed ({hint}; for S3: pip install 'distkm[s3]')") from e


def zarr_store(url, *, read_only=True):
    """A zarr :class:`~zarr.storage.FsspecStore` over ``url``."""
    filesystem(url)  # a missing package named here, not deep inside zarr
    # from_url makes the filesystem asynchronous, on zarr's own event loop.
    return FsspecStore.from_url(url, storage_options=storage_options(url), read_only=read_only)


def public_url(path):
    """``path`` as it may be printed or recorded: a URL loses any user or password it carries."""
    if not is_url(path):
        return str(path)
    parts = urlsplit(_without_userinfo(path)[0])
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}"  # "://" kept where the host is empty (memory:///x)


def _without_userinfo(url):
    """``(url without its user part, whether it had one)``, never failing on what the user part holds.

    The user part runs to the first ``@``. A password pasted as it is may hold ``/`` (AWS secret keys
    do), which ends the URL's host for ``urlsplit``: the password is then cut, and its first piece
    read as a port, whose error would print it. So a first segment holding a ``:`` not followed by a
    port number, with an ``@`` further on, is taken for a user part too (bucket names hold neither).
    """
    head, sep, tail = str(url).partition("://")
    first = tail.split("/", 1)[0]
    user_part = "@" in first or (":" in first and "@" in tail and not first.rsplit(":", 1)[1].isdigit())
    if not sep or not user_part:
        return str(url), False
    return f"{head}://{tail.partition('@')[2]}", True


def recorded(path):
    """``path`` as distkm records it in model.json and reports: absolute, or the URL without credentials."""
    return public_url(path) if is_url(path) else str(local_path(path).resolve())


def join(base, *names):
    """``base`` / ``names`` for a local path (a :class:`~pathlib.Path`) or a URL (a string)."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return local_path(base).joinpath(*names)


def exists(path):
    """Whether anything is at ``path`` (a file, a folder, a prefix holding objects).

    Raises
    ------
    FileNotFoundError
        The URL's bucket (its first component) does not exist.
    PermissionError, ConnectionError
        The service refused the credentials, or cannot be reached (one line, see :func:`explained`).
    """
    if not is_url(path):
        path = local_path(path)
        return path.exists() or path.is_symlink()
    fs, inner = filesystem(path)
    with explained(path):
        if fs.exists(inner):
            return True
        bucket = inner.strip("/").split("/", 1)[0]
        if inner.strip("/") != bucket and not fs.exists(bucket):
            raise FileNotFoundError(f"bucket {bucket!r} of {public_url(path)!r} does not exist "
                                    f"(or these credentials cannot see it)")
        return False


@contextmanager
def explained(url):
    """Turn what the storage client raises into one line that says what is wrong and where to fix it.

    The clients of object stores raise their own exceptions with protocol
    detail ("Forbidden", an aiohttp connector error); users need to know
    whether the credentials, the endpoint or the name is wrong.
    """
    where = public_url(url)
    try:
        yield
    except (FileNotFoundError, FileExistsError):
        raise
    except Exception as e:
        if any(type(cause).__name__ == "NoCredentialsError" for cause in _chain(e)):
            places = _CREDENTIALS_ELSEWHERE.get(urlsplit(where).scheme.lower(), "the service's usual places")
            raise PermissionError(f"no credentials for {where!r}: none were found in {places} (for a public "
                                  "bucket: anon: true under distkm.storage-options)") from e
        if isinstance(e, PermissionError):
            raise PermissionError(f"access to {where!r} refused by the storage service ({e}); check the credentials "
                                  "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)"
                                  ) from e
        if is_connection_error(e):
            raise ConnectionError(f"cannot reach the storage service of {where!r} ({type(e).__name__}: {e}); check "
                                  "the endpoint (AWS_ENDPOINT_URL) and the network") from e
        raise


def is_connection_error(error):
    """Whether ``error`` (or what caused it) is a failure to reach a service, not a refusal or a missing name."""
    names = {type(e).__name__ for e in _chain(error)}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                         "ConnectionRefusedError", "ServerDisconnectedError"}) or isinstance(error, ConnectionError)


def _chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def read_text(path):
    """The text of a small file at a path or URL, or ``None`` when there is none (or it is not text)."""
    if not is_url(path):
        try:
            return local_path(path).read_text()
        except (OSError, UnicodeDecodeError):  # unreadable is "not one of distkm's files", as missing is
            return None
    try:
        fs, inner = filesystem(path)
        with explained(path):
            return fs.cat_file(inner).decode()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError):
        return None


def disk_usage(path):
    """Bytes stored under ``path`` (a folder or a prefix)."""
    if not is_url(path):
        return sum(f.stat().st_size for f in local_path(path).rglob("*") if f.is_file())
    fs, inner = filesystem(path)
    with explained(path):
        return int(fs.du(inner))


def upload(folder, url):
    """Copy the files of a local ``folder`` under ``url``."""
    fs, inner = filesystem(url)
    files = sorted(p for p in local_path(folder).rglob("*") if p.is_file())
    with explained(url):
        fs.put([str(f) for f in files], [f"{inner.rstrip('/')}/{f.relative_to(folder).as_posix()}" for f in files])


def remove(path):
    """Remove everything at ``path``, a local file or folder or a URL prefix (nothing there is fine)."""
    if not is_url(path):
        path = local_path(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    with explained(path):
        # The listed keys, never a pattern (URL outputs may not hold "*?[", which fsspec reads as globs).
        keys = fs.find(inner) + ([inner] if fs.isfile(inner) else [])
        if keys:
            fs.rm(keys)
        fs.invalidate_cache()


def remove_quietly(path):
    """:func:`remove` after a failure: a leftover is logged, never raised over the error being reported."""
    try:
        remove(path)
    except Exception as e:  # the network may be why the command failed in the first place
        logging.getLogger("distkm").warning("could not remove %s (%s); delete it by hand", public_url(path), e)


def temporary_url(url, tag="tmp"):
    """A hidden, unique prefix beside ``url`` (``.NAME.tmp-<hex>``) to build an output in."""
    parent, _, name = str(url).rstrip("/").rpartition("/")
    return f"{parent}/.{name}.{tag}-{uuid.uuid4().hex[:12]}"
