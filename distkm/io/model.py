"""Run folders: a fitted model saved as JSON + zarr, and loaded back without trusting it.

Layout of a run folder::

    model.json      parameters, n_iter, inertia, history, cluster sizes, data store, versions
    centroids.zarr  (k, d) centers in the compute dtype
    labels.zarr     (n,) int32 label of every row of the training data, written chunk by chunk

Nothing is pickled: loading reads JSON and numbers only, checks their shapes
and types, and never executes anything from the folder.
"""

from __future__ import annotations

import datetime
import json
import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import zarr

from distkm.io import locations
from distkm.io.stores import zarr_location

MODEL_FORMAT = "distkm-model"
MODEL_FORMAT_VERSION = 1
_PARAMS = ("n_clusters", "init", "n_init", "max_iter", "tol", "random_state", "dtype", "algorithm")


def library_versions():
    """Versions of the libraries that shape the numbers."""
    out = {"python": platform.python_version()}
    for name in ("distkm", "dask", "distributed", "numpy", "zarr", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def save_model(run_dir, model, *, data=None, extra=None):
    """Write a fitted :class:`~distkm.KMeans` into ``run_dir`` (``model.json`` + ``centroids.zarr``).

    Parameters
    ----------
    run_dir : str or Path
        Existing folder (the CLI passes a temporary one, renamed when complete).
    model : KMeans
        Fitted.
    data : dict, optional
        Where the training data came from (path, split, shape).
    extra : dict, optional
        More JSON-serialisable entries (timings...).
    """
    run_dir = locations.local_path(run_dir)
    centers = np.asarray(model.cluster_centers_)
    # overwrite: a resumed fit writes the model again over what a killed attempt left (a run folder in the
    # making, OUT.partial; a finished run folder is never written in place).
    z = zarr.create_array(run_dir / "centroids.zarr", shape=centers.shape, chunks=centers.shape, dtype=centers.dtype,
                          overwrite=True,
                          dimension_names=["cluster", "feature"])
    z[:] = centers
    params = {name: getattr(model, name) for name in _PARAMS}
    params["init"] = params["init"] if isinstance(params["init"], str) else "array"
    if not isinstance(params["random_state"], (int, type(None))):
        params["random_state"] = "RandomState"
    params["dtype"] = None if params["dtype"] is None else np.dtype(params["dtype"]).name
    doc = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "n_clusters": int(centers.shape[0]),
        "n_features": int(centers.shape[1]),
        "dtype": centers.dtype.name,
        "n_iter": int(model.n_iter_),
        "inertia": float(model.inertia_),
        "cluster_sizes": [int(s) for s in model.cluster_sizes_],
        "history": model.history_,
        "tolerance": getattr(model, "tolerance_", None),
        "data": data or {},
        "versions": library_versions(),
        **(extra or {}),
    }
    (run_dir / "model.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def read_model(run_dir):
    """Read a run folder's centers and ``model.json``, checking everything it reads.

    :func:`distkm.estimator.load_model` makes a fitted estimator of them.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features), float32 or float64
    meta : dict
        The contents of ``model.json``.

    Raises
    ------
    FileNotFoundError
        The folder, ``model.json`` or ``centroids.zarr`` is missing.
    ValueError
        The files are not a distkm model or disagree with each other.
    """
    where = locations.public_url(run_dir)
    meta_path = locations.join(run_dir, "model.json")
    text = locations.read_text(meta_path)
    if text is None:
        raise FileNotFoundError(f"{where!r} is not a distkm run folder (no model.json)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path} is not a distkm model file")
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format version {meta.get('format_version')!r}; "
                         f"this distkm reads version {MODEL_FORMAT_VERSION}")
    k, d = meta.get("n_clusters"), meta.get("n_features")
    if not all(isinstance(v, int) and v >= 1 for v in (k, d)):
        raise ValueError(f"{meta_path}: n_clusters and n_features must be positive integers, got {k!r}, {d!r}")
    centers_path = locations.join(run_dir, "centroids.zarr")
    if not locations.exists(centers_path):
        raise FileNotFoundError(f"{where!r} has no centroids.zarr")
    try:
        centers = np.asarray(zarr.open_array(zarr_location(centers_path), mode="r")[...])
    except Exception as e:
        raise ValueError(f"{centers_path} is not a readable zarr array ({e})") from e
    if centers.shape != (k, d):
        raise ValueError(f"{centers_path} has shape {centers.shape}, but model.json says ({k}, {d})")
    if centers.dtype not in (np.float32, np.float64) or not np.isfinite(centers).all():
        raise ValueError(f"{centers_path} must hold finite float32/float64 centers (got {centers.dtype})")
    return centers, meta

