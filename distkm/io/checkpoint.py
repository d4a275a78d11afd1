"""Fit checkpoints: the state of the Lloyd loop after every iteration, written atomically.

A checkpoint folder holds ``checkpoint.json`` (iteration, history, RNG
state, fingerprint of parameters and data, best run so far) and the centers
it refers to as ``.npy`` files (a few KB; written in well under a
millisecond, where a zarr array took ~10 ms, a fifth of a small job's
iteration). Each file gets a fresh name and the JSON is replaced whole (by
``os.replace`` in a folder, by one PUT under a URL prefix: an object store
replaces an object atomically), so a kill at any instant leaves either the
previous checkpoint or the new one, never a mix. A checkpoint on object
storage (a fit whose run goes there) can be resumed from any machine.
Centers are stored as
float64 and the RNG state exactly, so a resumed fit ends bit-identical to an
uninterrupted one.

Nothing in the folder is trusted: ``checkpoint.json`` names its ``.npy``
files by bare names inside the folder, each with its SHA-256, and a file
that is missing, renamed outside the folder, altered or of the wrong shape
is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import uuid

import numpy as np

from distkm.io import locations

logger = logging.getLogger("distkm")

FORMAT = "distkm-checkpoint"
VERSION = 3  # 3: .npy files with their SHA-256 (2: without; 1: zarr arrays)
_CENTERS_FILE = re.compile(r"centers-[0-9a-f]{12}\.npy")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, damaged, or made by another fit."""


class Checkpoint:
    """A checkpoint folder: :meth:`save` after each iteration, :meth:`load` to resume.

    What is saved is the state of the fit loop (:class:`distkm.engine.loop.RunState`):
    ``fingerprint``, ``run``, ``centers``, ``history``, ``converged``,
    ``rng_state`` and ``best``; this module only reads and writes those fields.
    """

    def __init__(self, folder):
        self.folder = locations.location(folder)  # a Path, or a URL prefix
        self._shown = locations.public_url(self.folder)

    def exists(self):
        try:
            self._get("checkpoint.json")
        except FileNotFoundError:
            return False
        return True

    def load(self, fingerprint):
        """The saved state as a dict of its fields, or ``None`` when there is none.

        Raises
        ------
        ValueError
            The checkpoint was made with other parameters or data (the message lists them).
        """
        try:
            doc = json.loads(self._get("checkpoint.json"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self._shown}/checkpoint.json is not a readable distkm checkpoint ({e})") from e
        try:
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                                 f"expected {FORMAT!r} version {VERSION}")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self._shown}/checkpoint.json is not a readable distkm checkpoint ({e})") from e
        differ = _differences(doc["fingerprint"], fingerprint)
        if differ:
            raise CheckpointError(f"cannot resume from {self._shown}: it was made with different " + ", ".join(differ))
        shape = (fingerprint["params"]["n_clusters"], fingerprint["data"]["shape"][1])
        best = doc["best"]
        if best is not None:
            best = {**best, "centers": self._read(best["centers"], shape), "sizes": np.asarray(best["sizes"], np.int64)}
        name, keys, pos, has_gauss, cached = doc["rng_state"]
        return {"fingerprint": doc["fingerprint"], "run": doc["run"], "centers": self._read(doc["centers"], shape),
                "history": doc["history"], "converged": doc["converged"],
                "rng_state": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached), "best": best}

    def save(self, state):
        """Write ``state`` atomically; the previous checkpoint stays valid until the rename.

        Raises
        ------
        OSError
            In one line naming the folder (a full disk, a read-only folder).
        """
        try:
            self._save(state)
        except OSError as e:
            try:
                free = f"{shutil.disk_usage(self.folder).free / 2**20:,.1f} MiB"
            except (OSError, TypeError):  # TypeError: a URL has no free space to tell
                free = "unknown"
            raise OSError(f"cannot write the checkpoint in {self._shown} ({e.strerror or e}; free space there: "
                          f"{free}); free some and resume") from e

    def _save(self, state):
        name, keys, pos, has_gauss, cached = state.rng_state
        best = None
        if state.best is not None:
            best = {k: v for k, v in state.best.items() if k not in ("centers", "_stored")}
            best["sizes"] = [int(s) for s in state.best["sizes"]]
            best["centers"] = state.best.get("_stored") or self._write(state.best["centers"])
            state.best["_stored"] = best["centers"]  # written once per best run, not every iteration
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": state.fingerprint,
            "run": state.run,
            "iteration": len(state.history),
            "converged": state.converged,
            "centers": self._write(state.centers),
            "history": state.history,
            "rng_state": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
            "best": best,
        }
        self._put("checkpoint.json", json.dumps(doc).encode())
        self._remove_unreferenced({doc["centers"]["file"], best and best["centers"]["file"]})
        logger.debug("checkpoint written: run %d, iteration %d", state.run, len(state.history))

    def remove(self):
        """Delete the checkpoint (once the fit it served is complete)."""
        locations.remove(self.folder)

    def _write(self, array):
        """Write centers to a fresh file; returns its reference ``{"file": name, "sha256": ...}``."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, dtype=np.float64), allow_pickle=False)
        name = f"centers-{uuid.uuid4().hex[:12]}.npy"
        self._put(name, buffer.getvalue())
        return {"file": name, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}

    def _read(self, ref, shape):
        """The centers a reference names, checked: a bare name here, its checksum, finite float64 of ``shape``."""
        name = ref.get("file") if isinstance(ref, dict) else None
        if not isinstance(name, str) or not _CENTERS_FILE.fullmatch(name):
            raise CheckpointError(f"{self._shown}/checkpoint.json refers to {name or ref!r}, not a centers file of "
                                  f"this folder; delete {self._shown} to start over")
        try:
            data = self._get(name)
            if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
                raise ValueError("its checksum differs from the one in checkpoint.json")
            centers = np.load(io.BytesIO(data), allow_pickle=False)
            if centers.dtype != np.float64 or centers.shape != shape or not np.isfinite(centers).all():
                raise ValueError(f"it holds {centers.dtype} {centers.shape}, expected finite float64 {shape}")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {self._shown}/{name} is damaged ({e}); delete {self._shown} to "
                                  "start over") from e
        return centers

    def _remove_unreferenced(self, keep):
        for name in self._names():
            if _CENTERS_FILE.fullmatch(name) and name not in keep:
                self._delete(name)

    # The four file operations, on a folder or under a URL prefix.

    def _put(self, name, data):
        """Write a file whole: a temporary file renamed over it, or one PUT."""
        if locations.is_url(self.folder):
            fs, root = locations.filesystem(self.folder)
            with locations.explained(self.folder):
                fs.pipe_file(f"{root.rstrip('/')}/{name}", data)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.{uuid.uuid4().hex}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)

    def _get(self, name):
        if locations.is_url(self.folder):
            fs, root = locations.filesystem(self.folder)
            with locations.explained(self.folder):
                return fs.cat_file(f"{root.rstrip('/')}/{name}")
        return (self.folder / name).read_bytes()

    def _names(self):
        if locations.is_url(self.folder):
            fs, root = locations.filesystem(self.folder)
            with locations.explained(self.folder):
                fs.invalidate_cache()
                return [path.rsplit("/", 1)[-1] for path in fs.find(root)]
        return [path.name for path in self.folder.iterdir()]

    def _delete(self, name):
        locations.remove(locations.join(self.folder, name))


def _differences(saved, current, prefix=""):
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a} then, {b} now)")
    return out
