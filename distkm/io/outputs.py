"""Outputs that appear whole or not at all.

Everything distkm writes (an ingested store, a run folder, a labels array)
is built in a hidden temporary folder next to its destination and renamed
into place only once complete, so a crash, a Ctrl-C or a failed write never
leaves a half-written output that a later command could mistake for a good
one. With ``overwrite``, the old output is replaced only after the new one
is complete. On object storage (an output given as a URL), which has no
rename, the temporary folder is a prefix beside the output and the move a
copy on the server that survives a kill at any point (:mod:`distkm.io.publish`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from distkm.io import locations, publish


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
        one, or lie inside one, however either is spelled (compared by
        :func:`distkm.io.locations.canonical`: links followed, ``file://`` and
        protocol aliases such as ``s3a://`` resolved).

    Raises
    ------
    ValueError
        ``path`` is, contains, or lies inside an input.
    FileExistsError
        ``path`` exists and ``overwrite`` is false, or it is not distkm's own output.
    PermissionError
        The folder that would hold ``path`` cannot be written.
    """
    if locations.is_url(path):
        name = str(path).rstrip("/").split("://", 1)[1]
        if "/" not in name or any(c in name for c in "*?["):
            # fsspec reads "*?[" as patterns; a bucket is not an output of its own.
            raise ValueError(f"output {locations.public_url(path)!r}: a URL output must name a path inside a bucket "
                             "without the characters * ? [")
        check_not_an_input(path, inputs)
        finished = publish.finish_interrupted(path)  # a move into path that a kill stopped: ended, then judged
        if locations.exists(path):
            if not overwrite:
                why = ("was complete but for its move into place, which is finished now; pass overwrite=True to "
                       "make it again") if finished else "already exists; pass overwrite=True to replace it"
                raise FileExistsError(f"output {locations.public_url(path)!r} {why}")
            _check_replaceable(path)
        return
    path = locations.local_path(path)
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
    """Refuse an output that is, contains, or lies inside one of ``inputs``, however either is spelled.

    Raises
    ------
    ValueError
        Naming the output, the input and how they overlap.
    """
    out = locations.canonical(path)
    for given in inputs:
        if given is None:
            continue
        source = locations.canonical(given)
        if out == source:
            how = "is"
        elif out in source.parents:
            how = "contains"
        elif source in out.parents:
            how = "lies inside"
        else:
            continue
        raise ValueError(f"output {locations.public_url(path)!r} {how} the input {locations.public_url(given)!r}: "
                         "an output may never replace, hold or sit inside an input; choose another output")


def written_by_distkm(path):
    """What distkm output ``path`` is (``"store"``, ``"run folder"``...), or ``None`` for anything else.

    Recognised by content, not by name: a zarr store or labels array with
    distkm's attributes, a run folder (``model.json`` of format
    ``distkm-model``), a sweep folder (``sweep.json``), a quantize folder or
    image (named by a distkm palette JSON).
    """
    if not locations.is_url(path):
        path = locations.local_path(path)
        if path.is_symlink() or not path.is_dir():
            return _written_file(path)
    for marker in publish.MARKERS:  # a folder, or a prefix on object storage
        kind = _kind(marker, locations.read_text(locations.join(path, marker)))
        if kind is not None:
            return kind
    if not locations.is_url(path) and _is_palette(path / "palette.json"):
        return "quantize folder"
    return None


def _written_file(path):
    """What distkm file ``path`` is (a palette, a quantized image), or ``None``."""
    if path.is_file() and not path.is_symlink():
        if path.suffix == ".json" and path.stem.endswith("palette") and _is_palette(path):
            return "palette"
        for palette in (path.with_name(path.stem + "-palette.json"),
                        path.with_name(path.stem.removesuffix("-palette") + "-palette.json")):
            doc = _read_json(palette) or {}
            if doc.get("format") == "distkm-palette" and \
                    path.name in doc.get("images", []) + [palette.with_suffix(".png").name]:
                return "quantized image"
    return None


def _kind(marker, text):
    """What distkm output a folder whose ``marker`` file holds ``text`` is, or ``None``."""
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if marker == "zarr.json" and "distkm" in doc.get("attributes", {}):
        return "store" if doc.get("node_type") == "group" else "labels array"
    if marker == "model.json" and doc.get("format") == "distkm-model":
        return "run folder"
    if marker == "sweep.json" and "rows" in doc:
        return "sweep folder"
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
        raise FileExistsError(f"output {locations.public_url(path)!r} exists and is not an output of distkm; "
                              "overwrite=True replaces only what distkm wrote (a store, a run folder...): remove it "
                              "yourself or choose another output")


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

    On object storage (a URL) there is nothing to lock: the block runs
    unguarded (two commands writing the same URL are not detected).

    Raises
    ------
    OutputBusyError
        Another command holds the lock.
    """
    if locations.is_url(path):
        yield
        return
    path = locations.local_path(path)
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
    if locations.is_url(path):
        yield from _atomic_url(path, overwrite=overwrite, inputs=inputs)
        return
    path = locations.local_path(path)
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


def _atomic_url(url, *, overwrite, inputs):
    """:func:`atomic_output` on object storage: a hidden prefix, then a copy on the server (no lock exists there)."""
    check_output_path(url, overwrite=overwrite, inputs=inputs)
    tmp = locations.temporary_url(url)
    try:
        yield tmp
    except BaseException:
        locations.remove_quietly(tmp)
        raise
    try:
        replace_path(tmp, url, overwrite=overwrite)
    except publish.PublishError:
        raise  # the move is under way (its journal says where): the next command into url finishes it
    except BaseException:
        locations.remove_quietly(tmp)
        raise


@contextmanager
def staged_locally(path):
    """A local folder to write ``path``'s files into: ``path`` itself, or, for a URL, a temporary
    folder uploaded under it when the block succeeds (for outputs only the client writes)."""
    if not locations.is_url(path):
        yield locations.local_path(path)
        return
    folder = Path(tempfile.mkdtemp(prefix="distkm-stage-"))
    try:
        yield folder
        locations.upload(folder, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomic(path, text):
    """Write a small text file (JSON, Markdown) whole or not at all: a temporary file, then a rename."""
    path = locations.local_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResumableOutput:
    """An output built in ``OUT.partial`` until it is complete, then moved into place whole (fit, augment).

    ``OUT.partial`` (a folder, or a prefix on object storage) outlives a failed
    or killed command, so the same command run again continues it; only the
    move makes ``OUT``, so a half output is never taken for one. Use it as a
    context manager: inside the block, this command alone writes ``OUT``
    (:func:`output_lock`; on object storage, where nothing can be locked, two
    commands writing the same URL are not detected).

    Parameters
    ----------
    out : str or Path
        The output to create.
    inputs : iterable of str or Path
        The command's inputs, which neither ``OUT`` nor ``OUT.partial`` may overlap.
    overwrite : bool
        Replace an existing ``OUT`` (distkm's own only) when the new one is complete.

    Attributes
    ----------
    out : Path or str
        The output, as :func:`distkm.io.locations.location` reads it.
    work : Path or str
        ``OUT.partial``, where it is built.
    """

    def __init__(self, out, *, inputs=(), overwrite=False):
        check_output_path(out, overwrite=overwrite, inputs=inputs)
        self.out, self.overwrite = locations.location(out), overwrite
        self.work = partial_path(out)
        check_not_an_input(self.work, inputs)
        self._lock = None

    def __enter__(self):
        self._lock = output_lock(self.out)
        self._lock.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._lock.__exit__(*exc_info)

    def interrupted(self):
        """Whether ``OUT.partial`` holds the work of an earlier command."""
        return locations.exists(self.work)

    def discard(self):
        """Remove ``OUT.partial`` (nothing there worth resuming)."""
        locations.remove_quietly(self.work)

    def publish(self):
        """Move the complete ``OUT.partial`` to ``OUT`` (replacing the old output only now)."""
        replace_path(self.work, self.out, overwrite=self.overwrite)


def partial_path(path):
    """Where a resumable output is built before it is complete (``OUT.partial``, visible on purpose)."""
    if locations.is_url(path):
        return str(path).rstrip("/") + ".partial"
    path = locations.local_path(path)
    return path.with_name(path.name + ".partial")


def replace_path(src, dst, *, overwrite=False):
    """Move the complete ``src`` to ``dst``, replacing ``dst`` only at the last moment.

    Raises
    ------
    FileExistsError
        ``dst`` exists (it appeared while ``src`` was being made) and ``overwrite`` is false:
        it is never clobbered silently.
    """
    if locations.is_url(dst):
        if overwrite and locations.exists(dst):
            _check_replaceable(dst)
        publish.publish(src, dst, replace=overwrite)
        return
    src, dst = locations.local_path(src), locations.local_path(dst)
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
