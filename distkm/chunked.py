"""Stores written chunk by chunk by tasks on the workers, resumable after a kill.

A store being generated carries ``attrs["distkm"]["complete"] = False`` (which
``open_store`` and therefore ``fit`` refuse) until every chunk is written.
Each chunk is written by one task, which writes the chunk's labels first
and its images last; zarr's local store writes a chunk file atomically
(temporary file, then rename), so a chunk whose ``images`` key exists is
complete, and a killed generation resumes by writing only the others.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import dask
import numpy as np
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from .data import STORE_FORMAT_VERSION, blosc_compressor

logger = logging.getLogger("distkm")


def create_store(path, *, n, n_features, chunk_rows, attrs, labels=True, source_index=False, compressor=None):
    """Create an empty, incomplete distkm store (images n x d uint8, labels, optional source_index)."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs["distkm"] = {"format_version": STORE_FORMAT_VERSION, **attrs, "complete": False}
    common = dict(compressors=compressor or blosc_compressor(), config={"write_empty_chunks": True})
    group.create_array("images", shape=(n, n_features), chunks=(chunk_rows, n_features), dtype="uint8",
                       dimension_names=["sample", "feature"], **common)
    if labels:
        group.create_array("labels", shape=(n,), chunks=(chunk_rows,), dtype="uint8", dimension_names=["sample"],
                           **common)
    if source_index:
        group.create_array("source_index", shape=(n,), chunks=(chunk_rows,), dtype="int64",
                           dimension_names=["sample"], **common)
    return group


def chunks_done(path):
    """Boolean per row chunk: is the chunk completely written?"""
    images = zarr.open_array(Path(path) / "images", mode="r")
    n_chunks = images.cdata_shape[0]
    return np.array([os.path.exists(Path(path) / "images" / images.metadata.encode_chunk_key((i, 0)))
                     for i in range(n_chunks)], dtype=bool)


def write_chunk(path, i, images, labels=None, source_index=None):
    """Write row chunk ``i`` of a store: labels and source_index first, images last (the completion mark)."""
    group = zarr.open_group(path, mode="r+")
    rows = slice(i * group["images"].chunks[0], i * group["images"].chunks[0] + images.shape[0])
    if labels is not None and "labels" in group:
        group["labels"][rows] = labels
    if source_index is not None and "source_index" in group:
        group["source_index"][rows] = source_index
    group["images"][rows] = images
    return images.shape[0]


def mark_complete(path, **extra):
    """Flag the store complete (after checking that every chunk is there)."""
    done = chunks_done(path)
    if not done.all():
        raise RuntimeError(f"{path}: {int((~done).sum())} chunk(s) missing; the store stays incomplete")
    group = zarr.open_group(path, mode="r+")
    attrs = {k: v for k, v in group.attrs["distkm"].items() if k != "resume_command"}
    group.attrs["distkm"] = {**attrs, **extra, "complete": True}


def run_chunk_tasks(task, chunk_ids, rows, *, name, progress=True, desc="rows"):
    """Run ``task(i)`` for every chunk id on the current dask scheduler, with a progress bar of rows.

    Parameters
    ----------
    task : callable
        ``task(i) -> rows written``; runs on a worker.
    chunk_ids : list of int
    rows : list of int
        Rows each chunk will write (for the progress bar).
    name : str
        Task name shown on the dashboard (``distkm-<name>``).
    """
    from tqdm.auto import tqdm

    token = uuid.uuid4().hex
    keys = [(f"distkm-{name}-{token}", i) for i in chunk_ids]
    layer = {key: (task, i) for key, i in zip(keys, chunk_ids)}
    bar = tqdm(total=int(sum(rows)), unit=" rows", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1)
    try:
        from distributed import as_completed, get_client

        client = get_client()
    except (ImportError, ValueError):
        client = None
    if not keys:
        return
    graph = HighLevelGraph.from_collections(keys[0][0], layer, dependencies=[])
    jobs = [Delayed(key, graph, layer=keys[0][0]) for key in keys]
    with bar:
        if client is None:  # dask's local scheduler: the bar moves once, at the end
            bar.update(sum(dask.compute(*jobs)))
            return
        for future in as_completed(client.compute(jobs)):
            bar.update(future.result())
            future.release()
