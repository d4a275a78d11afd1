"""Moving a complete output into place on object storage, recoverable at every kill point.

Object stores have no rename: a complete output built at ``src`` (``OUT.partial``,
or a hidden temporary prefix beside ``OUT``) is copied to ``OUT`` on the server,
then ``src`` is removed. A kill can land anywhere in that, so the move keeps a
journal, the one small object ``.NAME.publishing`` beside the output (an object
store replaces an object whole), naming ``src`` and the step it is at:

``replacing``
    The old output at ``OUT`` is being removed (the command was asked to replace it).
``copying``
    ``OUT`` holds nothing but part of the copy of ``src``. The marker files
    (``zarr.json``, ``model.json``...) are copied last, the root's very last, so
    until the copy ends no reader takes ``OUT`` for a store or a run.
``removing``
    ``OUT`` is complete; ``src`` is being removed.

Every step can be done again, so whichever command next writes the same output
(the same one run again, with or without ``--overwrite``) finishes the move
first (:func:`finish_interrupted`). At no instant is an output lost (``src`` is
removed only once ``OUT`` is complete) or a half one taken for whole.
"""

from __future__ import annotations

import json
import logging

from distkm.io import locations

logger = logging.getLogger("distkm")

#: Files that make a folder a store, a run or a sweep (copied last, so that a half-copied output is never one).
MARKERS = ("zarr.json", "model.json", "sweep.json")


class PublishError(OSError):
    """A complete output could not be copied into place; it is kept where it was built."""


def journal_url(dst):
    """The journal of a move into ``dst``: ``.NAME.publishing`` beside it."""
    parent, _, name = str(dst).rstrip("/").rpartition("/")
    return f"{parent}/.{name}.publishing"


def publish(src, dst, *, replace=False):
    """Copy the complete output at ``src`` to ``dst`` on the server, markers last, then remove ``src``.

    Parameters
    ----------
    src : str
        A URL beside ``dst`` (same parent) holding a complete output.
    dst : str
        Where the output goes.
    replace : bool
        ``dst`` holds an older output (checked by the caller) that is removed
        only now, once ``src`` is complete.

    Raises
    ------
    FileExistsError
        ``dst`` appeared while ``src`` was being made and ``replace`` is false.
    PublishError
        ``src`` holds no complete output, or the copy failed: the journal stays, so
        running the command again finishes the move; ``src`` is never removed before.
    """
    fs, dst_path = locations.filesystem(dst)
    if _sibling_name(src, dst) is None:
        raise ValueError(f"{locations.public_url(src)!r} is not beside {locations.public_url(dst)!r}")
    with locations.explained(dst):
        fs.invalidate_cache()
        _check_complete(src)
        step = "copying"
        if fs.exists(dst_path):
            if not replace:
                raise FileExistsError(f"output {locations.public_url(dst)!r} appeared while writing; "
                                      "nothing was replaced")
            step = "replacing"
    _write_journal(dst, src, step)
    _advance(src, dst, step)


def finish_interrupted(dst):
    """Finish a move into ``dst`` that a kill interrupted (see the module's steps); ``True`` if there was one.

    Raises
    ------
    PublishError
        The journal is not one distkm wrote, or the move fails again (the message says what is kept where).
    """
    text = locations.read_text(journal_url(dst))
    if text is None:
        return False
    try:
        journal = json.loads(text)
        name, step = journal["source"], journal["step"]
    except (ValueError, KeyError, TypeError):
        name = step = None
    if not isinstance(name, str) or "/" in name or not name or step not in ("replacing", "copying", "removing"):
        raise PublishError(f"{locations.public_url(journal_url(dst))} is not a journal distkm wrote; "
                           f"remove it to write {locations.public_url(dst)!r}")
    src = str(dst).rstrip("/").rpartition("/")[0] + "/" + name
    if step != "removing" and not _is_complete(src):
        raise PublishError(f"{locations.public_url(journal_url(dst))} says {locations.public_url(src)!r} was being "
                           f"moved into {locations.public_url(dst)!r}, but it holds no complete output (removed by "
                           "hand?): remove the journal, and what is left at the output if it is not yours")
    logger.warning("finishing the interrupted move of %s into %s (it was %s)", locations.public_url(src),
                   locations.public_url(dst), step)
    _advance(src, dst, step)
    return True


def _advance(src, dst, step):
    """Do the move's steps from ``step`` on, writing each next step to the journal before it starts."""
    try:
        if step == "replacing":
            locations.remove(dst)
            step = _write_journal(dst, src, "copying")
        if step == "copying":
            _check_complete(src)  # never remove dst's copy without a whole source to copy again
            locations.remove(dst)  # what a killed copy left
            _copy_markers_last(src, dst)
            step = _write_journal(dst, src, "removing")
        locations.remove(src)
        locations.remove(journal_url(dst))
    except PublishError:
        raise
    except Exception as e:  # the journal stays: the next command into dst goes on from this step
        kept = f"the complete output is kept at {locations.public_url(src)!r}" if step != "removing" else \
            f"{locations.public_url(dst)!r} is complete"
        raise PublishError(f"moving the output into {locations.public_url(dst)!r} stopped ({e}); {kept}: run the "
                           "command again to finish") from e


def _copy_markers_last(src, dst):
    fs, src_path = locations.filesystem(src)
    root, dst_root = src_path.rstrip("/"), locations.filesystem(dst)[1].rstrip("/")
    with locations.explained(dst):
        fs.invalidate_cache()
        files = sorted(fs.find(root))
        data = [f for f in files if f.rsplit("/", 1)[-1] not in MARKERS]
        markers = sorted(set(files) - set(data), key=lambda f: -f.count("/"))
        if data:
            fs.copy(data, [dst_root + f[len(root):] for f in data])  # concurrent requests, by name (never globbed)
        for name in markers:  # the deepest first, the root's last
            fs.copy([name], [dst_root + name[len(root):]])


def _check_complete(src):
    if not _is_complete(src):
        raise PublishError(f"{locations.public_url(src)} holds no complete output; nothing was replaced")


def _is_complete(src):
    fs, src_path = locations.filesystem(src)
    with locations.explained(src):
        return any(fs.exists(f"{src_path.rstrip('/')}/{marker}") for marker in MARKERS)


def _write_journal(dst, src, step):
    fs, path = locations.filesystem(journal_url(dst))
    with locations.explained(dst):
        fs.pipe_file(path, json.dumps({"source": _sibling_name(src, dst), "step": step}).encode())
    return step


def _sibling_name(src, dst):
    """``src``'s last name if it lies in ``dst``'s parent (the journal names nothing else), else ``None``."""
    src_parent, _, name = str(src).rstrip("/").rpartition("/")
    same = locations.canonical(src_parent) == locations.canonical(str(dst).rstrip("/").rpartition("/")[0])
    return name if same and name else None
