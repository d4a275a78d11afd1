"""Outputs that appear whole or not at all.

Everything distkm writes (an ingested store, a run folder, a labels array)
is built in a hidden temporary folder next to its destination and renamed
into place only once complete, so a crash, a Ctrl-C or a failed write never
leaves a half-written output that a later command could mistake for a good
one. With ``overwrite``, the old output is replaced only after the new one
is complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def check_output_path(path, *, overwrite=False, inputs=()):
    """Fail early, before any work, if ``path`` cannot or must not be written.

    Parameters
    ----------
    path : str or Path
        The output to create.
    overwrite : bool
        Allow replacing an existing output, but only one that distkm wrote
        (:func:`written_by_distkm`): never an arbitrary file or folder.
    inputs : iterable of str or Path
        The inputs of the command: the output may not be one of them, hold
        one, or lie inside one (compared as resolved paths, links followed).

    Raises
    ------
    ValueError
        ``path`` is, contains, or lies inside an input.
    FileExistsError
        ``path`` exists and ``overwrite`` is false, or it is not distkm's own output.
    PermissionError
        The folder that would hold ``path`` cannot be written.
    """
    path = Path(path)
    check_not_an_input(path, inputs)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"output {str(path)!r} already exists; pass overwrite=True "
                                  "to replace it")
        _check_replaceable(path)
    parent = _existing_ancestor(path.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write output {str(path)!r}: folder {str(parent)!r} is not writable")


def check_not_an_input(path, inputs):
    """Refuse an output that is, contains, or lies inside one of ``inputs`` (resolved paths).

    Raises
    ------
    ValueError
        Naming the output, the input and how they overlap.
    """
    out = Path(path).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source:
            how = "is"
        elif out in source.parents:
            how = "contains"
        elif source in out.parents:
            how = "lies inside"
        else:
            continue
        raise ValueError(f"output {str(path)!r} {how} the input {str(given)!r}: an output may never replace, "
                         "hold or sit inside an input; choose another output")


def written_by_distkm(path):
    """What distkm output ``path`` is (``"store"``, ``"run folder"``...), or ``None`` for anything else.

    Recognised by content, not by name: a zarr store or labels array with
    distkm's attributes, a run folder (``model.json`` of format
    ``distkm-model``), a sweep folder (``sweep.json``), a quantize folder or
    image (named by a distkm palette JSON).
    """
    path = Path(path)
    if path.is_symlink():
        return None
    if path.is_dir():
        meta = _read_json(path / "zarr.json")
        if meta is not None and "distkm" in meta.get("attributes", {}):
            return "store" if meta.get("node_type") == "group" else "labels array"
        if (_read_json(path / "model.json") or {}).get("format") == "distkm-model":
            return "run folder"
        if "rows" in (_read_json(path / "sweep.json") or {}):
            return "sweep folder"
        if _is_palette(path / "palette.json"):
            return "quantize folder"
        return None
    if path.is_file():
        if path.suffix == ".json" and path.stem.endswith("palette") and _is_palette(path):
            return "palette"
        for palette in (path.with_name(path.stem + "-palette.json"),
                        path.with_name(path.stem.removesuffix("-palette") + "-palette.json")):
            doc = _read_json(palette) or {}
            if doc.get("format") == "distkm-palette" and \
                    path.name in doc.get("images", []) + [palette.with_suffix(".png").name]:
                return "quantized image"
    return None


def _is_palette(path):
    return (_read_json(path) or {}).get("format") == "distkm-palette"


def _read_json(path):
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _check_replaceable(path):
    if written_by_distkm(path) is None:
        raise FileExistsError(f"output {str(path)!r} exists and is not an output of distkm; overwrite=True replaces "
                              "only what distkm wrote (a store, a run folder...): remove it yourself or choose another "
                              "output")


def _existing_ancestor(path):
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


class OutputBusyError(FileExistsError):
    """Another distkm command is writing the same output now."""


@contextmanager
def output_lock(path):
    """While in the block, this is the only distkm command writing ``path``; another one is refused at once.

    An exclusive ``flock`` on ``.NAME.lock`` beside the output. The system
    releases it when the process ends, killed or not, so a lock is never
    stale. The file is removed when the block ends (a killed command leaves
    an empty one, which the next command simply takes).

    Raises
    ------
    OutputBusyError
        Another command holds the lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"another distkm command is writing {str(path)!r} right now; wait for it to end "
                                  "(or stop it) and try again") from None
        try:  # the holder before us may have removed the file we locked: then lock the one there now
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # removed while still held, so no one can hold a file that is gone
        os.close(fd)


@contextmanager
def atomic_output(path, *, overwrite=False, inputs=()):
    """Context manager yielding a temporary folder that becomes ``path`` on success.

    Parameters
    ----------
    path : str or Path
        Final location (a folder: zarr stores and run folders are folders).
    overwrite : bool
        Replace an existing ``path`` (distkm's own output only) once the new output is complete.
    inputs : iterable of str or Path
        The command's inputs, which ``path`` may not overlap (see :func:`check_output_path`).

    Yields
    ------
    Path
        The temporary folder to write into. It is removed if the block raises.
    """
    path = Path(path)
    check_output_path(path, overwrite=overwrite, inputs=inputs)
    with output_lock(path):
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
        _check_replaceable(dst)
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
