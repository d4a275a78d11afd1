"""Outputs that appear whole or not at all.

Everything distkm writes (an ingested store, a run folder, a labels array)
is built in a hidden temporary folder next to its destination and renamed
into place only once complete, so a crash, a Ctrl-C or a failed write never
leaves a half-written output that a later command could mistake for a good
one. With ``overwrite``, the old output is replaced only after the new one
is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def check_output_path(path, *, overwrite=False):
    """Fail early, before any work, if ``path`` cannot be written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    PermissionError
        The folder that would hold ``path`` cannot be written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    parent = _existing_ancestor(path.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write output {str(path)!r}: folder {str(parent)!r} is not writable")


def _existing_ancestor(path):
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


@contextmanager
def atomic_output(path, *, overwrite=False):
    """Context manager yielding a temporary folder that becomes ``path`` on success.

    Parameters
    ----------
    path : str or Path
        Final location (a folder: zarr stores and run folders are folders).
    overwrite : bool
        Replace an existing ``path`` once the new output is complete.

    Yields
    ------
    Path
        The temporary folder to write into. It is removed if the block raises.
    """
    path = Path(path)
    check_output_path(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0o700; outputs are meant to be shared
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        replace_path(tmp, path, overwrite=overwrite)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path, text):
    """Write a small text file (JSON, Markdown) whole or not at all: a temporary file, then a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def partial_path(path):
    """Where a resumable output is built before it is complete (``OUT.partial``, visible on purpose)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def replace_path(src, dst, *, overwrite=False):
    """Move the complete ``src`` to ``dst``, replacing ``dst`` only at the last moment.

    Raises
    ------
    FileExistsError
        ``dst`` exists (it appeared while ``src`` was being made) and ``overwrite`` is false:
        it is never clobbered silently.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output {str(dst)!r} appeared while writing; nothing was replaced")
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
