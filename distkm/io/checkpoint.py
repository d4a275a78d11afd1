"""Fit checkpoints: the state of the Lloyd loop after every iteration, written atomically.

A checkpoint folder holds ``checkpoint.json`` (iteration, history, RNG
state, fingerprint of parameters and data, best run so far) and the centers
it refers to as ``.npy`` files (a few KB; written in well under a
millisecond, where a zarr array took ~10 ms, a fifth of a small job's
iteration). Each file gets a fresh name and the JSON
is replaced by ``os.replace``, so a kill at any instant leaves either the
previous checkpoint or the new one, never a mix. Centers are stored as
float64 and the RNG state exactly, so a resumed fit ends bit-identical to an
uninterrupted one.

Nothing in the folder is trusted: ``checkpoint.json`` names its ``.npy``
files by bare names inside the folder, each with its SHA-256, and a file
that is missing, renamed outside the folder, altered or of the wrong shape
is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

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
        self.folder = Path(folder)
        self.path = self.folder / "checkpoint.json"

    def exists(self):
        return self.path.is_file()

    def load(self, fingerprint):
        """The saved state as a dict of its fields, or ``None`` when there is none.

        Raises
        ------
        ValueError
            The checkpoint was made with other parameters or data (the message lists them).
        """
        if not self.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                                 f"expected {FORMAT!r} version {VERSION}")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.path} is not a readable distkm checkpoint ({e})") from e
        differ = _differences(doc["fingerprint"], fingerprint)
        if differ:
            raise CheckpointError(f"cannot resume from {self.folder}: it was made with different " + ", ".join(differ))
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
            except OSError:
                free = "unknown"
            raise OSError(f"cannot write the checkpoint in {self.folder} ({e.strerror or e}; free space there: "
                          f"{free}); free some and resume") from e

    def _save(self, state):
        self.folder.mkdir(parents=True, exist_ok=True)
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
        tmp = self.folder / f".checkpoint-{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)
        self._remove_unreferenced({doc["centers"]["file"], best and best["centers"]["file"]})
        logger.debug("checkpoint written: run %d, iteration %d", state.run, len(state.history))

    def remove(self):
        """Delete the checkpoint folder (once the fit it served is complete)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _write(self, array):
        """Write centers to a fresh file; returns its reference ``{"file": name, "sha256": ...}``."""
        name = f"centers-{uuid.uuid4().hex[:12]}.npy"
        tmp = self.folder / f".{name}"
        try:
            with tmp.open("wb") as f:
                np.save(f, np.asarray(array, dtype=np.float64), allow_pickle=False)
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        return {"file": name, "sha256": _sha256(self.folder / name)}

    def _read(self, ref, shape):
        """The centers a reference names, checked: a bare name here, its checksum, finite float64 of ``shape``."""
        name = ref.get("file") if isinstance(ref, dict) else None
        if not isinstance(name, str) or not _CENTERS_FILE.fullmatch(name):
            raise CheckpointError(f"{self.path} refers to {name or ref!r}, not a centers file of this folder; "
                             f"delete {self.folder} to start over")
        path = self.folder / name
        try:
            if _sha256(path) != ref.get("sha256"):
                raise ValueError("its checksum differs from the one in checkpoint.json")
            centers = np.load(path, allow_pickle=False)
            if centers.dtype != np.float64 or centers.shape != shape or not np.isfinite(centers).all():
                raise ValueError(f"it holds {centers.dtype} {centers.shape}, expected finite float64 {shape}")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {path} is damaged ({e}); delete {self.folder} to start over") from e
        return centers

    def _remove_unreferenced(self, keep):
        for path in self.folder.glob("centers-*.npy"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _differences(saved, current, prefix=""):
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a} then, {b} now)")
    return out


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
